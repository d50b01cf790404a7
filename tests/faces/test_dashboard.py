"""The live dashboard in a real headless chromium, on a real proxy with live traffic."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yarl
from helpers import wait_listening

from browser import DevTools, chromium
from conftest import Backend
from shadowdiff.store import SQLiteStore

HOSTILE_PATH = "/<svg/onload=window.pwned=1>"
HOSTILE_ROUTE = f"GET {HOSTILE_PATH}"
HOSTILE_HEADER = "<img src=x onerror=window.pwned=1>"
SCREENSHOT_ENV = "SHADOWDIFF_DASHBOARD_PNG"
"""If set, where the test keeps its screenshot of the page with live data."""


@dataclass
class Traffic:
    """Live requests through the proxy, paced, until stopped (at most `limit` of them)."""

    client: aiohttp.ClientSession
    url: str
    limit: int = 700
    pace: float = 0.04
    answers: list[tuple[float, int | str]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        for i in range(self.limit):
            if self.stop.is_set():
                return
            try:
                async with self.send(i) as response:
                    await response.read()
                    self.answers.append((time.monotonic(), response.status))
            except aiohttp.ClientError as e:
                self.answers.append((time.monotonic(), repr(e)))
            await asyncio.sleep(self.pace)

    def send(self, i: int) -> Any:
        if i == 4:  # a route of one exchange: INCONCLUSIVE, it needs more pairs
            return self.client.get(f"{self.url}/rare")
        if i % 3 == 0:  # raw, unencoded: the route and the example show it as it came
            url = yarl.URL(f"{self.url}{HOSTILE_PATH}?q={i}", encoded=True)
            return self.client.get(url, headers={"X-Evil": HOSTILE_HEADER})
        if i % 3 == 1:  # not mirrored (method): answered, and counted as not sampled
            return self.client.post(f"{self.url}/orders", json={"item": i, "note": "<b>x</b>"})
        return self.client.get(f"{self.url}/users/{i}")

    def since(self, t: float) -> list[int | str]:
        return [status for at, status in self.answers if at >= t]


async def text(page: DevTools, selector: str) -> str:
    value = await page.evaluate(
        f"document.querySelector({json.dumps(selector)})?.textContent ?? null"
    )
    assert value is not None, f"no element matches {selector}"
    return str(value)


async def settled(shadow: Backend, quiet: float, timeout: float) -> int:
    """How many copies the shadow got, once none came for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    count, since = len(shadow.seen), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, f"copies still reach the shadow after {timeout} s"
        await asyncio.sleep(0.02)
        if len(shadow.seen) != count:
            count, since = len(shadow.seen), time.monotonic()
    return count


