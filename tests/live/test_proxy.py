"""End to end: the real `shadowdiff proxy` process between real clients and real services."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from helpers import free_port, wait_listening

from conftest import Backend, Proxy, serve_app
from shadowdiff.counts import imbalance
from shadowdiff.store import SQLiteStore

REQUESTS = [
    ("GET", "/users/1", b""),
    ("GET", "/search?q=tea&page=2", b""),
    ("HEAD", "/users/2", b""),
    ("OPTIONS", "/users", b""),
    ("POST", "/orders", b'{"n": 1}'),
    ("PUT", "/users/3", b"x" * 5000),
    ("DELETE", "/users/4", b""),
    ("GET", "/gone", b""),
]


async def fetch(
    session: aiohttp.ClientSession, base: str, method: str, path: str, body: bytes, **kw: object
) -> tuple[int, list[tuple[str, str]], bytes]:
    async with session.request(method, base + path, data=body or None, **kw) as r:  # type: ignore[arg-type]
        data = await r.read()
        headers = [(k, v) for k, v in r.headers.items() if k.lower() != "date"]
        return r.status, headers, data


def recorded(proxy: Proxy) -> tuple[dict[str, int], list]:
    with SQLiteStore(proxy.store, create=False) as store:
        counts = store.counts(proxy.run)
        exchanges = list(store.exchanges(proxy.run))
    assert imbalance(counts) == [], counts
    return counts, exchanges


async def assert_identical(
    client: aiohttp.ClientSession, primary: Backend, proxy: Proxy, rounds: int
) -> None:
    """Every response through the proxy equals the primary's own answer to the same request."""
    for _ in range(rounds):
        for method, path, body in REQUESTS:
            direct = await fetch(client, primary.url, method, path, body)
            proxied = await fetch(client, proxy.url, method, path, body)
            assert proxied == direct, (method, path)


@pytest.mark.parametrize("rate", ["0", "0.1", "1"])
async def test_live_responses_identical_at_any_rate(rate, primary, shadow, start_proxy, client):
    shadow.mode = "error"  # a shadow that answers differently must change nothing
    proxy = await start_proxy(
        f"--primary={primary.url}", f"--shadow={shadow.url}", f"--sample={rate}"
    )
    await assert_identical(client, primary, proxy, rounds=5)
    output = await proxy.stop()
    counts, exchanges = recorded(proxy)
    assert "seen 40" in output and counts["seen"] == 40
    eligible = sum(1 for m, _, _ in REQUESTS if m in ("GET", "HEAD", "OPTIONS")) * 5
    if rate == "0":
        assert counts.get("sampled", 0) == 0 and not shadow.seen
    if rate == "1":
        assert counts["sampled"] == counts.get("recorded") == eligible == len(shadow.seen), counts
        assert {x.shadow.status for x in exchanges} == {500}


@pytest.mark.parametrize("fault", ["down", "hang"])
async def test_live_path_unharmed_when_shadow_fails(fault, primary, start_proxy, client, tmp_path):
    hanging = await Backend("shadow", mode="hang").start()
    url = hanging.url if fault == "hang" else f"http://127.0.0.1:{free_port()}"
    config = tmp_path / "c.yaml"
    config.write_text("mirror:\n  timeout: 1s\n")
    proxy = await start_proxy(
        f"--primary={primary.url}", f"--shadow={url}", "--sample=1", config=str(config)
    )
    await assert_identical(client, primary, proxy, rounds=3)
    latencies = []
    for i in range(100):
        started = time.perf_counter()
        status, _, _ = await fetch(client, proxy.url, "GET", f"/users/{i}", b"")
        latencies.append(time.perf_counter() - started)
        assert status == 200
    # The copies time out after 1 s; the live answers must not wait for them.
    assert max(latencies) < 0.5, max(latencies)
    await asyncio.sleep(1.5)
    await proxy.stop()
    await hanging.stop()
    counts, exchanges = recorded(proxy)
    kind = "timeout" if fault == "hang" else "connect"
    assert counts["sampled"] == 115
    if fault == "down":
        assert {x.shadow.error for x in exchanges} == {"connect"}
        assert counts.get("shadow_error.connect", 0) == len(exchanges) > 0
    else:
        # every copy hangs and is recorded as a timeout once its 1 s are up
        assert exchanges and all(x.shadow.error == kind for x in exchanges)
        assert len(exchanges) == counts["recorded"] == counts["shadow_error.timeout"]


