"""The verdict's promises end to end: real services with real delays, the proxy, the gate."""

from __future__ import annotations

import asyncio
import json

import orjson
from aiohttp import web

from conftest import serve_app, shadowdiff

BASE_DELAY = 0.02


async def api(rename: bool = False, slow_route: str | None = None) -> tuple[web.AppRunner, str]:
    """A small API answering after BASE_DELAY (30 % more on `slow_route`)."""

    def handler(route: str):
        async def handle(request: web.Request) -> web.Response:
            await asyncio.sleep(BASE_DELAY * (1.3 if route == slow_route else 1.0))
            body = {"id": request.match_info.get("id"), "route": route}
            body["full_name" if rename and route == "users" else "name"] = "x"
            return web.json_response(body)

        return handle

    app = web.Application()
    app.router.add_get("/users/{id}", handler("users"))
    app.router.add_get("/orders/{id}", handler("orders"))
    app.router.add_get("/search", handler("search"))
    return await serve_app(app)


async def drive(client, base: str, count: int, concurrency: int = 10) -> None:
    paths = ["/users/{i}", "/orders/{i}", "/search?q={i}"]

    async def one(i: int) -> None:
        async with client.get(base + paths[i % 3].format(i=i)) as r:
            await r.read()
            assert r.status == 200

    for start in range(0, count, concurrency):
        await asyncio.gather(*(one(i) for i in range(start, min(count, start + concurrency))))


def gate(store, *args: str) -> tuple[int, dict]:
    done = shadowdiff("gate", f"--store={store}", "--json", *args)
    assert done.returncode in (0, 1, 3), done.stderr
    return done.returncode, json.loads(done.stdout)


async def run(start_proxy, client, count: int, shadow_kw: dict, secondary: bool = True, run="g"):
    primary = await api()
    shadow = await api(**shadow_kw)
    second = await api() if secondary else None
    flags = [f"--primary={primary[1]}", f"--shadow={shadow[1]}", "--sample=1"]
    if second:
        flags.append(f"--secondary={second[1]}")
    proxy = await start_proxy(*flags, run=run)
    await drive(client, proxy.url, count)
    await proxy.stop()
    for runner, _ in filter(None, (primary, shadow, second)):
        await runner.cleanup()
    return proxy


def checks(doc: dict, check_id: str) -> dict[str, str]:
    return {c["route"]: c["result"] for c in doc["checks"] if c["id"] == check_id}


async def test_aa_run_passes(start_proxy, client):
    proxy = await run(start_proxy, client, 600, {})
    status, doc = gate(proxy.store)
    assert (status, doc["verdict"]) == (0, "PASS"), [
        c for c in doc["checks"] if c["result"] != "PASS"
    ]
    assert doc["counts"]["divergent"] == 0 and doc["counts"]["compared"] == 600
    assert all(r["divergent"] == 0 and r["fields"] == [] for r in doc["routes"])


async def test_renamed_field_fails_naming_route_and_path(start_proxy, client):
    proxy = await run(start_proxy, client, 300, {"rename": True})
    status, doc = gate(proxy.store)
    assert (status, doc["verdict"]) == (1, "FAIL")
    assert checks(doc, "divergence_rate") == {
        "GET /users/{id}": "FAIL",
        "GET /orders/{id}": "PASS",
        "GET /search": "PASS",
    }
    users = next(r for r in doc["routes"] if r["route"] == "GET /users/{id}")
    assert {f["path"] for f in users["fields"]} == {"body:$.name", "body:$.full_name"}
    text = shadowdiff("gate", f"--store={proxy.store}")
    assert text.returncode == 1 and "GET /users/{id}" in text.stdout


async def test_slower_route_fails_latency_there_only(start_proxy, client):
    proxy = await run(start_proxy, client, 600, {"slow_route": "orders"})
    status, doc = gate(proxy.store)
    assert status == 1
    assert checks(doc, "latency") == {
        "GET /orders/{id}": "FAIL",
        "GET /users/{id}": "PASS",
        "GET /search": "PASS",
    }
    orders = next(r for r in doc["routes"] if r["route"] == "GET /orders/{id}")
    low, high = orders["latency"]["ci"]
    assert 1.1 < low <= orders["latency"]["ratio"] <= high


async def test_too_little_data_is_inconclusive(start_proxy, client, tmp_path):
    proxy = await run(start_proxy, client, 20, {})
    status, doc = gate(proxy.store)
    assert (status, doc["verdict"]) == (3, "INCONCLUSIVE")
    assert set(checks(doc, "min_sample").values()) == {"INCONCLUSIVE"}
    # the reports read the same run
    html = tmp_path / "r.html"
    done = shadowdiff(
        "report",
        f"--store={proxy.store}",
        "--format=html",
        "-o",
        str(html),
    )
    assert done.returncode == 0, done.stderr
    assert "INCONCLUSIVE" in html.read_text()
    md = shadowdiff("report", f"--store={proxy.store}", "--format=md").stdout
    assert "INCONCLUSIVE" in md
    as_json = shadowdiff("report", f"--store={proxy.store}", "--format=json").stdout
    assert orjson.loads(as_json)["verdict"] == "INCONCLUSIVE"


def test_gate_bad_usage_is_exit_2(tmp_path):
    missing = shadowdiff("gate", f"--store={tmp_path / 'none.db'}")
    assert missing.returncode == 2 and "no such store" in missing.stderr
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"junk" * 1000)
    broken = shadowdiff("gate", f"--store={junk}")
    assert broken.returncode == 2 and "Traceback" not in broken.stderr
