"""The live verdict of a worker: cached and narrowed per route, unknown routes refused at
once, pending judgements bounded (its incidents: test_incidents.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import factories
import pytest
from factories import outcome, snapshot
from helpers import alerting_config as config

from shadowdiff.config import Config
from shadowdiff.faces.alerts import Alerter
from shadowdiff.faces.verdict import MAX_PENDING, Busy, LiveVerdict, UnknownRoute
from shadowdiff.model import Exchange
from shadowdiff.store import SQLiteStore
from shadowdiff.worker.recorder import Recorder


async def verdict_for(cfg: Config) -> tuple[LiveVerdict, None, Alerter]:
    alerter = Alerter(cfg.alerts, cfg.run, Counter())
    await alerter.start()
    return LiveVerdict(cfg, alerter), None, alerter


def exchange(i: int, by: str) -> Exchange:
    return factories.exchange(
        snapshot(f"f{i}", path=f"/users/{i}"), outcome({"by": "p"}), outcome({"by": by})
    )


async def test_live_verdict_is_cached_and_narrowed(receiver, tmp_path):
    cfg = config(receiver, tmp_path)
    with SQLiteStore(cfg.store) as store:
        Recorder(cfg, "i", store).record([exchange(i, "s") for i in range(8)], {})
    live, _, alerter = await verdict_for(cfg)
    first = await live.verdict()
    assert first["verdict"] == "FAIL" and first["routes"][0]["route"] == "GET /users/{id}"
    assert await live.verdict() is first  # within FRESH: the same judgement
    together = await asyncio.gather(live.verdict(), live.verdict())
    assert together[0] is together[1]
    narrowed = await live.verdict("GET /users/{id}")
    assert narrowed["verdict"] == "FAIL" and narrowed is not first
    with pytest.raises(UnknownRoute):
        await live.verdict("GET /other")
    rows = await live.divergences(5)
    assert len(rows) == 5 and rows[0][:3] == ("GET /users/{id}", "body:$.by", "changed")
    examples = await live.examples("GET /users/{id}", "body:$.by")
    assert 1 <= len(examples) <= 5 and '"s"' in examples[0]["shadow"]["body"]
    await alerter.close(1)
    await live.close()


def routed(i: int) -> Exchange:
    return factories.exchange(snapshot(f"f{i}", path=f"/r{i}"), outcome({"by": "p"}))


async def test_unknown_routes_are_refused_at_once_and_judgements_bounded(receiver, tmp_path):
    cfg = config(receiver, tmp_path)
    with SQLiteStore(cfg.store) as store:
        Recorder(cfg, "i", store).record([routed(i) for i in range(MAX_PENDING + 2)], {})
    live, _, alerter = await verdict_for(cfg)
    hold = threading.Event()
    busy = asyncio.get_running_loop().run_in_executor(live.executor, hold.wait)  # a long one
    started = time.monotonic()
    unknown = await asyncio.gather(
        *(live.verdict(f"GET /nope{i}") for i in range(20)), return_exceptions=True
    )
    assert all(isinstance(e, UnknownRoute) for e in unknown)
    assert time.monotonic() - started < 2.0  # no judgement waited for: the thread is held
    pending = [asyncio.ensure_future(live.verdict(f"GET /r{i}")) for i in range(MAX_PENDING)]
    shared = asyncio.ensure_future(live.verdict("GET /r0"))  # the same route: one judgement
    run = asyncio.ensure_future(live.verdict())  # the whole run always gets its turn
    await asyncio.sleep(0.05)
    with pytest.raises(Busy):
        await live.verdict(f"GET /r{MAX_PENDING}")
    assert len(live.judging) == MAX_PENDING + 1
    hold.set()
    await busy
    docs = await asyncio.gather(*pending, shared, run)
    assert docs[0] is docs[MAX_PENDING] and docs[-1]["verdict"] == "INCONCLUSIVE"
    assert (await live.verdict(f"GET /r{MAX_PENDING}"))["routes"][0]["pairs"] == 1
    await alerter.close(1)
    await live.close()