async def test_sample_rate_and_methods(primary, shadow, start_proxy, client):
    proxy = await start_proxy(f"--primary={primary.url}", f"--shadow={shadow.url}", "--sample=0.2")
    for i in range(1000):
        async with client.get(f"{proxy.url}/items/{i}") as r:
            await r.read()
    for _ in range(50):
        async with client.post(f"{proxy.url}/orders", data=b"{}") as r:
            assert r.status == 200
    await proxy.stop()
    counts, _ = recorded(proxy)
    assert 160 <= len(shadow.seen) <= 240, len(shadow.seen)
    assert all(method == "GET" for method, *_ in shadow.seen)
    assert counts["not_sampled.method"] == 50
    assert counts["recorded"] == len(shadow.seen)


async def test_route_override_allows_post(primary, shadow, start_proxy, client, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "sampling:\n  rate: 1.0\n  routes:\n    - path: /search\n      methods: [GET, POST]\n"
    )
    proxy = await start_proxy(
        f"--primary={primary.url}", f"--shadow={shadow.url}", config=str(config)
    )
    for path in ("/search", "/orders"):
        async with client.post(f"{proxy.url}{path}", data=b'{"q": 1}') as r:
            await r.read()
    await proxy.stop()
    assert [(m, p, b) for m, p, _, b in shadow.seen] == [("POST", "/search", b'{"q": 1}')]


async def test_copy_carries_request_and_marker(primary, shadow, start_proxy, client):
    proxy = await start_proxy(f"--primary={primary.url}", f"--shadow={shadow.url}", "--sample=1")
    async with client.get(
        f"{proxy.url}/a/b?x=1&y=2", headers={"X-User-Id": "u1", "Accept-Encoding": "gzip"}
    ) as r:
        await r.read()
    # A request that already is a copy is never mirrored again.
    async with client.get(f"{proxy.url}/loop", headers={"X-Shadowdiff": "shadow"}) as r:
        assert r.status == 200
    await proxy.stop()
    counts, exchanges = recorded(proxy)
    assert len(shadow.seen) == 1
    method, path, headers, _ = shadow.seen[0]
    assert (method, path) == ("GET", "/a/b?x=1&y=2")
    assert headers["X-User-Id"] == "u1" and headers["X-Shadowdiff"] == "shadow"
    assert headers["Accept-Encoding"] == "gzip"
    assert counts["not_eligible.loop"] == 1
    [x] = exchanges
    assert x.route == "GET /a/b" and x.primary.status == x.shadow.status == 200
    assert x.primary.latency is not None and x.shadow.latency is not None


