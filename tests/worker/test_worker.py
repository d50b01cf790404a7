"""The worker on its own, fed records directly, against real services on loopback."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import orjson
import pytest
from aiohttp import web
from helpers import free_port, until

from conftest import LONG_LIST, Backend, serving
from shadowdiff.channel import Control, PrimaryResult, Setup, TapCounts
from shadowdiff.config import load_config
from shadowdiff.counts import imbalance
from shadowdiff.faces import Alerter
from shadowdiff.model import Outcome, RequestSnapshot
from shadowdiff.store import SQLiteStore
from shadowdiff.worker import worker as worker_module
from shadowdiff.worker.switch import Switch
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
    # the first two arrive (however slow the machine); the next two only once those are
    # answered, 0.2 s later
    await until(lambda: len(shadow.seen) >= 2, timeout=5)
    assert len(shadow.seen) == 2  # two in flight, two waiting, two dropped
    await until(lambda: len(shadow.seen) >= 4, timeout=5)
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


async def test_a_copy_that_cannot_be_built_is_dropped_outside_the_breaker(tmp_path, shadow):
    """Finding 9's second line: a copy aiohttp refuses to build is the client's fault. It is
    `dropped.unsendable`, never a shadow error, and gives back the half-open breaker's one
    probe, so the next copy still goes out and closes it."""
    worker = make_worker(
        tmp_path,
        shadow.url,
        **{"breaker.min_requests": 1, "breaker.cool_down": "10ms", "breaker.probes": 1},
    )
    assert worker.breakers["shadow"].record(False) == "open"
    await asyncio.sleep(0.05)  # cooled down: one probe may go
    bad = [(b"X-A", b"a\x01b")]
    for i in range(3):
        worker.on_record(RequestSnapshot(f"f{i}", "GET", f"/odd/{i}", bad, b"", 1.0))
        worker.on_record(primary(i))
        await asyncio.sleep(0.1)
    worker.on_record(snapshot(9))
    worker.on_record(primary(9))
    await asyncio.sleep(0.3)
    counts = await finish(worker, {"seen": 4, "sampled": 4})
    assert counts["dropped.unsendable"] == 3 and counts["recorded"] == 1, counts
    assert not [k for k, v in counts.items() if v and k.startswith("shadow_error")], counts
    assert worker.breakers["shadow"].state == "closed" and len(shadow.seen) == 1
    assert imbalance(counts) == []


async def test_a_worker_takes_over_the_books_of_one_that_died(tmp_path, shadow):
    """Finding 1: what a dead worker wrote stays, what it held is `dropped.worker_died`, and
    the books balance with every sample the tap handed to either."""
    dead = make_worker(tmp_path, shadow.url)
    dead.on_record(TapCounts("test:1", {"seen": 4, "sampled": 4}))
    for i in range(6):
        dead.on_record(snapshot(i))
    for i in range(3):
        dead.on_record(primary(i))
    await asyncio.sleep(0.3)
    await dead.flush()  # f0..f2 recorded and written, with tap counts already stale
    # it dies: f3 and f4 wait for their primary, f5 was handed but never read
    for task in dead.tasks:
        task.cancel()
    await dead.mirror.close()
    dead.store.close()
    # the tap: 7 seen, 6 handed to the dead worker, 1 dropped while none ran
    tap = {"seen": 7, "sampled": 7, "dropped.worker_down": 1}
    heir = Worker(Setup(dead.cfg, "test:1", generation=1, counts=tap), SQLiteStore(dead.cfg.store))
    assert await heir.take_over(tap)
    assert heir.counts["dropped.worker_died"] == 3
    heir.on_record(snapshot(10))
    heir.on_record(primary(10))
    await asyncio.sleep(0.3)
    heir.on_record(TapCounts("test:1", {**tap, "seen": 8, "sampled": 8}))
    final = await heir.shutdown()
    counts = heir.store.counts("w")
    heir.store.close()
    assert imbalance(counts) == [] and counts["recorded"] == 4, counts
    assert {k: v for k, v in counts.items() if v} == {k: v for k, v in final.counts.items() if v}
    assert not final.stale


async def test_a_store_that_refuses_writes_fails_health_and_the_end_says_so(
    tmp_path, shadow, monkeypatch
):
    """Finding 17: while writes fail `/healthz` fails (no grace in which a full disk reads
    "ok"), and the final books say exactly what could not be written."""
    monkeypatch.setattr(worker_module, "FINAL_WRITE", 0.5)
    worker = make_worker(tmp_path, shadow.url)
    db = worker.store.db  # SQLite's own limit: "database or disk is full", as on a full disk
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    tap = {"seen": 20, "sampled": 20}
    worker.on_record(TapCounts("test:1", tap))
    for i in range(20):
        worker.on_record(RequestSnapshot(f"f{i}", "GET", f"/p/{i}?{'x' * 3000}", [], b"", 1.0))
        worker.on_record(primary(i))
    await asyncio.sleep(0.5)
    await worker.flush()
    health = worker.health()
    assert health["status"] == "failing" and not health["store"]["ok"], health
    assert "full" in health["store"]["detail"] and health["store"]["unwritten"] == 20
    final = await worker.shutdown()
    worker.store.close()
    assert final.stale and final.unwritten == 20
    assert final.counts["dropped.store"] == 20 and final.counts["seen"] == 20
    assert imbalance(final.counts) == []


async def test_stopping_compares_what_it_holds_for_a_bounded_time_and_counts_the_rest(
    tmp_path, shadow: Backend
):
    """Soak: exchanges slow to compare (lists that differ at every index) pile up faster than
    they are compared; at the stop the worker compares for `analysis` seconds, counts the rest
    as dropped.shutdown and writes balanced books, long before the tap would kill it."""
    shadow.mode = "list"
    worker = make_worker(tmp_path, shadow.url)
    listed = Outcome(
        200, [(b"Content-Type", b"application/json")], orjson.dumps(list(range(LONG_LIST))), 0.01
    )
    n = 40  # about 4 s to compare them all
    for i in range(n):
        worker.on_record(snapshot(i))
        worker.on_record(PrimaryResult(f"f{i}", listed))
    while len(worker.batch) < n:
        await asyncio.sleep(0.05)
    started = time.monotonic()
    worker.on_record(TapCounts("test:1", {"seen": n, "sampled": n}))
    final = await worker.shutdown(analysis=0.5)
    took = time.monotonic() - started
    counts = worker.store.counts("w")
    worker.store.close()
    assert took < 2.5, took
    assert 0 < counts["recorded"] < n and counts["dropped.shutdown"] == n - counts["recorded"]
    assert counts["divergent"] == counts["recorded"]
    assert imbalance(counts) == [] and final.counts == counts


def live_worker(tmp_path, shadow_url: str, **options: object) -> Worker:
    """A worker as the proxy's composition root builds it: with a switch."""
    cfg = load_config(
        None, {"shadow": shadow_url, "store": str(tmp_path / "w.db"), "run": "w", **options}
    )
    worker = Worker(Setup(cfg, "test:1"), SQLiteStore(cfg.store))
    alerter = Alerter(cfg.alerts, cfg.run, Counter())
    worker.switch = Switch(cfg, Control(False, None), lambda _: None, alerter)
    return worker


