"""Offline replay end to end: real recordings, real services, the real command line."""

from __future__ import annotations

import asyncio
import os
import pty
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from helpers import free_port, wait_listening
from test_flowfiles import har_entry, make_flow, write_flows, write_har

from conftest import Proxy, serve_app, shadowdiff
from shadowdiff.config import RouteRule, Sampling, load_config
from shadowdiff.counts import imbalance
from shadowdiff.errors import StoreError
from shadowdiff.judge.evidence import document
from shadowdiff.replay.flowfiles import read
from shadowdiff.replay.replay import replay
from shadowdiff.store import SQLiteStore

ADDON = Path(__file__).parent.parent.parent / "addons" / "shadowdiff.py"


@dataclass
class Service:
    """A small API that logs when each request starts and ends. `rename`: the candidate that
    answers GET /users/{id} with `full_name` instead of `name`."""

    rename: bool = False
    delays: dict[str, float] = field(default_factory=dict)
    log: list[tuple[str, str, str, float]] = field(default_factory=list)
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""
    runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((request.method, request.path_qs, dict(request.headers), body))
        self.log.append(("start", request.method, request.path, time.monotonic()))
        prefix = "/" + request.path.split("/")[1]
        await asyncio.sleep(self.delays.get(request.path, self.delays.get(prefix, 0.0)))
        self.log.append(("end", request.method, request.path, time.monotonic()))
        parts = request.path.strip("/").split("/")
        answer: dict[str, object] = {"id": parts[-1], "kind": parts[0]}
        if parts[0] == "users" and request.method == "GET":
            answer["full_name" if self.rename else "name"] = "Ada"
        if request.method == "POST":
            answer["received"] = body.decode("latin-1")
        return web.json_response(answer, status=201 if request.method == "POST" else 200)

    async def start(self) -> Service:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner, self.url = await serve_app(app)
        return self

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    def when(self, event: str, method: str, path: str) -> float:
        return next(t for e, m, p, t in self.log if (e, m, p) == (event, method, path))


@pytest.fixture
async def services():
    started: list[Service] = []

    async def start(**kw: object) -> Service:
        service = await Service(**kw).start()  # type: ignore[arg-type]
        started.append(service)
        return service

    yield start
    for service in started:
        await service.stop()


async def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The command line in a thread, so this test's event loop keeps serving the services."""
    return await asyncio.to_thread(shadowdiff, *args)


def verdict_of(store: Path, run: str) -> dict:
    """The verdict document, as `gate --json` prints it."""
    with SQLiteStore(store, create=False) as s:
        doc, _, _ = document(s, run, load_config(None, {"shadow": "http://127.0.0.1:1"}))
    return doc


def routes_of(doc: dict) -> dict:
    """Per route: pairs, divergent pairs, and (path, count) of each divergent field."""
    return {
        r["route"]: (
            r["pairs"],
            r["divergent"],
            sorted((f["path"], f["count"]) for f in r["fields"]),
        )
        for r in doc["routes"]
    }


def stored(store: Path, run: str) -> tuple[dict[str, int], list]:
    with SQLiteStore(store, create=False) as s:
        counts, exchanges = s.counts(run), list(s.exchanges(run))
    assert imbalance(counts) == [], counts
    return counts, exchanges


