"""Hostile bodies end to end, through the real proxy: the judge stands and answers in time.

Audit findings 5 and 7: a client's JSON body nested 255–1,024 levels deep (orjson reads 1,024
levels, writes 254) crashed `gate`, every report and `/api/examples`; a shadow that changes
every item of 20,000-element lists stored 20,000 divergences an exchange, and `gate` did not
finish in 300 s.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from typing import Any

from aiohttp import web
from helpers import written

from conftest import serve_app, shadowdiff
from shadowdiff.compare.outcomes import MAX_DIVERGENCES

DEPTHS = (255, 1024)
ITEMS = 20_000
LISTS = 20


def service(name: str, offset: int) -> web.Application:
    """`/u/{id}` answers who answered; `/list`, ITEMS numbers, each `offset` more."""

    async def user(request: web.Request) -> web.Response:
        return web.json_response({"by": name})

    async def items(request: web.Request) -> web.Response:
        return web.json_response([i + offset for i in range(ITEMS)])

    app = web.Application()
    app.router.add_get("/u/{id}", user)
    app.router.add_get("/list", items)
    return app


async def examples(client: Any, control: str, route: str, path: str, n: int) -> list[Any]:
    """The dashboard's examples of (route, path), once the worker has written `n` of them."""
    deadline = time.monotonic() + 20
    while True:
        params = {"route": route, "path": path}
        async with client.get(control + "/api/examples", params=params) as r:
            assert r.status == 200, await r.text()
            shown = await r.json()
        if len(shown) >= n or time.monotonic() > deadline:
            return list(shown)
        await asyncio.sleep(0.1)


async def test_deep_and_huge_bodies_leave_the_judge_standing(start_proxy, client, tmp_path):
    primary, shadow = await serve_app(service("primary", 0)), await serve_app(service("shadow", 1))
    proxy = await start_proxy(f"--primary={primary[1]}", f"--shadow={shadow[1]}", "--sample=1")
    deep = ["[" * depth + "]" * depth for depth in DEPTHS]
    for depth, body in zip(DEPTHS, deep, strict=True):  # the first requests of their route
        headers = {"Content-Type": "application/json"}
        async with client.get(f"{proxy.url}/u/{depth}", data=body, headers=headers) as r:
            assert r.status == 200 and await r.json() == {"by": "primary"}
    for _ in range(LISTS):
        async with client.get(proxy.url + "/list") as r:
            assert r.status == 200 and len(await r.json()) == ITEMS
    # every list compared before the stop (a slow machine compares 20 of them for seconds,
    # more than the stop's bound would wait)
    await written(client, proxy.control, len(DEPTHS) + LISTS, timeout=120)
    shown = await examples(client, proxy.control, "GET /u/{id}", "body:$.by", len(DEPTHS))
    assert sorted(e["request_body"] for e in shown) == sorted(deep)  # as they came
    shown = await examples(client, proxy.control, "GET /list", "body:$[7]", 5)
    assert len(shown) == 5  # the examples of every item, `body:$[*]`
    await proxy.stop()
    for runner, _ in (primary, shadow):
        await runner.cleanup()

    gate = shadowdiff("gate", f"--store={proxy.store}")  # within the helper's time limit
    assert (gate.returncode, gate.stderr) == (3, ""), gate.stderr  # fewer than min_pairs
    assert gate.stdout.startswith("INCONCLUSIVE: run 'test', 2 routes, 22 exchanges compared")
    for fmt in ("html", "md", "json"):
        out = tmp_path / f"report.{fmt}"
        done = shadowdiff("report", f"--store={proxy.store}", f"--format={fmt}", f"--output={out}")
        assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert all(body in (tmp_path / "report.html").read_text() for body in deep)
    doc = json.loads((tmp_path / "report.json").read_text())
    lists = next(r for r in doc["routes"] if r["route"] == "GET /list")
    assert (lists["pairs"], lists["divergent"]) == (LISTS, LISTS)
    more = [f for f in lists["fields"] if f["kind"] == "more"]
    assert more == [{**more[0], "path": "body:…", "count": LISTS}]
    with sqlite3.connect(proxy.store) as db:
        [(widest,)] = db.execute(
            "SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM divergences GROUP BY flow_id)"
        )
    assert widest == MAX_DIVERGENCES + 1