async def wait_copies(shadow: Backend, more_than: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(shadow.seen) <= more_than:
        assert time.monotonic() < deadline, f"no copy reached the shadow in {timeout} s"
        await asyncio.sleep(0.05)


SHOWS_DIVERGENCE = f"""(() => {{
  const rows = [...document.querySelectorAll("#routes tbody tr")];
  const items = [...document.querySelectorAll("#divergences li")];
  return document.getElementById("verdict").textContent === "FAIL"
    && items.some((li) => li.dataset.path === "body:$.by"
                          && li.querySelector(".path").textContent === "body:$.by"
                          && li.dataset.route === {json.dumps(HOSTILE_ROUTE)})
    && rows.some((tr) => tr.dataset.route === {json.dumps(HOSTILE_ROUTE)})
    && rows.some((tr) => tr.dataset.route === "GET /users/{{id}}" && tr.dataset.result === "FAIL");
}})()"""

PAGE = """(() => {
  const cells = (tr) => [...tr.cells].map((td) => td.textContent);
  return {
    banner: document.getElementById("verdict").textContent,
    run: document.getElementById("run").textContent,
    title: document.title,
    mirroring: document.getElementById("mirroring").textContent,
    toggle: document.getElementById("toggle").textContent,
    counts: document.getElementById("counts").textContent,
    health: [...document.querySelectorAll("#health li")].map((li) => li.dataset.part + " "
                                                                  + li.dataset.ok),
    routes: Object.fromEntries([...document.querySelectorAll("#routes tbody tr")]
                               .map((tr) => [tr.dataset.route, cells(tr)])),
    route_text: [...document.querySelectorAll("#routes tbody td.route > .mono")]
                .map((node) => node.textContent),
    checks: [...document.querySelectorAll("#checks li")].map((li) => li.textContent),
    deciding: document.getElementById("deciding").hidden ? null
              : document.getElementById("deciding").textContent,
    conn_hidden: document.getElementById("conn").hidden,
    pwned: window.pwned !== undefined,
    injected: document.querySelectorAll("svg, img").length,
  };
})()"""

EXAMPLES = """(() => {
  const pane = document.getElementById("examples");
  const side = (article, name) => article.querySelector(`.side[data-side="${name}"]`);
  return {
    hidden: pane.hidden,
    state: pane.dataset.state,
    route: pane.dataset.route,
    path: pane.dataset.path,
    title: document.getElementById("examples-title").textContent,
    examples: [...document.querySelectorAll("#example-list .example")].map((article) => ({
      request: article.querySelector(".request-line").textContent,
      request_headers: article.querySelector("details.request pre.headers").textContent,
      primary: side(article, "primary").querySelector("pre.body").textContent,
      shadow: side(article, "shadow").querySelector("pre.body").textContent,
      primary_status: side(article, "primary").querySelector(".status").textContent,
      marked: [...side(article, "shadow").querySelectorAll("pre.body mark")]
              .map((m) => m.textContent),
    })),
  };
})()"""


async def test_dashboard_live_traffic_pause_and_dial(
    primary: Backend,
    shadow: Backend,
    start_proxy: Any,
    client: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    shadow.name = "shadow"  # its JSON bodies differ at $.by
    config = tmp_path / "shadowdiff.yaml"
    config.write_text(  # incidents to a destination that refuses: they are kept all the same
        "judge:\n  min_pairs: 5\ncontrol:\n  verdict_every: 1s\nincidents:\n"
        "  default_owner: ops\n"
        "  teams: {ops: {destinations: [{kind: generic, url: 'http://127.0.0.1:9/hook'}]}}\n"
    )
    proxy = await start_proxy(
        f"--primary={primary.url}",
        f"--shadow={shadow.url}",
        "--sample=1",
        run="dashboard-live",
        config=str(config),
    )
    await wait_listening(proxy.control_port, timeout=30)
    traffic = Traffic(client, proxy.url)
    sending = asyncio.create_task(traffic.run())
    try:
        async with chromium(tmp_path / "profile", 1280, 900) as page:
            await page.navigate(proxy.control + "/")
            await page.wait_for(SHOWS_DIVERGENCE, timeout=20)
            await page.wait_for(  # the latency ratio of the busiest route is judged
                """[...document.querySelectorAll("#routes tbody tr")]
                   .some((tr) => tr.querySelector(".ratio").textContent.includes("("))""",
                timeout=10,
            )
            seen = await page.evaluate(PAGE)
            assert seen["banner"] == "FAIL"
            assert seen["run"] == "dashboard-live"
            assert seen["title"].startswith("FAIL · dashboard-live")
            assert seen["mirroring"].startswith("MIRRORING") and "100 %" in seen["mirroring"]
            assert seen["toggle"] == "Pause mirroring"
            assert "seen" in seen["counts"] and "divergent" in seen["counts"]
            assert seen["health"] == ["proxy true", "worker true", "store true"]
            assert HOSTILE_ROUTE in seen["route_text"]  # shown as text, as it came
            users = seen["routes"]["GET /users/{id}"]
            assert users[1] == "FAIL" and users[4] == "100 %"
            assert "body:$.by 100 %" in users[0]
            assert any("divergence_rate" in c and "GET /users/{id}" in c for c in seen["checks"])
            rare = [c for c in seen["checks"] if "min_sample" in c and "GET /rare" in c]
            assert rare and rare[0].endswith("about 4 more pairs should decide it")  # no rate yet
            assert "more pairs per route should decide" in (seen["deciding"] or "")
            assert seen["conn_hidden"] is True
            assert seen["pwned"] is False and seen["injected"] == 0
            await page.wait_for(
                """[...document.querySelectorAll("#incidents tbody tr")]
                   .some((tr) => tr.textContent.includes("GET /users/{id}"))""",
                timeout=20,
            )
            incidents = await page.evaluate(
                '[...document.querySelectorAll("#incidents tbody tr")].map((tr) => tr.textContent)'
            )
            users = [t for t in incidents if "GET /users/{id}" in t and "divergence_rate" in t]
            assert users and "open (error)" in users[0] and "first bad exchange" in users[0]
            assert await page.evaluate('document.getElementById("incidents-empty").hidden')
            assert await page.evaluate("window.pwned === undefined") is True

            await page.evaluate("window.scrollTo(0, 0)")
            shot = tmp_path / "dashboard.png"
            await page.screenshot(shot)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            if os.environ.get(SCREENSHOT_ENV):
                shutil.copyfile(shot, os.environ[SCREENSHOT_ENV])

            # The examples of the hostile route's divergence, side by side.
            link = (
                f'#divergences li[data-route="{HOSTILE_ROUTE}"][data-path="body:$.by"]'
                " a.examples-link"
            )
            await page.click(link)
            await page.wait_for(
                'document.getElementById("examples").dataset.state === "loaded"', timeout=5
            )
            shown = await page.evaluate(EXAMPLES)
            assert shown["hidden"] is False
            assert (shown["route"], shown["path"]) == (HOSTILE_ROUTE, "body:$.by")
            assert shown["title"] == f"body:$.by on {HOSTILE_ROUTE}"
            assert 1 <= len(shown["examples"]) <= 5
            for example in shown["examples"]:
                assert example["request"].startswith(f"GET {HOSTILE_PATH}?q=")
                assert f"X-Evil: {HOSTILE_HEADER}" in example["request_headers"]
                assert example["primary_status"] == "200"
                assert '"by": "primary"' in example["primary"]
                assert '"by": "shadow"' in example["shadow"]
                assert '  "by": "shadow"\n' in example["marked"]  # the line that differs

            # The kill switch: PAUSED within a second, and no copy reaches the shadow.
            await page.evaluate("window.scrollTo(0, 0)")
            clicked = time.monotonic()
            await page.click("#toggle")
            await page.wait_for(
                'document.getElementById("mirroring").dataset.state === "paused"', timeout=1
            )
            assert time.monotonic() - clicked < 1.0
            assert (await text(page, "#mirroring")).startswith("PAUSED")
            assert await text(page, "#toggle") == "Resume mirroring"
            copies = await settled(shadow, quiet=0.3, timeout=3)  # those in flight land
            quiet_from = time.monotonic()
            await asyncio.sleep(1.0)
            answered = traffic.since(quiet_from)
            assert len(shadow.seen) == copies, "copies reached the shadow while paused"
            assert len(answered) >= 5 and set(answered) == {200}, answered
            await page.wait_for(  # the counts show the requests not sampled while paused
                'document.querySelector("#counts [data-count=not_sampled]")'
                '?.textContent.includes("paused")',
                timeout=5,
            )

            # Resumed: copies flow again.
            await page.click("#toggle")
            await page.wait_for(
                'document.getElementById("mirroring").dataset.state === "on"', timeout=1
            )
            await wait_copies(shadow, copies + 3, timeout=5)

            # The dial: a number typed in, applied on change.
            await page.evaluate(
                """(() => {
                  const input = document.getElementById("rate-value");
                  input.focus();
                  input.value = "0.5";
                  input.dispatchEvent(new Event("input", {bubbles: true}));
                  input.dispatchEvent(new Event("change", {bubbles: true}));
                })()"""
            )
            await page.wait_for(
                'document.getElementById("mirroring").textContent.includes("50 %")', timeout=2
            )
            async with client.get(proxy.control + "/api/status") as response:
                status = await response.json()
            assert (status["paused"], status["rate"], status["dial"]) == (False, 0.5, 0.5)
            assert await page.evaluate('document.getElementById("rate").value') == "0.5"
            await asyncio.sleep(2.5)  # a refresh or more later, the page still says so
            assert "50 %" in await text(page, "#mirroring")
            assert await text(page, "#rate-note") == "set live; configured 100 %"

            assert await page.evaluate("window.pwned === undefined") is True
            assert await page.csp_violations() == []
            assert page.errors() == []
    finally:
        traffic.stop.set()
        await sending
    await proxy.stop()
    store = SQLiteStore(proxy.store, create=False)
    try:
        events = [(e.kind, e.actor, e.new) for e in store.events(proxy.run) if e.kind != "started"]
    finally:
        store.close()
    assert [kind for kind, _, _ in events] == ["paused", "resumed", "sample_rate"]
    assert all(actor.startswith("dashboard from 127.0.0.1") for _, actor, _ in events)
    assert events[-1][2] == "0.5"


async def test_dashboard_token_and_unreachable_server(
    primary: Backend, shadow: Backend, start_proxy: Any, tmp_path: Path
) -> None:
    config = tmp_path / "shadowdiff.yaml"
    config.write_text("control:\n  token: s3cret-token\n")
    proxy = await start_proxy(
        f"--primary={primary.url}", f"--shadow={shadow.url}", "--sample=1", config=str(config)
    )
    await wait_listening(proxy.control_port, timeout=30)
    async with chromium(tmp_path / "profile", 1280, 900) as page:
        await page.navigate(proxy.control + "/")
        await page.wait_for('!document.getElementById("toggle").disabled', timeout=10)
        assert await page.evaluate('document.getElementById("auth").hidden') is True

        async def give(token: str) -> None:
            await page.wait_for('!document.getElementById("auth").hidden', timeout=5)
            await page.click("#token")
            await page.call("Input.insertText", text=token)
            await page.click('#auth button[type="submit"]')

        await page.click("#toggle")
        await give("wrong")
        await page.wait_for(
            'document.getElementById("auth-note").textContent.includes("refused")', timeout=5
        )
        await give("s3cret-token")
        await page.wait_for(
            'document.getElementById("mirroring").dataset.state === "paused"', timeout=5
        )
        assert await page.evaluate('document.getElementById("auth").hidden') is True
        stored = await page.evaluate('sessionStorage.getItem("shadowdiff.token")')
        assert stored == "s3cret-token"
        await page.click("#toggle")  # the kept token is sent again
        await page.wait_for(
            'document.getElementById("mirroring").dataset.state === "on"', timeout=5
        )
        assert await page.csp_violations() == []
        assert page.errors(ignore=("status of 401",)) == []

        await proxy.stop()  # the page says since when it has not heard from the server
        await page.wait_for(
            """(() => {
              const conn = document.getElementById("conn");
              return !conn.hidden && /^Cannot reach .* last updated \\d+ s ago$/
                .test(conn.textContent);
            })()""",
            timeout=10,
        )
        assert await page.evaluate('document.body.classList.contains("stale")') is True


RELEASE = """(() => ({
  hidden: document.getElementById("release").hidden,
  stages: [...document.querySelectorAll("#release-stages li")]
    .map((li) => [li.textContent, li.className]),
  state: document.getElementById("release-state").textContent,
  served: document.getElementById("release-served").textContent,
  waits: document.getElementById("release-waits").textContent,
  disabled: ["promote", "hold", "resume", "rollback"]
    .map((a) => document.getElementById(`release-${a}`).disabled),
}))()"""


async def test_dashboard_shows_the_release_and_moves_it(
    primary: Backend,
    shadow: Backend,
    start_proxy: Any,
    client: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """The stage, the shares served and what the gate waits for; Promote, then Roll back,
    each applied (the proxy serves accordingly) and shown; a rolled-back release's buttons
    are off."""
    config = tmp_path / "shadowdiff.yaml"
    config.write_text(
        "release:\n  promote: manual\n  poll: 100ms\n  stages:\n"
        "    - shadow: {min_pairs: 1000000}\n    - percent: {share: 100, min_pairs: 1000000}\n"
    )
    proxy = await start_proxy(
        f"--primary={primary.url}", f"--shadow={shadow.url}", "--sample=0", config=str(config)
    )
    await wait_listening(proxy.control_port, timeout=30)
    async with chromium(tmp_path / "profile", 1280, 900) as page:
        await page.navigate(proxy.control + "/")
        await page.wait_for('!document.getElementById("release").hidden', timeout=20)
        seen = await page.evaluate(RELEASE)
        assert seen["stages"] == [["shadow", "current"], ["percent 100 %", ""]]
        assert seen["state"].startswith("Stage 1 of 2, shadow: running")
        assert "promote" in seen["waits"] and seen["disabled"] == [False, False, True, False]
        await page.click("#release-promote")
        await page.wait_for(
            'document.getElementById("release-state").textContent.startsWith("Stage 2 of 2")',
            timeout=10,
        )
        async with client.get(proxy.url + "/users/1") as response:
            await response.read()
        assert shadow.seen and shadow.seen[-1][1] == "/users/1"  # served by the candidate
        await page.wait_for(
            'document.getElementById("release-served").textContent.includes("candidate 1 ")',
            timeout=10,
        )
        await page.click("#release-rollback")
        await page.wait_for(
            'document.getElementById("release-state").textContent.includes("rolled back")',
            timeout=10,
        )
        seen = await page.evaluate(RELEASE)
        assert seen["disabled"] == [True, True, True, True]
        assert "nothing: rolled back" in seen["waits"]
        assert page.errors() == []
    before = len(shadow.seen)
    async with client.get(proxy.url + "/users/2") as response:
        await response.read()
    assert len(shadow.seen) == before  # the primary served it