async def test_replay_of_a_mitmdump_recording_reads_like_the_live_run(tmp_path, services, client):
    """Recorded by `mitmdump -w` while the addon mirrored the same traffic live: the replay
    finds the same routes, divergences and verdict."""
    primary, shadow = await services(), await services(rename=True)
    port, flows, live = free_port(), tmp_path / "traffic.mitm", tmp_path / "live.db"
    shim = tmp_path / "shadowdiff.py"
    shim.write_text(ADDON.read_text())
    options = {
        "shadowdiff_shadow": shadow.url,
        "shadowdiff_sample": "1",
        "shadowdiff_store": str(live),
        "shadowdiff_run": "checkout",
        "shadowdiff_control": "off",
    }
    args = [str(Path(sys.executable).parent / "mitmdump"), "-q", "-s", str(shim), "-w", str(flows)]
    args += ["--mode", f"reverse:{primary.url}@{port}"]
    args += [arg for key, value in options.items() for arg in ("--set", f"{key}={value}")]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    paths = ["/users/{i}", "/orders/{i}", "/users/{i}", "/orders/{i}", "/search/{i}"]
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_listening(port)
        for start in range(0, 150, 10):
            batch = [client.get(base + paths[i % 5].format(i=i)) for i in range(start, start + 10)]
            for response in await asyncio.gather(*batch):
                assert response.status == 200
                response.release()
        for i in range(10):  # never mirrored: POST is not in the default methods
            async with client.post(f"{base}/orders", data=b'{"n": %d}' % i) as r:
                assert r.status == 201
        deadline = time.monotonic() + 20
        while len(shadow.requests) < 150 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the live copies trail the traffic a little
        await asyncio.sleep(0.2)
    finally:
        out = await Proxy(process, port, live, "checkout").stop(clean=False)
    assert len(shadow.requests) == 150, out
    shadow.requests.clear()

    replayed = tmp_path / "replay.db"
    done = await cli(
        "replay",
        str(flows),
        f"--primary={primary.url}",
        f"--shadow={shadow.url}",
        f"--store={replayed}",
        "--run=checkout",
        "--gate",
    )
    assert done.returncode == 1, done.stdout + done.stderr  # FAIL, as `gate` says
    assert "FAIL" in done.stdout and "GET /users/{id}" in done.stdout
    assert len(shadow.requests) == 150 and {m for m, *_ in shadow.requests} == {"GET"}
    live_counts, _ = stored(live, "checkout")
    replay_counts, _ = stored(replayed, "checkout")
    for name in ("seen", "sampled", "not_sampled.method", "recorded", "divergent"):
        assert live_counts.get(name) == replay_counts.get(name), name
    assert replay_counts["seen"] == 160 and replay_counts["divergent"] == 60
    live_doc, replay_doc = verdict_of(live, "checkout"), verdict_of(replayed, "checkout")
    assert routes_of(replay_doc) == routes_of(live_doc)
    assert routes_of(replay_doc)["GET /users/{id}"] == (
        60,
        60,
        [("body:$.full_name", 60), ("body:$.name", 60)],
    )
    assert replay_doc["verdict"] == live_doc["verdict"] == "FAIL"
    rates = [
        {c["route"]: c["result"] for c in doc["checks"] if c["id"] == "divergence_rate"}
        for doc in (live_doc, replay_doc)
    ]
    assert rates[0] == rates[1] and rates[1]["GET /users/{id}"] == "FAIL"


async def test_a_har_export_replays(tmp_path, services):
    primary, shadow, secondary = await services(), await services(), await services()
    user = har_entry("https://shop.example/users/7?expand=1")
    order = har_entry("https://shop.example/orders", "POST", "2026-11-27T10:00:01.000Z")
    order["request"]["postData"] = {
        "mimeType": "application/json",
        "text": "eyJuIjogMX0=",  # {"n": 1}
        "encoding": "base64",
    }
    har = write_har(tmp_path / "browser.har", [user, order])
    config = tmp_path / "c.yaml"
    config.write_text("sampling:\n  routes:\n    - path: /orders\n      methods: [POST]\n")
    store = tmp_path / "r.db"
    done = await cli(
        "replay",
        str(har),
        f"--primary={primary.url}",
        f"--shadow={shadow.url}",
        f"--secondary={secondary.url}",
        f"--store={store}",
        f"--config={config}",
    )
    assert done.returncode == 0, done.stderr
    for service in (primary, shadow, secondary):
        (m1, path1, headers1, _), (m2, path2, headers2, body2) = service.requests
        assert (m1, path1, m2, path2, body2) == (
            "GET",
            "/users/7?expand=1",
            "POST",
            "/orders",
            b'{"n": 1}',
        )
        assert headers1["x-user"] == "Zoë"
        assert not any(name.startswith(":") for name in headers1)
        assert headers2["X-Shadowdiff"] == "shadow"
    counts, exchanges = stored(store, "default")
    assert sorted(x.route for x in exchanges) == ["GET /users/{id}", "POST /orders"]
    assert counts["matched"] == 2 and all(x.secondary is not None for x in exchanges)


