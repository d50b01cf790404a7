"""`shadowdiff demo`: two small bundled services, the real proxy in front, a few hundred requests.

The primary is a tiny user and search API; the shadow is its "next version", which renames one
field for some users and answers searches a little slower. The proxy runs as its own process,
exactly as a user would start it; the demo ends with the verdict and an HTML report.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from shadowdiff.config import load_config
from shadowdiff.faces import render_html
from shadowdiff.judge import document
from shadowdiff.store import open_store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_app(version: str) -> web.Application:
    """The demo API; `version` "shadow" differs from "primary" in two small ways."""

    async def user(request: web.Request) -> web.Response:
        await asyncio.sleep(0.005)
        uid = int(request.match_info["id"])
        body: dict[str, object] = {"id": uid, "name": f"user {uid}", "plan": "free"}
        if version == "shadow" and uid % 7 == 0:
            body["full_name"] = body.pop("name")
        return web.json_response(body)

    async def search(request: web.Request) -> web.Response:
        await asyncio.sleep(0.008 if version == "shadow" else 0.005)
        q = request.query.get("q", "")
        return web.json_response({"q": q, "results": [f"{q}-{i}" for i in range(3)]})

    async def order(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "items": len(await request.read())}, status=201)

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/users/{id}", user)
    app.router.add_get("/search", search)
    app.router.add_post("/orders", order)
    app.router.add_get("/health", health)
    return app


async def start(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def wait_listening(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


async def drive(port: int, count: int) -> int:
    """Sends `count` requests (mostly GETs, some POSTs); returns how many answered 2xx."""
    rng = random.Random(7)
    ok = 0
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
        for i in range(count):
            pick = rng.random()
            if pick < 0.6:
                call = session.get(f"/users/{rng.randint(1, 500)}")
            elif pick < 0.9:
                call = session.get("/search", params={"q": rng.choice(["tea", "cake", "jam"])})
            else:
                call = session.post("/orders", json={"n": i})
            async with call as response:
                await response.read()
                ok += response.status < 300
    return ok


async def _demo(count: int, sample: float, store_path: str) -> None:
    primary_port, shadow_port, proxy_port = free_port(), free_port(), free_port()
    runners = [
        await start(demo_app("primary"), primary_port),
        await start(demo_app("shadow"), shadow_port),
    ]
    print(f"demo primary on :{primary_port}, shadow on :{shadow_port}, proxy on :{proxy_port}")
    proxy = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shadowdiff",
        "proxy",
        f"--primary=http://127.0.0.1:{primary_port}",
        f"--shadow=http://127.0.0.1:{shadow_port}",
        f"--listen=127.0.0.1:{proxy_port}",
        f"--control=127.0.0.1:{free_port()}",
        f"--sample={sample}",
        f"--store={store_path}",
        "--run=demo",
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        await wait_listening(proxy_port)
        started = time.monotonic()
        ok = await drive(proxy_port, count)
        elapsed = time.monotonic() - started
        print(f"drove {count} requests through the proxy in {elapsed:.1f}s, {ok} answered 2xx")
        await asyncio.sleep(0.5)
    finally:
        if proxy.returncode is None:
            proxy.send_signal(signal.SIGTERM)
        await proxy.wait()
        for runner in runners:
            await runner.cleanup()
    cfg = load_config(None, {"shadow": "http://127.0.0.1:1"})
    with open_store(store_path, create=False) as store:
        doc, extras, verdict = document(store, "demo", cfg)
    print("what the shadow answered differently, by route:")
    for route in doc["routes"]:
        name, pairs, divergent = route["route"], route["pairs"], route["divergent"]
        print(f"  {name:<20} {pairs:>4} compared, {divergent:>3} divergent")
        for field in route["fields"][:3]:
            print(f"      {field['path']} {field['kind']} in {field['count']}")
    report = Path(store_path).with_suffix(".html")
    report.write_text(render_html(doc, extras), encoding="utf-8")
    print(f"verdict: {verdict.verdict}")
    for check in verdict.checks:
        if check.result != "PASS":
            print(f"  {check.result:<12} {check.id:<16} {check.route}: {check.detail}")
    print(f"HTML report: {report.resolve()}")


def run_demo(count: int, sample: float, store_path: str) -> None:
    if Path(store_path).exists():
        for suffix in ("", "-wal", "-shm"):
            Path(store_path + suffix).unlink(missing_ok=True)
    asyncio.run(_demo(count, sample, store_path))