async def test_shadow_faults_are_recorded_with_their_kinds(primary, start_proxy, client, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("mirror:\n  timeout: 1s\n  breaker:\n    min_requests: 1000\n")
    results = {}
    for mode, kind in [("hang", "timeout"), ("reset", "reset"), ("big", "too_large")]:
        backend = await Backend("shadow", mode=mode).start()
        proxy = await start_proxy(
            f"--primary={primary.url}",
            f"--shadow={backend.url}",
            "--sample=1",
            config=str(config),
            run=mode,
        )
        for i in range(5):
            status, _, body = await fetch(client, proxy.url, "GET", f"/f/{i}", b"")
            assert status == 200 and b'"by": "primary"' in body
        await asyncio.sleep(1.5)
        await proxy.stop()
        await backend.stop()
        counts, exchanges = recorded(proxy)
        results[mode] = {x.shadow.error for x in exchanges}
        assert counts["recorded"] == 5
        assert results[mode] == {kind}, results


async def test_circuit_breaker_trips_and_recovers(primary, start_proxy, client, tmp_path):
    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(
        "mirror:\n  breaker:\n"
        "    min_requests: 5\n    window: 10s\n    cool_down: 1s\n    probes: 2\n"
    )
    proxy = await start_proxy(
        f"--primary={primary.url}",
        f"--shadow=http://127.0.0.1:{port}",
        "--sample=1",
        config=str(config),
    )
    await asyncio.sleep(1.0)  # let the worker come up, so the copies go out as requests arrive
    for i in range(30):
        await fetch(client, proxy.url, "GET", f"/x/{i}", b"")
        await asyncio.sleep(0.02)
    revived = await Backend("shadow", port=port).start()
    await asyncio.sleep(1.2)
    for i in range(30):
        await fetch(client, proxy.url, "GET", f"/y/{i}", b"")
        await asyncio.sleep(0.01)
    await proxy.stop()
    await revived.stop()
    counts, exchanges = recorded(proxy)
    assert (
        counts.get("breaker.shadow.open", 0) >= 1 and counts.get("breaker.shadow.closed", 0) >= 1
    ), counts
    assert counts["dropped.circuit_open"] >= 20
    assert sum(1 for x in exchanges if x.shadow.status == 200) >= 25
    assert len(revived.seen) >= 25


async def test_websocket_passes_through_not_eligible(start_proxy, client, shadow):
    async def ws(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for message in socket:
            await socket.send_str("echo " + message.data)
        return socket

    app = web.Application()
    app.router.add_get("/ws", ws)
    runner, url = await serve_app(app)
    proxy = await start_proxy(f"--primary={url}", f"--shadow={shadow.url}", "--sample=1")
    async with client.ws_connect(f"{proxy.url}/ws") as socket:
        await socket.send_str("hi")
        assert (await socket.receive()).data == "echo hi"
    await proxy.stop()
    await runner.cleanup()
    counts, _ = recorded(proxy)
    assert counts["not_eligible.upgrade"] == 1 and not shadow.seen


async def test_mitmdump_script_route_and_reload(primary, shadow, client, tmp_path):
    """`mitmdump -s addons/shadowdiff.py`: mirrors, and a script reload restarts the worker
    without losing a count (each tap instance keeps its own books in the store)."""
    config = tmp_path / "c.yaml"
    store = tmp_path / "m.db"
    config.write_text(
        f"shadow: {shadow.url}\nstore: {store}\nrun: dump\nsampling:\n  rate: 1\n"
        f"control:\n  listen: 127.0.0.1:{free_port()}\n"
    )
    port = free_port()
    shim = tmp_path / "shadowdiff.py"
    shim.write_text((Path(__file__).parent.parent.parent / "addons" / "shadowdiff.py").read_text())
    mitmdump = Path(sys.executable).parent / "mitmdump"
    args = [
        str(mitmdump),
        "-q",
        "--mode",
        f"reverse:{primary.url}@{port}",
        "-s",
        str(shim),
        "--set",
        f"shadowdiff_config={config}",
        "--set",
        "shadowdiff_sample=0.5",
    ]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_listening(port)
        for i in range(40):
            assert (await fetch(client, base, "GET", f"/m/{i}", b""))[0] == 200
        await asyncio.sleep(1.0)
        shim.write_text(shim.read_text() + "\n# touched\n")  # mitmproxy reloads changed scripts
        await asyncio.sleep(3.0)
        for i in range(40):
            assert (await fetch(client, base, "GET", f"/n/{i}", b""))[0] == 200
    finally:
        out = await Proxy(process, port, store, "dump").stop(clean=False)
    assert "Loading script" in out or out.count("run 'dump'") >= 2, out
    with SQLiteStore(store, create=False) as s:
        counts = s.counts("dump")
        instances = s.db.execute("SELECT COUNT(DISTINCT instance) FROM counts").fetchone()[0]
    assert instances == 2, out
    assert imbalance(counts) == [], (counts, out)
    assert counts["seen"] == 80 and 20 <= counts["recorded"] <= 60, counts
    # the config names no primary: mitmproxy's reverse target is it, and times the baseline
    assert counts["latency_reference.primary"] == counts["recorded"], counts
    assert len(primary.seen) == 80 + counts["recorded"]  # the live requests and timed copies
    assert counts["recorded"] == len(shadow.seen)