async def test_recorded_primary_makes_latency_inconclusive(tmp_path, services):
    shadow = await services()
    answer = b'{"id": "%d", "kind": "users", "name": "Ada"}'
    flows = [
        make_flow(i, path=f"/users/{i}", response=answer % i, client=f"c{i % 3}") for i in range(60)
    ]
    for flow in flows:
        flow.response.headers["Content-Type"] = "application/json; charset=utf-8"
    recording = write_flows(tmp_path / "f.mitm", flows)
    store = tmp_path / "r.db"
    done = await cli(
        "replay",
        str(recording),
        "--from-recorded-primary",
        f"--shadow={shadow.url}",
        f"--store={store}",
        "--gate",
    )
    assert done.returncode == 3, done.stdout + done.stderr  # INCONCLUSIVE, as `gate` says
    assert done.stdout.splitlines()[1:] == [
        "INCONCLUSIVE: run 'default', 1 routes, 60 exchanges compared",
        "  INCONCLUSIVE latency          GET /users/{id}: 60 exchanges replayed against the "
        "recorded primary responses: their latencies were measured elsewhere, so timings are "
        "not compared",
    ]
    counts, _ = stored(store, "default")
    assert counts["replay.recorded_primary"] == counts["recorded"] == counts["matched"] == 60
    assert not [name for name in counts if name.startswith("latency_reference.")]  # none timed


async def run_replay(tmp_path: Path, flows: list, primary: str, shadow: str, **kw: object):
    """Replays `flows` in this process into a store of its own; the counters, balanced."""
    store = tmp_path / f"inproc-{time.monotonic_ns()}.db"
    cfg = load_config(None, {"primary": primary, "shadow": shadow, "store": str(store)})
    recording = read([str(write_flows(tmp_path / f"{store.stem}.mitm", flows))])
    sampling = kw.pop("sampling", Sampling(rate=1.0))
    await replay(cfg, recording, sampling, primary, concurrency=8, **kw)  # type: ignore[arg-type]
    counts, _ = stored(store, "default")
    return counts


async def test_sampling_rules_keep_writes_away(tmp_path, services):
    primary, shadow = await services(), await services()
    flows = [
        make_flow(1, "GET", "/users/1"),
        make_flow(2, "POST", "/orders", b"{}"),
        make_flow(3, "PUT", "/users/1", b"{}"),
        make_flow(4, "DELETE", "/users/2"),
        make_flow(5, "POST", "/search", b'{"q": 1}'),
        make_flow(6, "GET", "/users/3", client="c2"),
    ]
    counts = await run_replay(tmp_path, flows, primary.url, shadow.url)
    for service in (primary, shadow):
        assert sorted((m, p) for m, p, *_ in service.requests) == [
            ("GET", "/users/1"),
            ("GET", "/users/3"),
        ]
    assert counts["not_sampled.method"] == 4 and counts["recorded"] == 2
    shadow.requests.clear()
    rules = Sampling(rate=1.0, routes=[RouteRule(path="/search", methods=["GET", "POST"])])
    counts = await run_replay(tmp_path, flows, primary.url, shadow.url, sampling=rules)
    assert sorted((m, p, b) for m, p, _, b in shadow.requests) == [
        ("GET", "/users/1", b""),
        ("GET", "/users/3", b""),
        ("POST", "/search", b'{"q": 1}'),
    ]
    assert counts["not_sampled.method"] == 3 and counts["recorded"] == 3
    writes = [f for f in flows if f.request.method != "GET"]
    counts = await run_replay(tmp_path, writes, primary.url, shadow.url)  # nothing to send
    assert (counts["seen"], counts["not_sampled.method"], counts.get("sampled", 0)) == (4, 4, 0)


