"""The command line: `shadowdiff proxy`, `replay`, `ctl`, `summary`, `gate`, `report`,
`suggest-ignores`, `demo`.

Every usage or config error is one line on stderr with exit status 2, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from shadowdiff import __version__
from shadowdiff.config import Config, access_token, load_config, parse_duration
from shadowdiff.counts import by_reason, imbalance, summary_line
from shadowdiff.errors import ConfigError
from shadowdiff.judge import findings, suggest_ignores
from shadowdiff.store import Store, StoreError, masked, open_store


class UsageProblem(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="shadowdiff")
def cli() -> None:
    """Mirror a sampled share of live traffic to a shadow and record what it answers."""


@cli.command()
@click.option("--primary", help="URL of the service the proxy forwards to (its answer is live).")
@click.option("--shadow", help="URL of the candidate version that gets the copies.")
@click.option("--secondary", help="URL of a second instance of the primary's version (noise).")
@click.option("--listen", help="HOST:PORT to listen on [127.0.0.1:8080].")
@click.option("--sample", help="Share of eligible requests to mirror, 0..1 [0.1].")
@click.option("--store", help="SQLite path or postgresql:// URL [shadowdiff.db].")
@click.option("--run", "run_name", help="Run name [default].")
@click.option(
    "--control", help="HOST:PORT of the control server and dashboard, or off [127.0.0.1:9464]."
)
@click.option("--config", "config_path", help="YAML config file; flags override it.")
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Proxy processes (one per core) on ports --listen, --listen+1, … (and --control, "
    "--control+1, …), sharing the store and the run; put configs/nginx.conf in front.",
)
def proxy(config_path: str | None, processes: int, **flags: Any) -> None:
    """Run the reverse proxy in front of the primary, mirroring to the shadow."""
    shared = [
        f"--{name.removesuffix('_name')}={value}"
        for name, value in flags.items()
        if value is not None and name not in ("listen", "control")
    ] + ([f"--config={config_path}"] if config_path else [])
    sample = flags.pop("sample")
    if sample is not None:
        try:
            flags["sampling.rate"] = float(sample)
        except ValueError:
            raise UsageProblem(f"--sample: {sample!r} is not a number between 0 and 1") from None
    flags["run"] = flags.pop("run_name")
    flags["control.listen"] = flags.pop("control")
    try:
        cfg = load_config(config_path, flags)
        access_token(cfg.control)
    except ConfigError as e:
        raise UsageProblem(str(e)) from None
    if cfg.primary is None:
        raise UsageProblem("--primary: required (or set `primary` in the config file)")
    _logging(cfg.log_level)
    open_store(cfg.store).close()  # refuse a bad store before taking traffic
    if processes > 1:
        from shadowdiff.live import fleet

        sys.exit(fleet.run(shared, cfg.listen, cfg.control.listen, processes))
    from shadowdiff.live import StartupError, serve

    try:
        asyncio.run(serve(cfg))
    except StartupError as e:
        click.echo(f"shadowdiff: error: {e}", err=True)
        sys.exit(1)
    with open_store(cfg.store, create=False) as store:
        counts = store.counts(cfg.run)
    click.echo(f"shadowdiff: {summary_line(cfg.run, counts)}; store {masked(cfg.store)}")


@cli.command()
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--primary", help="URL of the primary to send each request to as well.")
@click.option("--shadow", help="URL of the candidate version.")
@click.option("--secondary", help="URL of a second instance of the primary's version (noise).")
@click.option("--store", help="SQLite path or postgresql:// URL [shadowdiff.db].")
@click.option("--run", "run_name", help="Run name [default].")
@click.option("--config", "config_path", help="YAML config file; flags override it.")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    help="Requests in flight at most [mirror.max_in_flight: 100].",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    help="Requests started per second at most [no limit].",
)
@click.option("--limit", type=click.IntRange(min=1), help="Replay only the first N entries.")
@click.option(
    "--sample",
    type=click.FloatRange(0, 1),
    help="Sample the recording at this rate, with the config's rate cap [replay all the "
    "sampling rules allow].",
)
@click.option("--timeout", help="Timeout of each request [mirror.timeout: 5s].")
@click.option(
    "--from-recorded-primary",
    is_flag=True,
    help="Compare with the recorded responses instead of calling a primary (latency not judged).",
)
@click.option("--quiet", is_flag=True, help="No progress bar (for CI logs).")
@click.option(
    "--gate", "then_gate", is_flag=True, help="Then judge the run; exit status as `gate`."
)
def replay(
    files: tuple[str, ...],
    config_path: str | None,
    concurrency: int | None,
    rate: float | None,
    limit: int | None,
    sample: float | None,
    timeout: str | None,
    from_recorded_primary: bool,
    quiet: bool,
    then_gate: bool,
    **flags: Any,
) -> None:
    """Replay recorded traffic (mitmproxy flow files, HAR) to the primary and the shadow.

    Exit status 0 (or the gate's with --gate), 2 bad usage or unreadable input, 130 stopped.
    """
    from shadowdiff.replay import RecordingError, read

    if from_recorded_primary and flags["primary"]:
        raise UsageProblem("--primary: not with --from-recorded-primary (the recording answers)")
    flags["run"] = flags.pop("run_name")
    flags["sampling.rate"] = sample
    flags["mirror.max_in_flight"] = concurrency
    if timeout is not None:
        try:
            flags["mirror.timeout"] = parse_duration(timeout)
        except ValueError as e:
            raise UsageProblem(f"--timeout: {e}") from None
    try:
        cfg = load_config(config_path, flags)
    except ConfigError as e:
        raise UsageProblem(str(e)) from None
    primary = None if from_recorded_primary else cfg.primary
    if not from_recorded_primary and primary is None:
        raise UsageProblem("--primary: required (or --from-recorded-primary)")
    _logging(cfg.log_level)
    logging.getLogger("shadowdiff.worker").setLevel(logging.WARNING)  # progress says it all
    open_store(cfg.store).close()  # refuse a bad store before reading anything
    try:
        recording = read(list(files), need_response=from_recorded_primary)
    except RecordingError as e:
        raise UsageProblem(str(e)) from None
    for warning in recording.warnings:
        click.echo(f"shadowdiff: warning: {warning}", err=True)
    recording.entries = recording.entries[:limit]
    # A recording is a sample already: all of it unless --sample asks for less.
    sampling = cfg.sampling
    if sample is None:
        sampling = sampling.model_copy(update={"rate": 1.0, "max_per_second": None})
    from shadowdiff.replay import replay as run_replay  # the worker: slow to import

    result = asyncio.run(
        run_replay(
            cfg,
            recording,
            sampling,
            primary,
            cfg.mirror.max_in_flight,
            rate,
            show_progress=not quiet and sys.stderr.isatty(),
        )
    )
    pairs = result.counts.get("recorded", 0) / max(result.elapsed, 1e-9)
    click.echo(
        f"shadowdiff: replayed {result.counts.get('seen', 0)} of {len(recording.entries)} "
        f"entries in {result.elapsed:.1f} s "
        f"({pairs:.0f} pairs/s); {summary_line(cfg.run, result.counts)}; store {masked(cfg.store)}"
    )
    if recording.skipped:
        detail = ", ".join(f"{k} {v}" for k, v in sorted(recording.skipped.items()))
        click.echo(f"shadowdiff: skipped {recording.skipped.total()} (cannot replay): {detail}")
    if result.interrupted:
        click.echo("shadowdiff: stopped early; everything recorded so far is kept", err=True)
        sys.exit(130)
    if then_gate:
        sys.exit(_judge(cfg.store, cfg.run, cfg, as_json=False))


def _runs(store: Store, store_path: str, run_name: str | None) -> list[str]:
    runs = store.runs()
    if run_name and run_name not in runs:
        raise UsageProblem(f"{store_path}: no run named {run_name!r}")
    return [run_name] if run_name else runs


@cli.command()
@click.option("--store", "store_path", default="shadowdiff.db", show_default=True)
@click.option("--run", "run_name", help="Run name [every run in the store].")
@click.option("--config", "config_path", help="Config file whose noise thresholds apply.")
@click.option("--fields", default=5, show_default=True, help="Divergent fields shown per route.")
def summary(store_path: str, run_name: str | None, config_path: str | None, fields: int) -> None:
    """Print what each run saw and recorded, and where the shadow diverges, by route."""
    noise_cfg = _config(config_path).noise
    with open_store(store_path, create=False) as store:
        for run in _runs(store, store_path, run_name):
            counts = store.counts(run)
            click.echo(summary_line(run, counts))
            for reason, n in sorted(by_reason(counts, "not_eligible").items()):
                click.echo(f"  not eligible ({reason}): {n}")
            for problem in imbalance(counts):
                click.echo(f"  accounting: {problem}")
            for found in findings(store.routes(run), store.divergence_rows(run), noise_cfg):
                click.echo(
                    f"  {found.route}: {found.exchanges} exchanges: {found.matched} matched, "
                    f"{found.ignored} ignored, {found.noisy} noise only, "
                    f"{found.divergent} divergent"
                )
                for f in found.fields[:fields]:
                    note = f", secondary {f.noise_count} (noise)" if f.noise else ""
                    click.echo(f"      {f.path} {f.kind}: {f.count}{note}")


@cli.command("suggest-ignores")
@click.option("--store", "store_path", default="shadowdiff.db", show_default=True)
@click.option("--run", "run_name", required=True, help="Run name.")
def suggest_ignores_command(store_path: str, run_name: str) -> None:
    """Print ignore rules (YAML) for paths that differ in nearly every exchange with values
    that look generated: timestamps, UUIDs, random tokens. Review them before use."""
    with open_store(store_path, create=False) as store:
        _runs(store, store_path, run_name)
        found = suggest_ignores(store.routes(run_name), store.divergence_rows(run_name))
    click.echo("# paths that differ in nearly every exchange with generated-looking values;")
    click.echo("# review, then paste under `compare:` in the config")
    rules = [{"route": route, "ignore": paths} for route, paths in found.items()]
    click.echo(yaml.safe_dump({"compare": {"routes": rules}}, sort_keys=False), nl=False)


def _config(path: str | None) -> Config:
    """The config whose thresholds a face applies; the defaults without a file."""
    try:
        return load_config(path) if path else load_config(None, {"shadow": "http://127.0.0.1:1"})
    except ConfigError as e:
        raise UsageProblem(str(e)) from None


def _one_run(store: Store, store_path: str, run_name: str | None) -> str:
    runs = _runs(store, store_path, run_name)
    if not runs:
        raise UsageProblem(f"{store_path}: the store holds no run yet")
    if len(runs) > 1:
        raise UsageProblem(f"--run: {store_path} holds several runs: {', '.join(runs)}")
    return runs[0]


EXIT = {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}


@cli.command()
@click.option("--store", "store_path", default="shadowdiff.db", show_default=True)
@click.option("--run", "run_name", help="Run name [the store's only run].")
@click.option("--config", "config_path", help="Config file whose judge thresholds apply.")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict document as JSON.")
def gate(store_path: str, run_name: str | None, config_path: str | None, as_json: bool) -> None:
    """Judge a run: exit 0 PASS, 1 FAIL, 3 INCONCLUSIVE (2: bad usage or unreadable store)."""
    sys.exit(_judge(store_path, run_name, _config(config_path), as_json))


def _judge(store_path: str, run_name: str | None, cfg: Config, as_json: bool) -> int:
    """Prints a run's verdict as `gate` does (also after `replay --gate`); its exit status."""
    from shadowdiff.judge import document

    with open_store(store_path, create=False) as store:
        run = _one_run(store, store_path, run_name)
        doc, _, verdict = document(store, run, cfg)
    if as_json:
        from shadowdiff.faces import render_json

        click.echo(render_json(doc), nl=False)
    else:
        click.echo(
            f"{verdict.verdict}: run {run!r}, {len(doc['routes'])} routes, "
            f"{doc['counts']['compared']} exchanges compared"
        )
        shown = [c for c in verdict.checks if c.result != "PASS"]
        for c in shown:
            click.echo(f"  {c.result:<12} {c.id:<16} {c.route}: {c.detail}")
        for problem in doc["accounting"]:
            click.echo(f"  accounting: {problem}")
    return EXIT[verdict.verdict]


@cli.command()
@click.option("--store", "store_path", default="shadowdiff.db", show_default=True)
@click.option("--run", "run_name", help="Run name [the store's only run].")
@click.option("--config", "config_path", help="Config file whose thresholds apply.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["html", "md", "json"]),
    required=True,
    help="Report format.",
)
@click.option("-o", "--output", help="File to write [standard output].")
def report(
    store_path: str, run_name: str | None, config_path: str | None, fmt: str, output: str | None
) -> None:
    """Write the divergence report of a run: HTML (self-contained), Markdown or JSON."""
    from shadowdiff.faces import render_html, render_json, render_markdown
    from shadowdiff.judge import document

    cfg = _config(config_path)
    with open_store(store_path, create=False) as store:
        run = _one_run(store, store_path, run_name)
        doc, extras, _ = document(store, run, cfg)
    text = {
        "html": lambda: render_html(doc, extras),
        "md": lambda: render_markdown(doc),
        "json": lambda: render_json(doc),
    }[fmt]()
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as e:
        raise UsageProblem(f"-o: cannot write {output}: {e.strerror or e}") from None
    click.echo(f"{fmt} report of run {run!r} ({doc['verdict']}) written to {output}")


@cli.command()
@click.option("--requests", "count", default=300, show_default=True, help="Requests to drive.")
@click.option("--sample", default=0.7, show_default=True, type=float, help="Sample rate.")
@click.option("--store", "store_path", default="demo.db", show_default=True)
def demo(count: int, sample: float, store_path: str) -> None:
    """Start a demo primary and shadow, proxy traffic through shadowdiff, show what was recorded."""
    from shadowdiff.cli.demo import run_demo

    run_demo(count, sample, store_path)


class Unreachable(Exception):
    """The control server did not answer; printed as one line, exit status 1."""


@cli.group()
@click.option(
    "--url",
    "urls",
    multiple=True,
    envvar="SHADOWDIFF_URL",
    default=("http://127.0.0.1:9464",),
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


def _logging(level: str) -> None:
    logging.basicConfig(
        format="%(asctime)s %(name)s %(levelname)s %(message)s", level=level.upper(), force=True
    )
    # mitmproxy logs every client connection at INFO: costly and noisy in front of live traffic.
    logging.getLogger("mitmproxy").setLevel(max(logging.WARNING, logging.getLogger().level))


_NO_ARGS: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


def main() -> None:
    try:
        cli.main(standalone_mode=False, prog_name="shadowdiff")
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as e:
        ctx: click.Context | None = getattr(e, "ctx", None)
        if isinstance(e, _NO_ARGS) and ctx is not None:
            click.echo(ctx.get_help())
            sys.exit(0)
        where = f"{ctx.command_path}: " if ctx else ""
        click.echo(f"shadowdiff: error: {where}{e.format_message()}", err=True)
        sys.exit(2)
    except (UsageProblem, StoreError) as e:
        click.echo(f"shadowdiff: error: {e}", err=True)
        sys.exit(2)
    except Unreachable as e:
        click.echo(f"shadowdiff: error: {e}", err=True)
        sys.exit(1)