async def feed(worker: Worker, *methods: str) -> dict[str, int]:
    for i, method in enumerate(methods):
        worker.on_record(RequestSnapshot(f"f{i}", method, f"/items/{i}", [], b"", 1.0))
        worker.on_record(primary(i))
    await asyncio.sleep(0.3)
    return await finish(worker, {"seen": len(methods), "sampled": len(methods)})


async def test_without_a_secondary_the_primary_gets_a_timed_copy_of_safe_requests(
    tmp_path, shadow: Backend
):
    """`latency.reference` primary (the default with `primary` and no secondary): a GET's copy
    goes to the primary too, marked as a copy; a POST's does not (it has no latency pair)."""
    live = await Backend("primary").start()
    worker = live_worker(tmp_path, shadow.url, primary=live.url)
    counts = await feed(worker, "GET", "POST")
    await live.stop()
    assert [(m, p) for m, p, _, _ in live.seen] == [("GET", "/items/0")]
    assert live.seen[0][2]["X-Shadowdiff"] == "shadow"
    assert len(shadow.seen) == 2 and counts["recorded"] == 2
    assert counts["latency_reference.primary"] == 1 and imbalance(counts) == []


@pytest.mark.parametrize("stagger", ["0", "150ms"])
async def test_the_copies_timed_against_the_primary_go_at_a_random_moment_after_its_answer(
    tmp_path, stagger: str
):
    """`latency.stagger`: the live answer is when its client sends the next request, so the
    copies wait up to `stagger` more, at random, and both sides of a pair still go together."""
    arrived: dict[str, dict[str, float]] = {"primary": {}, "shadow": {}}

    def side(name: str) -> Any:
        async def handle(request: web.Request) -> web.Response:
            arrived[name][request.path] = time.monotonic()
            return web.json_response({})

        return handle

    answered: dict[str, float] = {}
    async with serving(side("primary")) as live, serving(side("shadow")) as copy:
        worker = live_worker(tmp_path, copy, primary=live, **{"latency.stagger": stagger})
        for i in range(8):
            worker.on_record(RequestSnapshot(f"f{i}", "GET", f"/items/{i}", [], b"", 1.0))
            answered[f"/items/{i}"] = time.monotonic()
            worker.on_record(primary(i))
        await until(lambda: len(arrived["shadow"]) == len(arrived["primary"]) == 8, timeout=5)
        counts = await finish(worker, {"seen": 8, "sampled": 8})
    assert counts["recorded"] == 8 and imbalance(counts) == []
    waits = sorted(arrived["shadow"][path] - at for path, at in answered.items())
    if stagger == "0":
        assert waits[-1] < 0.1, waits
    else:
        assert waits[0] >= 0 and waits[-1] <= 0.15 + 0.5, waits
        assert waits[-1] - waits[0] > 0.03, waits  # 8 draws over 150 ms: never all this close
    apart = [abs(arrived["primary"][path] - at) for path, at in arrived["shadow"].items()]
    assert max(apart) < 0.02, apart  # a pair's copies go out together