async def test_a_write_waits_for_its_connection(tmp_path, services):
    delays = {"/slow": 0.3}
    primary, shadow = await services(delays=delays), await services(delays=delays)
    flows = [
        make_flow(1, "GET", "/slow/a"),
        make_flow(2, "GET", "/slow/b"),
        make_flow(2.5, "GET", "/slow/c", client="other"),
        make_flow(3, "POST", "/orders", b"{}"),
        make_flow(4, "GET", "/users/9"),
    ]
    rules = Sampling(rate=1.0, routes=[RouteRule(path="/orders", methods=["POST"])])
    counts = await run_replay(tmp_path, flows, primary.url, shadow.url, sampling=rules)
    assert counts["recorded"] == 5
    both = (primary, shadow)

    def first(event: str, method: str, path: str) -> float:
        return min(s.when(event, method, path) for s in both)

    def last(event: str, method: str, path: str) -> float:
        return max(s.when(event, method, path) for s in both)

    # reads of one connection overlap, and other connections never wait for it
    assert last("start", "GET", "/slow/b") < first("end", "GET", "/slow/a")
    assert last("start", "GET", "/slow/c") < first("end", "GET", "/slow/a")
    # the write starts once both reads before it finished on both sides; the read after it
    # once the write did
    assert first("start", "POST", "/orders") >= last("end", "GET", "/slow/b")
    assert first("start", "POST", "/orders") >= last("end", "GET", "/slow/a")
    assert first("start", "GET", "/users/9") >= last("end", "POST", "/orders")


async def test_rate_paces_the_starts(tmp_path, services):
    primary, shadow = await services(), await services()
    flows = [make_flow(i, path=f"/users/{i}", client=f"c{i}") for i in range(11)]
    started = time.monotonic()
    counts = await run_replay(tmp_path, flows, primary.url, shadow.url, rate=20.0)
    assert counts["recorded"] == 11
    assert time.monotonic() - started >= 0.5  # 11 starts, 1/20 s apart
    starts = sorted(t for e, *_, t in shadow.log if e == "start")
    assert starts[-1] - starts[0] >= 0.45


