"""The control server under hostile traffic, end to end with a real proxy: crafted paths cannot
grow or break `/metrics`, a scrape does not hold up the worker's loop, rebinding host names
are refused, made-up `?route=` values cost no judgement, the dial takes numbers only and the
bearer scheme is case-insensitive."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import aiohttp
from helpers import written
from prometheus_client.parser import text_string_to_metric_families

from conftest import Backend, Proxy
from shadowdiff.store import SQLiteStore


async def raw(port: int, request: bytes) -> tuple[int, bytes]:
    """Sends bytes no client library would, and returns the status and body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def get_request(path: bytes, host: bytes, *headers: bytes) -> bytes:
    lines = [b"GET " + path + b" HTTP/1.1", b"Host: " + host, *headers, b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def exposition(client: aiohttp.ClientSession, proxy: Proxy) -> str:
    """The text of one scrape, which must succeed."""
    async with client.get(proxy.control + "/metrics") as r:
        text = await r.text()
        assert r.status == 200, text
    return text


def route_labels(text: str) -> set[str]:
    return {
        s.labels["route"]
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if "route" in s.labels
    }


async def scrape(client: aiohttp.ClientSession, proxy: Proxy) -> set[str]:
    """The route labels of one scrape."""
    return route_labels(await exposition(client, proxy))


async def flow(client: aiohttp.ClientSession, base: str, paths: list[str]) -> None:
    """Sends `paths` through the proxy, 20 at a time."""
    queue = iter(paths)

    async def one() -> None:
        for path in queue:
            async with client.get(base + path) as r:
                await r.read()
                assert r.status == 200

    await asyncio.gather(*(one() for _ in range(20)))


async def mirroring_all(
    start_proxy: Any, primary: Backend, shadow: Backend, tmp_path: Path, routes: str
) -> Proxy:
    """A proxy that mirrors every request, with these `routes` settings (YAML flow style)."""
    config = tmp_path / "c.yaml"
    config.write_text(f"routes: {{{routes}}}\n")
    return await start_proxy(
        f"--primary={primary.url}", f"--shadow={shadow.url}", "--sample=1", config=str(config)
    )


async def test_crafted_paths_keep_the_route_labels_capped(
    start_proxy, primary: Backend, shadow: Backend, client, tmp_path: Path
) -> None:
    proxy = await mirroring_all(
        start_proxy, primary, shadow, tmp_path, "max: 20, collapse_after: 5"
    )
    # /a/b prefixes whose c collapses after 5 values, each written before the next: the
    # collapses free route slots for new names, so the routes ever seen go past the cap
    words = ["alpha", "bravo", "delta", "gamma", "kilo", "lima"]
    prefixes = [f"/{a}/{b}/" for a, b in itertools.product(words[:5], repeat=2)][:12]
    sent = 0
    for phase in range(0, len(prefixes), 3):
        for values in (words[:5], words[5:]):
            paths = [p + c for p in prefixes[phase : phase + 3] for c in values]
            await flow(client, proxy.url, paths)
            sent += len(paths)
            await written(client, proxy.control, sent)
    labels: set[str] = set()
    scrapes = asyncio.gather(*(scrape(client, proxy) for _ in range(5)))
    await flow(client, proxy.url, [f"/alpha/alpha/{i}" for i in range(100)])  # copies flow
    for got in await scrapes:
        labels |= got
    await written(client, proxy.control, sent + 100)
    labels |= await scrape(client, proxy)
    with SQLiteStore(proxy.store, create=False) as store:
        routes = set(store.routes("test"))
    assert len(labels - {"other"}) <= 2 * 20  # LABELS_PER_ROUTE x routes.max, for good
    assert labels - {"other"} <= routes  # no series left behind by a merged route
    await proxy.stop()


async def test_a_non_utf8_path_byte_never_breaks_metrics(
    start_proxy, primary: Backend, shadow: Backend, client
) -> None:
    proxy = await start_proxy(f"--primary={primary.url}", f"--shadow={shadow.url}", "--sample=1")
    await flow(client, proxy.url, ["/before"])
    await written(client, proxy.control, 1)
    assert await scrape(client, proxy) == {"GET /before"}
    status, _ = await raw(proxy.port, get_request(b"/caf\xff", b"x"))
    assert status == 400  # the primary's own answer to it, passed on
    await flow(client, proxy.url, ["/after"])
    await written(client, proxy.control, 3)
    assert await scrape(client, proxy) == {"GET /before", "GET /caf\\udcff", "GET /after"}
    assert await scrape(client, proxy)  # and on every later scrape
    await proxy.stop()


async def test_a_big_scrape_does_not_hold_up_the_control_server(
    start_proxy, primary: Backend, shadow: Backend, client, tmp_path: Path
) -> None:
    routes = "max: 1500, collapse_after: 2000"
    proxy = await mirroring_all(start_proxy, primary, shadow, tmp_path, routes)
    paths = [f"/p{i}" for i in range(1500)]
    await flow(client, proxy.url, paths)
    await written(client, proxy.control, len(paths))
    started = time.monotonic()
    big = asyncio.ensure_future(exposition(client, proxy))  # parsed afterwards, not meanwhile
    waits: list[float] = []
    while not big.done():
        sent = time.monotonic()
        async with client.get(proxy.control + "/healthz") as r:
            await r.read()
        waits.append(time.monotonic() - sent)
    took = time.monotonic() - started
    assert len(route_labels(await big)) == 1500
    # on the loop, the render held every other request until it was done
    assert len(waits) >= 3 and max(waits) < took / 2, (len(waits), max(waits), took)
    await proxy.stop()


async def test_rebinding_host_names_are_refused(
    start_proxy, primary: Backend, shadow: Backend
) -> None:
    proxy = await start_proxy(f"--primary={primary.url}", f"--shadow={shadow.url}")
    hosts = {
        b"127.0.0.1.evil.example": 403,  # a rebinding name that starts with 127.
        b"127.attacker.example": 403,
        b"127.0.0.1.": 403,
        b"[::ffff:127.0.0.1]": 403,
        b"[evil": 403,
        b"evil.example": 403,
        b"localhost": 200,
        b"LocalHost": 200,
        b"127.0.0.1": 200,
        b"127.0.0.2": 200,
        b"[::1]": 200,
    }
    for host, expected in hosts.items():
        named = host + f":{proxy.control_port}".encode()
        origin = b"Origin: http://" + named
        pause = get_request(b"/mirror/pause", named, origin, b"Content-Length: 0")
        status, _ = await raw(proxy.control_port, b"POST" + pause.removeprefix(b"GET"))
        assert status == expected, host
        status, _ = await raw(proxy.control_port, get_request(b"/api/divergences", named))
        assert status == expected, host
    await proxy.stop()


async def test_made_up_routes_answer_404_at_once(
    start_proxy, primary: Backend, shadow: Backend, client
) -> None:
    proxy = await start_proxy(f"--primary={primary.url}", f"--shadow={shadow.url}", "--sample=1")
    await flow(client, proxy.url, [f"/users/{i}" for i in range(5)])
    await written(client, proxy.control, 5)

    async def verdict(route: str, endpoint: str = "/verdict") -> tuple[int, dict[str, object]]:
        async with client.get(proxy.control + endpoint, params={"route": route}) as r:
            return r.status, await r.json()

    started = time.monotonic()
    answers = await asyncio.gather(*(verdict(f"GET /r{i}") for i in range(20)))
    assert time.monotonic() - started < 5.0
    assert {status for status, _ in answers} == {404}
    assert answers[0][1]["verdict"] == "INCONCLUSIVE" and "no route" in str(answers[0][1])
    status, doc = await verdict("GET /users/{id}")
    assert status == 200 and doc["routes"][0]["pairs"] == 5  # type: ignore[index]
    assert (await verdict("GET /nothing", "/gate"))[0] == 412  # a gate never passes on it
    await proxy.stop()


async def test_the_dial_takes_numbers_and_the_bearer_scheme_any_case(
    start_proxy, primary: Backend, shadow: Backend, client, monkeypatch
) -> None:
    monkeypatch.setenv("SHADOWDIFF_TOKEN", "s3cret")
    proxy = await start_proxy(f"--primary={primary.url}", f"--shadow={shadow.url}")
    url = proxy.control + "/mirror/sample-rate"
    for scheme in ("Bearer", "bearer", "BEARER"):
        auth = {"Authorization": f"{scheme} s3cret"}
        for body in ("true", "false", '{"rate": true}', '"0.5"'):
            async with client.put(url, data=body, headers=auth) as r:
                assert r.status == 400, body
        async with client.put(url, data="0.25", headers=auth) as r:
            assert r.status == 200 and (await r.json())["rate"] == 0.25
    for wrong in ("bearer s3cre", "Basic s3cret", "bearers3cret", "s3cret"):
        async with client.put(url, data="0.5", headers={"Authorization": wrong}) as r:
            assert r.status == 401, wrong
    await proxy.stop()
