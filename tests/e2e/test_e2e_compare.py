"""The comparison's promises end to end: real services, the real proxy, the store's findings."""

from __future__ import annotations

import gzip
import random
import time
import uuid
from dataclasses import dataclass

import orjson
import yaml
from aiohttp import web

from conftest import serve_app, shadowdiff
from shadowdiff.config import Noise, load_config
from shadowdiff.judge.noise import RouteFindings, findings
from shadowdiff.store import SQLiteStore


@dataclass
class Version:
    """How one instance of the demo API answers."""

    rename: bool = False  # GET /users/{id}: "name" becomes "full_name"
    gzip: bool = False
    reorder: bool = False  # GET /search: the same results in another order
    jitter: bool = False  # GET /orders/{id}: float total off by less than a cent
    fail_every: int = 0  # GET /orders/{id}: every n-th answers 500
    volatile: bool = False  # every body carries a fresh timestamp and request id


async def serve(version: Version) -> tuple[web.AppRunner, str]:
    calls = {"orders": 0}

    def answer(body: dict, status: int = 200) -> web.Response:
        if version.volatile:
            body = {**body, "generated_at": f"{time.time():.6f}", "request_id": str(uuid.uuid4())}
        data = orjson.dumps(body)
        headers = {"Content-Type": "application/json", "X-Request-Id": uuid.uuid4().hex}
        if version.gzip:
            data = gzip.compress(data)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=data, status=status, headers=headers)

    async def user(request: web.Request) -> web.Response:
        uid = int(request.match_info["id"])
        key = "full_name" if version.rename else "name"
        return answer({"id": uid, key: f"user {uid}", "plan": "free"})

    async def search(request: web.Request) -> web.Response:
        results = [f"r{i}" for i in range(5)]
        if version.reorder:
            random.shuffle(results)
        return answer({"q": request.query.get("q", ""), "results": results})

    async def order(request: web.Request) -> web.Response:
        calls["orders"] += 1
        if version.fail_every and calls["orders"] % version.fail_every == 0:
            return answer({"error": "internal"}, status=500)
        total = 10.25 + (random.random() * 0.004 if version.jitter else 0.0)
        return answer({"id": request.match_info["id"], "total": total})

    app = web.Application()
    app.router.add_get("/users/{id}", user)
    app.router.add_get("/search", search)
    app.router.add_get("/orders/{id}", order)
    return await serve_app(app)


async def run_traffic(
    start_proxy,
    client,
    tmp_path,
    primary: Version,
    shadow: Version,
    secondary: Version | None = None,
    config: str = "",
    count: int = 300,
    paths=("/users/{i}", "/search?q=tea", "/orders/{i}"),
    run: str = "test",
) -> dict[str, RouteFindings]:
    runners, urls = [], []
    for version in (primary, shadow, secondary):
        if version is not None:
            runner, url = await serve(version)
            runners.append(runner)
            urls.append(url)
    flags = [f"--primary={urls[0]}", f"--shadow={urls[1]}", "--sample=1"]
    if secondary is not None:
        flags.append(f"--secondary={urls[2]}")
    path = tmp_path / "c.yaml"
    path.write_text(config or "{}\n")
    proxy = await start_proxy(*flags, config=str(path), run=run)
    for i in range(count):
        async with client.get(proxy.url + paths[i % len(paths)].format(i=i)) as r:
            await r.read()
            assert r.status in (200, 500)
    await proxy.stop()
    for runner in runners:
        await runner.cleanup()
    with SQLiteStore(proxy.store, create=False) as store:
        run = proxy.run
        found = findings(store.routes(run), store.path_counts(run), store.signatures(run), Noise())
        assert store.counts(proxy.run)["compared"] == count
    return {f.route: f for f in found}


async def test_renamed_field_caught_on_exactly_that_route(start_proxy, client, tmp_path):
    found = await run_traffic(start_proxy, client, tmp_path, Version(), Version(rename=True))
    users = found["GET /users/{id}"]
    assert users.divergent == users.exchanges == 100
    assert [(f.path, f.kind, f.count) for f in users.fields] == [
        ("body:$.full_name", "added", 100),
        ("body:$.name", "removed", 100),
    ]
    for route in ("GET /search", "GET /orders/{id}"):
        assert found[route].divergent == 0 and found[route].fields == [], route


async def test_volatile_fields_are_noise_when_the_secondary_shows_them(
    start_proxy, client, tmp_path
):
    volatile = Version(volatile=True)
    found = await run_traffic(start_proxy, client, tmp_path, volatile, volatile, volatile)
    for route in found.values():
        assert route.divergent == 0, route
        assert {f.path for f in route.fields} == {"body:$.generated_at", "body:$.request_id"}
        assert all(f.noise and f.noise_count == route.exchanges for f in route.fields)
    # the same shadow without a secondary: every difference counts, none is hidden
    found = await run_traffic(start_proxy, client, tmp_path, volatile, volatile, run="alone")
    assert all(route.divergent == route.exchanges for route in found.values())
    # ... and the engine proposes ignore rules for them, ready to paste
    suggested = shadowdiff(
        "suggest-ignores",
        f"--store={tmp_path}/alone.db",
        "--run=alone",
    ).stdout
    rules = yaml.safe_load(suggested)["compare"]["routes"]
    assert {r["route"] for r in rules} == set(found)
    assert all(r["ignore"] == ["body:$.generated_at", "body:$.request_id"] for r in rules)
    assert load_config(None, {"shadow": "http://a:1", "compare.routes": rules})


async def test_rules_and_encodings_give_no_divergence(start_proxy, client, tmp_path):
    config = (
        "compare:\n"
        "  unordered: ['body:$.results']\n"
        "  tolerance:\n    - path: body:$.total\n      absolute: 0.01\n"
    )
    shadow = Version(gzip=True, reorder=True, jitter=True)
    found = await run_traffic(start_proxy, client, tmp_path, Version(), shadow, config=config)
    for route in found.values():
        assert route.divergent == 0, route
    assert found["GET /users/{id}"].matched == 100  # gzip vs identity, X-Request-Id, Date
    assert found["GET /orders/{id}"].ignored > 90  # within tolerance: counted, not hidden


async def test_rare_500_on_one_route_is_caught(start_proxy, client, tmp_path):
    found = await run_traffic(
        start_proxy,
        client,
        tmp_path,
        Version(),
        Version(fail_every=100),
        count=3000,
        paths=("/orders/{i}", "/users/{i}", "/search?q=x"),
    )
    orders = found["GET /orders/{id}"]
    status = next(f for f in orders.fields if f.path == "status")
    assert status.count == 10 and not status.noise  # 1 % of the route's 1000 requests
    assert orders.divergent == 10
    assert found["GET /users/{id}"].divergent == found["GET /search"].divergent == 0