async def test_interrupt_keeps_everything_recorded(tmp_path, services):
    primary, shadow = await services(), await services(delays={"/users": 0.2})
    flows = write_flows(tmp_path / "f.mitm", [make_flow(i, path=f"/users/{i}") for i in range(300)])
    store = tmp_path / "r.db"
    process = subprocess.Popen(
        [sys.executable, "-m", "shadowdiff", "replay", str(flows), f"--primary={primary.url}"]
        + [f"--shadow={shadow.url}", f"--store={store}", "--concurrency=4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    recorded = 0
    deadline = time.monotonic() + 30
    while recorded < 8 and time.monotonic() < deadline and process.poll() is None:
        await asyncio.sleep(0.1)
        try:
            with SQLiteStore(store, create=False) as s:
                recorded = s.counts("default").get("recorded", 0)
        except StoreError:
            pass
    process.send_signal(signal.SIGINT)
    while process.poll() is None:
        await asyncio.sleep(0.05)
    out, err = process.communicate()
    assert process.returncode == 130, out + err
    assert "stopped early; everything recorded so far is kept" in err and "Traceback" not in err
    counts, _ = stored(store, "default")
    with SQLiteStore(store, create=False) as s:
        compared = sum(route["exchanges"] for route in s.routes("default").values())
    assert recorded <= counts["recorded"] < 300
    # every copy the shadow answered was recorded: the ones in flight got the grace period
    assert counts["recorded"] == compared == len(shadow.requests) == counts["seen"]
    assert f"recorded {counts['recorded']}" in out


def test_a_damaged_file_replays_the_rest_and_says_so(tmp_path):
    flows = [make_flow(i, path=f"/users/{i}") for i in range(6)]
    data = write_flows(tmp_path / "f.mitm", flows).read_bytes()
    damaged = tmp_path / "damaged.mitm"
    damaged.write_bytes(data[:-40])
    done = shadowdiff(
        "replay",
        str(damaged),
        "--from-recorded-primary",
        f"--shadow=http://127.0.0.1:{free_port()}",  # down: every copy is a connect error
        f"--store={tmp_path / 'r.db'}",
        "--limit=4",
    )
    assert done.returncode == 0, done.stderr
    replayed, skipped = done.stdout.splitlines()
    assert replayed.startswith("shadowdiff: replayed 4 of 4 entries in ")
    assert "seen 4, sampled 4, recorded 4" in replayed
    assert skipped == "shadowdiff: skipped 1 (cannot replay): corrupt 1"
    assert f"warning: {damaged}: damaged after flow 5" in done.stderr
    assert "\x1b" not in done.stdout + done.stderr  # no progress bar off a terminal


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}", "--primary=http://127.0.0.1:1"], "{missing}: cannot read"),
        (["{empty}", "--primary=http://127.0.0.1:1"], "{empty}: empty file, nothing to replay"),
        (["{junk}", "--primary=http://127.0.0.1:1"], "{junk}: not a mitmproxy flow file or HAR"),
        (["{good}"], "--primary: required (or --from-recorded-primary)"),
        (
            ["{good}", "--primary=http://127.0.0.1:1", "--from-recorded-primary"],
            "--primary: not with --from-recorded-primary",
        ),
        (["{good}", "--primary=127.0.0.1:1"], "--primary: '127.0.0.1:1' is not a URL"),
        (["{good}", "--primary=http://127.0.0.1:1", "--timeout=soon"], "--timeout: 'soon' is not"),
        ([], "Missing argument 'FILE...'"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, args, message):
    files = {
        "missing": tmp_path / "missing.mitm",
        "empty": tmp_path / "empty.har",
        "junk": tmp_path / "junk.bin",
        "good": write_flows(tmp_path / "good.mitm", [make_flow(1)]),
    }
    files["empty"].write_bytes(b"")
    files["junk"].write_bytes(b"\x00junk" * 50)
    done = shadowdiff(
        "replay",
        *(a.format(**files) for a in args),
        "--shadow=http://127.0.0.1:1",
        f"--store={tmp_path / 'r.db'}",
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("shadowdiff: error: ") and done.stderr.count("\n") == 1
    assert message.format(**files) in done.stderr


async def test_progress_bar_on_a_terminal_and_quiet(tmp_path, services):
    primary, shadow = await services(), await services(rename=True)
    flows = write_flows(tmp_path / "f.mitm", [make_flow(i, path=f"/users/{i}") for i in range(30)])
    shown = {}
    for quiet in (False, True):
        leader, follower = pty.openpty()
        args = [sys.executable, "-m", "shadowdiff", "replay", str(flows)]
        args += [f"--primary={primary.url}", f"--shadow={shadow.url}"]
        args += [f"--store={tmp_path / 'r.db'}", f"--run=q{quiet}"] + (["--quiet"] if quiet else [])
        done = await asyncio.to_thread(
            subprocess.run, args, stdout=subprocess.PIPE, stderr=follower, text=True, timeout=60
        )
        os.close(follower)
        assert done.returncode == 0
        terminal = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the process is gone and everything was read
                break
            if not chunk:
                break
            terminal += chunk
        os.close(leader)
        shown[quiet] = terminal.decode(errors="replace")
        assert "replayed 30 of 30 entries" in done.stdout
    assert "30/30" in shown[False] and "pairs/s" in shown[False]
    assert "30 divergent" in shown[False]
    assert shown[True] == ""
