"""A store outage costs bounded memory: what is held unwritten is bounded in bytes, not only in
exchanges, and every exchange let go is counted (`dropped.store`), so the books still balance."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import aiohttp
import factories
from aiohttp import web
from factories import snapshot

from conftest import serve_app
from shadowdiff.config import load_config
from shadowdiff.counts import imbalance
from shadowdiff.model import Exchange, Outcome
from shadowdiff.store import SQLiteStore
from shadowdiff.worker.recorder import Recorder, held_bytes

BODY = b"x" * (128 * 1024)
BINARY = [(b"Content-Type", b"application/octet-stream")]


def big(i: int) -> Exchange:
    """An exchange whose two responses carry 128 KiB each: about 260 KB held."""
    return factories.exchange(
        snapshot(f"f{i}", path=f"/x/{i}", timestamp=float(i)),
        Outcome(200, list(BINARY), BODY, 0.01),
        Outcome(200, list(BINARY), BODY, 0.01),
    )


def locked(path: str) -> sqlite3.Connection:
    """Another process's view: a connection that holds the store's write lock."""
    blocker = sqlite3.connect(path, timeout=0, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    return blocker


def test_an_outage_holds_at_most_max_unwritten_bytes(tmp_path):
    """The audit's worker grew by 0.45 MB per held 256 KB response, towards 22 GB for the
    50,000 exchanges it would hold (finding 10). Now it holds `max_unwritten` bytes at most:
    the oldest stay, to be written first, and the rest are dropped and counted."""
    cfg = load_config(
        None,
        {
            "shadow": "http://a:1",
            "store": str(tmp_path / "r.db"),
            "run": "r",
            "max_unwritten": "1MiB",
        },
    )
    rec = Recorder(cfg, "test:1", SQLiteStore(cfg.store))
    blocker = locked(cfg.store)
    rec.store.db.execute("PRAGMA busy_timeout = 0")  # fail at once, not after 10 s
    for i in range(8):
        rec.record([big(i)], {})
        assert rec.last_error == "database is locked"
        assert rec.unwritten_bytes == sum(map(held_bytes, rec.unwritten)) <= 1024 * 1024
    held = [x.request.flow_id for x in rec.unwritten]
    assert held == ["f0", "f1", "f2"]  # 3 × 260 KB fit in 1 MiB, a fourth would not
    assert rec.books["dropped.store"] == 5
    assert not rec.admits(held_bytes(big(8)))  # the worker's loop may not queue one more
    blocker.rollback()
    blocker.close()
    rec.record([], {"tap": {"seen": 9, "sampled": 9}})
    counts = rec.store.counts("r")
    assert (counts["recorded"], counts["dropped.store"]) == (3, 6) and imbalance(counts) == []
    assert [x.request.flow_id for x in rec.store.exchanges("r")] == held
    assert rec.unwritten == [] and rec.unwritten_bytes == 0
    assert rec.admits(held_bytes(big(9)))


async def test_the_proxy_rides_out_a_locked_store_within_its_byte_budget(
    tmp_path, start_proxy, client
):
    """The real proxy, its worker and a store another process holds locked: 24 requests with
    256 KiB responses, 2 MiB of budget. The worker holds a handful, drops the rest as they
    come (`dropped.store`) instead of keeping them all, and the books balance."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=BODY * 2, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    services = [await serve_app(app) for _ in range(2)]
    config = tmp_path / "c.yaml"
    config.write_text("max_unwritten: 2MiB\n")
    try:
        proxy = await start_proxy(
            f"--primary={services[0][1]}",
            f"--shadow={services[1][1]}",
            "--sample=1",
            config=str(config),
        )
        await health(client, proxy.control, lambda h: True)  # the worker is up
        blocker = locked(str(proxy.store))
        for i in range(24):
            async with client.get(f"{proxy.url}/x/{i}") as r:
                assert r.status == 200 and len(await r.read()) == 2 * len(BODY)
        await health(client, proxy.control, lambda h: not h["store"]["ok"])
        blocker.rollback()
        blocker.close()
        out = await proxy.stop()
    finally:
        for runner, _ in services:
            await runner.cleanup()
    with SQLiteStore(proxy.store, create=False) as store:
        counts = store.counts(proxy.run)
    assert counts["sampled"] == 24 and imbalance(counts) == [], out
    assert counts["recorded"] <= 4 and counts["dropped.store"] >= 20, counts


async def health(client: aiohttp.ClientSession, control: str, wanted) -> dict:
    """`/healthz` once `wanted` holds of it (up to 30 s: a locked write waits 10 s)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            async with client.get(control + "/healthz") as r:
                body = await r.json()
            if wanted(body):
                return body
        except aiohttp.ClientError:
            pass
        assert time.monotonic() < deadline, "the worker never got there"
        await asyncio.sleep(0.2)