async def test_a_shutdown_during_the_stagger_drops_the_exchange_once(tmp_path, shadow: Backend):
    live = await Backend("primary").start()
    options = {"latency.stagger": "1s", "mirror.grace": "100ms"}  # the grace ends first
    worker = live_worker(tmp_path, shadow.url, primary=live.url, **options)
    for i in range(5):
        worker.on_record(RequestSnapshot(f"f{i}", "GET", f"/items/{i}", [], b"", 1.0))
        worker.on_record(primary(i))
    await asyncio.sleep(0.05)  # every exchange has its live answer and waits out its stagger
    counts = await finish(worker, {"seen": 5, "sampled": 5})
    await live.stop()
    dropped, recorded = counts.get("dropped.shutdown", 0), counts.get("recorded", 0)
    assert dropped >= 1 and dropped + recorded == 5  # those whose stagger outlasted the grace
    assert len(live.seen) >= recorded and len(shadow.seen) >= recorded
    assert imbalance(counts) == [] and worker.outstanding == 0


async def test_a_replay_worker_leaves_the_primary_to_the_replayer(tmp_path, shadow: Backend):
    """A replay (no switch) calls the primary itself, on the copies' clock: no copy goes there."""
    live = await Backend("primary").start()
    cfg = load_config(
        None,
        {"shadow": shadow.url, "primary": live.url, "store": str(tmp_path / "w.db"), "run": "w"},
    )
    worker = Worker(Setup(cfg, "replay:1"), SQLiteStore(cfg.store))
    counts = await feed(worker, "GET", "GET")
    await live.stop()
    assert live.seen == [] and counts["latency_reference.primary"] == 2


async def test_a_failing_primary_copy_is_counted_and_trips_nothing(tmp_path, shadow: Backend):
    worker = live_worker(tmp_path, shadow.url, primary=f"http://127.0.0.1:{free_port()}")
    counts = await feed(worker, "GET", "GET", "GET")
    assert counts["recorded"] == 3 and counts["primary_error.connect"] == 3
    assert set(worker.breakers) == {"shadow"} and worker.breakers["shadow"].state == "closed"


async def test_with_a_secondary_it_is_the_reference(tmp_path, shadow: Backend):
    secondary = await Backend("secondary").start()
    # the primary's URL is the shadow's here: a copy sent there would show in shadow.seen
    worker = live_worker(tmp_path, shadow.url, secondary=secondary.url, primary=shadow.url)
    counts = await feed(worker, "GET")
    await secondary.stop()
    assert counts["latency_reference.secondary"] == 1 and len(shadow.seen) == 1
