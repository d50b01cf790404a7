"""The worker on its own, fed records directly, against real services on loopback."""

from __future__ import annotations

import asyncio

from conftest import Backend
from shadowdiff.channel import PrimaryResult, Setup, TapCounts
from shadowdiff.config import load_config
from shadowdiff.counts import imbalance
from shadowdiff.model import Outcome, RequestSnapshot
from shadowdiff.store import SQLiteStore
from shadowdiff.worker.worker import Worker


def make_worker(tmp_path, shadow_url: str, secondary_url: str | None = None, **mirror) -> Worker:
    cfg = load_config(
        None,
        {
            "shadow": shadow_url,
            "secondary": secondary_url,
            "store": str(tmp_path / "w.db"),
            "run": "w",
            **{f"mirror.{k}": v for k, v in mirror.items()},
        },
    )
    return Worker(Setup(cfg, "test:1"), SQLiteStore(cfg.store))


def snapshot(i: int) -> RequestSnapshot:
    return RequestSnapshot(f"f{i}", "GET", f"/items/{i}", [(b"Accept", b"*/*")], b"", 1.0)


def primary(i: int, skip: str | None = None) -> PrimaryResult:
    return PrimaryResult(f"f{i}", Outcome(200, [], b"{}", 0.01), skip)


async def finish(worker: Worker, tap_counts: dict[str, int]) -> dict[str, int]:
    worker.on_record(TapCounts("test:1", tap_counts))
    await worker.shutdown()
    counts = worker.store.counts("w")
    worker.store.close()
    return counts


async def test_burst_waits_for_slots_then_overflow_is_dropped(tmp_path, shadow: Backend):
    shadow.delay = 0.2
    worker = make_worker(tmp_path, shadow.url, max_in_flight=2)
    for i in range(6):
        worker.on_record(snapshot(i))
    for i in range(6):
        worker.on_record(primary(i))
    await asyncio.sleep(0.1)
    assert len(shadow.seen) == 2  # two in flight, two waiting, two dropped
    await asyncio.sleep(0.3)
    assert len(shadow.seen) == 4
    counts = await finish(worker, {"seen": 6, "sampled": 6})
    assert counts["recorded"] == 4 and counts["dropped.in_flight"] == 2
    assert imbalance(counts) == []


async def test_secondary_gets_every_copy_too(tmp_path, shadow: Backend):
    secondary = await Backend("secondary").start()
    worker = make_worker(tmp_path, shadow.url, secondary.url)
    worker.on_record(snapshot(1))
    worker.on_record(primary(1))
    await asyncio.sleep(0.3)
    counts = await finish(worker, {"seen": 1, "sampled": 1})
    await secondary.stop()
    [x] = SQLiteStore(tmp_path / "w.db").exchanges("w")
    assert x.shadow.status == x.secondary.status == 200
    assert len(secondary.seen) == len(shadow.seen) == 1 and counts["recorded"] == 1


async def test_skipped_primary_and_missing_primary(tmp_path, shadow: Backend):
    worker = make_worker(tmp_path, shadow.url)
    for i in range(3):
        worker.on_record(snapshot(i))
    worker.on_record(primary(0))
    worker.on_record(primary(1, skip="streamed"))
    await asyncio.sleep(0.3)
    # f2's primary never comes: the worker, which owns it, counts it at shutdown
    counts = await finish(worker, {"seen": 3, "sampled": 3})
    assert counts["recorded"] == 1 and counts["dropped.streamed"] == 1
    assert counts["dropped.shutdown"] == 1
    assert imbalance(counts) == []


async def test_shutdown_grace_then_counted(tmp_path):
    hanging = await Backend("shadow", mode="hang").start()
    worker = make_worker(tmp_path, hanging.url, grace="200ms")
    worker.on_record(snapshot(1))
    worker.on_record(primary(1))
    await asyncio.sleep(0.1)
    counts = await finish(worker, {"seen": 1, "sampled": 1})
    await hanging.stop()
    assert counts["dropped.shutdown"] == 1 and imbalance(counts) == []
