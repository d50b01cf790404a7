"""`shadowdiff ctl`: a client of running proxies' control servers (urllib, one request each)."""

from __future__ import annotations

import os
import socket
from typing import Any

import click

from shadowdiff.cli.common import UsageProblem, cli, default
from shadowdiff.counts import summary_line
from shadowdiff.model import RELEASE_ACTIONS


class Unreachable(Exception):
    """The control server did not answer; printed as one line, exit status 1."""


@cli.group()
@click.option(
    "--url",
    "urls",
    multiple=True,
    envvar="SHADOWDIFF_URL",
    default=(f"http://{default('control.listen')}",),
    show_default=True,
    help="A proxy's control server; repeat it for every proxy of a fleet (each process has "
    "its own switch) [env SHADOWDIFF_URL, space-separated].",
)
@click.option("--token", envvar="SHADOWDIFF_TOKEN", help="Bearer token [env SHADOWDIFF_TOKEN].")
@click.pass_context
def ctl(ctx: click.Context, urls: tuple[str, ...], token: str | None) -> None:
    """Control running proxies: pause or resume mirroring, turn the dial, show their status."""
    ctx.obj = ([url.rstrip("/") for url in urls], token)


def _call(ctx: click.Context, url: str, method: str, path: str, body: bytes | None = None) -> Any:
    """One request to a control server; its JSON answer, or a one-line error."""
    import json
    import urllib.error
    import urllib.request

    _, token = ctx.obj
    actor = f"{os.environ.get('USER', 'someone')}@{socket.gethostname()} (shadowdiff ctl)"
    headers = {"X-Shadowdiff-Actor": actor, "Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url + path, body, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        try:
            reason = json.loads(e.read()).get("error", e.reason)
        except ValueError:
            reason = e.reason
        raise Unreachable(f"{method} {url}{path}: {e.code} {reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise Unreachable(f"cannot reach the control server at {url}: {reason}") from None


def _state_line(state: dict[str, Any]) -> str:
    if state["paused"]:
        return "mirroring PAUSED"
    dial = "" if state["dial"] is None else f" (dial; config {state['config_rate']:.0%})"
    return f"mirroring {state['rate']:.1%}{dial}"


def _change(ctx: click.Context, method: str, path: str, body: bytes | None = None) -> None:
    """The same change on every proxy named, each one's new state on a line."""
    urls, _ = ctx.obj
    for url in urls:
        state = _state_line(_call(ctx, url, method, path, body))
        click.echo(f"{url}: {state}" if len(urls) > 1 else state)


@ctl.command("pause")
@click.pass_context
def ctl_pause(ctx: click.Context) -> None:
    """Stop mirroring now (live traffic is untouched)."""
    _change(ctx, "POST", "/mirror/pause")


@ctl.command("resume")
@click.pass_context
def ctl_resume(ctx: click.Context) -> None:
    """Mirror again, at the rate set before the pause."""
    _change(ctx, "POST", "/mirror/resume")


@ctl.command("rate")
@click.argument("rate")
@click.pass_context
def ctl_rate(ctx: click.Context, rate: str) -> None:
    """Set the share of eligible requests mirrored, 0..1, replacing every configured rate;
    `config` gives the configured rates back."""
    if rate != "config":
        try:
            if not 0.0 <= float(rate) <= 1.0:
                raise ValueError
        except ValueError:
            raise UsageProblem(
                f"RATE: {rate!r} is not a number between 0 and 1, or config"
            ) from None
    _change(ctx, "PUT", "/mirror/sample-rate", b"null" if rate == "config" else rate.encode())


@ctl.command("status")
@click.pass_context
def ctl_status(ctx: click.Context) -> None:
    """Show the switch, the dial, the counts, health and the live verdict."""
    urls, _ = ctx.obj
    for url in urls:
        status = _call(ctx, url, "GET", "/api/status")
        click.echo(f"{_state_line(status)}; instance {status['instance']}")
        click.echo(summary_line(status["run"], status["counts"]))
        health = status["health"]
        for part in ("proxy", "worker", "store"):
            mark = "ok" if health[part]["ok"] else "FAILING"
            click.echo(f"  {part:<7} {mark:<8} {health[part]['detail']}")
    verdict = _call(ctx, urls[0], "GET", "/verdict")  # one store: the fleet's verdict
    click.echo(f"verdict: {verdict['verdict']}")
    for c in verdict.get("checks", []):
        if c["result"] != "PASS":
            click.echo(f"  {c['result']:<12} {c['id']:<16} {c['route']}: {c['detail']}")


@ctl.command("ack")
@click.argument("key")
@click.pass_context
def ctl_ack(ctx: click.Context, key: str) -> None:
    """Acknowledge the open incident of KEY (its dedup key, or a unique prefix of it of at
    least 6 characters, as `shadowdiff incidents` shows): the moment counts as its response,
    and PagerDuty stops escalating it."""
    import json

    urls, _ = ctx.obj  # the incidents are in the store: one proxy of a fleet is enough
    incident = _call(ctx, urls[0], "POST", "/incidents/ack", json.dumps({"key": key}).encode())
    click.echo(
        f"acknowledged {incident['key']} ({incident['route']} {incident['check']},"
        f" team {incident['team'] or '-'}) as {incident['acked_by']}"
    )


def _release_lines(state: dict[str, Any]) -> list[str]:
    """`ctl release`'s answer: the stage, the shares served, what the gate waits for."""
    if state.get("state") == "unknown":
        return ["release: its state is not read yet"]
    served = state["served"]
    total = served["primary"] + served["candidate"] or 1
    fallbacks = ", ".join(f"{k} {v}" for k, v in sorted(state["fallbacks"].items())) or "none"
    stages = " → ".join(
        f"[{name}]" if i == state["stage"] else name for i, name in enumerate(state["stages"])
    )
    return [
        f"release: stage {state['stage'] + 1} of {len(state['stages'])}, {state['name']},"
        f" {state['state'].replace('_', ' ')} ({state['why']}, by {state['actor']})",
        f"  stages    {stages}",
        f"  in stage  {state['in_stage']:.0f} s, {state['pairs_in_stage']} pairs,"
        f" verdict {state['verdict']}",
        f"  served    primary {served['primary']}, candidate {served['candidate']}"
        f" ({served['candidate'] / total:.1%}); fallbacks {fallbacks}",
        f"  waits for {state['waits_for']}",
    ]


@ctl.command("release")
@click.argument("action", type=click.Choice(["status", *RELEASE_ACTIONS]))
@click.pass_context
def ctl_release(ctx: click.Context, action: str) -> None:
    """Show the release (status) or move it: promote to the next stage, hold where it is
    (no automatic promotion), resume a held stage, roll back (the primary serves everyone
    from the next request). The state is in the
    store: one proxy of a fleet is enough, the others follow within `release.poll`."""
    urls, _ = ctx.obj
    if action == "status":
        state = _call(ctx, urls[0], "GET", "/api/release")
    else:
        state = _call(ctx, urls[0], "POST", f"/release/{action}")
    for line in _release_lines(state):
        click.echo(line)
