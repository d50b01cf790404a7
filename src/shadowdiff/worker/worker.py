"""The worker: everything that waits on the network or costs CPU, off the live path.

It takes snapshots from the tap, sends each copy to the shadow (and secondary) at once,
concurrently with the primary, joins the primary's result when it arrives, and records the
exchange in batches through the recorder (which compares and writes in the store thread).
It knows its own health; the faces that show it are wired in by `worker/__main__.py`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shadowdiff.channel import (
    FINAL_ANALYSIS,
    FINAL_WRITE,
    FLUSH_BUDGET,
    Final,
    PrimaryResult,
    Setup,
    TapCounts,
)
from shadowdiff.client import Mirror, Unsendable
from shadowdiff.counts import LATENCY_REFERENCE, WORKER_RESTARTS, summary_line, total
from shadowdiff.model import Exchange, Outcome, RequestSnapshot
from shadowdiff.pace import pause
from shadowdiff.store import Store, StoreError, StoreUnavailable
from shadowdiff.worker.breaker import CircuitBreaker
from shadowdiff.worker.mirror import plan, timed_by_copy
from shadowdiff.worker.recorder import Recorder, held_bytes
from shadowdiff.worker.switch import Switch

logger = logging.getLogger("shadowdiff.worker")

TAP_STALE = 5.0
"""Seconds without the tap's counters after which the proxy is reported unhealthy."""
TAKEOVER_WAIT = 30.0
"""Seconds a restarted worker waits for the store to take over the books of the one that
died; it reads no sample meanwhile (the channel's budget bounds what waits)."""

PRIMARY_WAIT = 60.0
"""How long a copy waits for the primary's result before it is let go and counted as
`primary_lost`: bounds the memory that results lost on the way (backlog) can hold."""


class Worker:
    def __init__(self, setup: Setup, store: Store) -> None:
        self.cfg = setup.config
        self.instance = setup.instance
        self.store = store
        self.mirror = Mirror(self.cfg.mirror)
        self.targets = {
            name: url
            for name, url in (("shadow", self.cfg.candidate()), ("secondary", self.cfg.secondary))
            if url
        }
        self.breakers = {name: CircuitBreaker(self.cfg.mirror.breaker) for name in self.targets}
        self.primaries: dict[str, asyncio.Future[PrimaryResult]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.slots = asyncio.Semaphore(self.cfg.mirror.max_in_flight)
        self.outstanding = 0
        self.counts: Counter[str] = Counter()
        self.tap_counts: dict[str, int] = {}
        self.tap_seen_at = time.monotonic()
        self.ending = False
        """The tap's last record said the proxy process ends (not a script reload)."""
        self.batch: list[Exchange] = []
        self.batch_bytes = 0  # held_bytes of the batch: the recorder's budget covers it
        self.dirty = False
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self.recorder = Recorder(self.cfg, self.instance, store)
        self.switch: Switch | None = None  # the kill switch and auto-pause of a live worker
        self.recorded_primary = False  # a replay against recorded responses: no baseline timed

    # -- records from the tap -------------------------------------------------------------

    def on_record(self, record: object) -> None:
        if isinstance(record, RequestSnapshot):
            self.on_request(record)
        elif isinstance(record, PrimaryResult):
            future = self.primaries.pop(record.flow_id, None)
            if future is not None and not future.done():
                future.set_result(record)
        elif isinstance(record, TapCounts):
            self.tap_counts = record.counts
            self.tap_seen_at = time.monotonic()
            self.ending = record.ending
            self.dirty = True

    def on_request(self, request: RequestSnapshot) -> asyncio.Task[None] | None:
        """Starts the exchange; its task (None: dropped and counted)."""
        # max_in_flight copies go out at once and as many wait for a slot (a burst, a slow
        # shadow); beyond that, samples are dropped.
        if self.outstanding >= 2 * self.cfg.mirror.max_in_flight:
            self.drop("in_flight")
            return None
        breakers = self._breakers(request)
        if not all(breaker.ready() for breaker in breakers):
            self.drop("circuit_open")
            return None
        for breaker in breakers:
            breaker.allow()
        future: asyncio.Future[PrimaryResult] = asyncio.get_running_loop().create_future()
        if not request.served:  # else the primary's side is its copy: no result follows
            self.primaries[request.flow_id] = future
        self.outstanding += 1
        if self.switch:
            self.switch.on_backlog(self.outstanding - self.cfg.mirror.max_in_flight)
        task = asyncio.create_task(self.exchange(request, future))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _breakers(self, request: RequestSnapshot) -> list[CircuitBreaker]:
        """The breakers of the targets the request's copies go to: the shadow gets no copy
        of a request the candidate failed (the primary served it)."""
        failed = request.candidate is not None and not request.served
        return [b for n, b in self.breakers.items() if not (failed and n == "shadow")]

    def drop(self, reason: str) -> None:
        self.count(f"dropped.{reason}")

    def count(self, name: str, n: int = 1) -> None:
        """Adds to one of the worker's own counters; the next flush writes it."""
        self.counts[name] += n
        self.dirty = True

    # -- one exchange ----------------------------------------------------------------------

    async def exchange(
        self, request: RequestSnapshot, primary: asyncio.Future[PrimaryResult]
    ) -> None:
        planned, reference = plan(self.cfg, self.targets, request, self.switch is not None)
        if self.recorded_primary:
            reference = None
        result: PrimaryResult | None = None
        stagger = 0.0
        # The primary's timed copy waits for the live answer: sent at once, it reaches the
        # primary with the live request itself and queues behind it there, while the shadow's
        # copy arrives alone: identical code would read as a faster shadow. Then the copies
        # wait a random moment more (`latency.stagger`).
        # Meanwhile it is not in flight (as an exchange waiting for that answer after its
        # copies is not), and gives its breakers' probe slots back if it never goes.
        if not request.served and "primary" in dict(planned):
            self.outstanding -= 1
            result = await self.answered(request, primary)
            if result is None:
                for breaker in self._breakers(request):
                    breaker.release()
                return
            self.outstanding += 1
            stagger = random.uniform(0.0, self.cfg.latency.stagger)
        try:
            outcomes = await self.copies(request, planned, reference, stagger)
        except asyncio.CancelledError:
            self.drop("shutdown")
            raise
        except Unsendable:
            self.primaries.pop(request.flow_id, None)
            self.drop("unsendable")
            return
        if request.served:
            result = PrimaryResult(request.flow_id, outcomes.pop("primary"))
        elif result is None and (result := await self.answered(request, primary)) is None:
            return
        asked = request.candidate
        if asked is None:
            shadow = outcomes["shadow"]
        elif request.served:  # what the client got, on its timed copy's clock (see `plan`)
            shadow = timed_by_copy(asked, outcomes["shadow"])
        else:  # the candidate's failure that the primary stood in for: no latency pair
            shadow = dataclasses.replace(asked, latency=None)
        x = Exchange(
            request=request,
            primary=timed_by_copy(result.outcome, outcomes.get("primary")),
            shadow=shadow,
            secondary=outcomes.get("secondary"),
            route="",  # the recorder routes it
        )
        size = held_bytes(x)
        if not self.recorder.admits(self.batch_bytes + size):
            self.dirty = True  # the recorder counts it (dropped.store) with the next batch
            return
        self.batch.append(x)
        self.batch_bytes += size

    async def answered(
        self, request: RequestSnapshot, primary: asyncio.Future[PrimaryResult]
    ) -> PrimaryResult | None:
        """The primary's result, or None when it never came or says to skip (counted)."""
        try:
            result = await asyncio.wait_for(primary, PRIMARY_WAIT)
        except TimeoutError:  # the tap could not hand the primary's result over
            self.primaries.pop(request.flow_id, None)
            self.drop("primary_lost")
            return None
        except asyncio.CancelledError:  # shut down before the primary's result arrived
            self.drop("shutdown")
            return None
        if result.skip:
            self.drop(result.skip)
            return None
        return result

    async def copies(
        self,
        request: RequestSnapshot,
        planned: list[tuple[str, str]],
        reference: str | None,
        stagger: float,
    ) -> dict[str, Outcome]:
        """Waits `stagger` seconds and for a slot under the in-flight cap, then sends every
        copy at once in the random order `plan` gave: the shadow's, the secondary's, and the
        primary's timed copy when that is the latency reference (only a live worker, the
        proxy's, has a switch; a replay calls the primary itself). Counts what timed the
        baseline."""
        try:
            if stagger:
                await asyncio.sleep(stagger)
            async with self.slots:
                sent = [self.copy(name, url, request) for name, url in planned]
                outcomes = await asyncio.gather(*sent)
        finally:
            self.outstanding -= 1
        if reference:
            self.count(f"{LATENCY_REFERENCE}.{reference}")
        return {name: outcome for (name, _), outcome in zip(planned, outcomes, strict=True)}

    async def copy(self, name: str, url: str, request: RequestSnapshot) -> Outcome:
        """One copy, fed to the target's breaker and error counts; one that could not be
        built is the client's fault: it gives its breaker slot back and raises `Unsendable`.
        The primary's timed copy has no breaker: the live traffic reaches the primary anyway."""
        breaker = self.breakers.get(name)
        try:
            outcome = await self.mirror.send(url, request)
        except Unsendable:
            if breaker:
                breaker.release()
            raise
        if outcome.error:
            self.counts[f"{name}_error.{outcome.error}"] += 1
        elif outcome.latency is None:  # the loop stalled while it was out: not timed
            self.counts[f"untimed.{name}"] += 1
        if breaker is None:
            return outcome
        changed = breaker.record(outcome.error is None)
        if changed:
            self.counts[f"breaker.{name}.{changed}"] += 1
            logger.warning("circuit breaker for %s is now %s", name, changed)
        if self.switch:
            self.switch.on_copy(name, outcome.error is None)
            if changed:
                self.switch.on_breaker(name, changed)
        return outcome

    # -- writing ---------------------------------------------------------------------------

    async def flush(self, budget: float = FLUSH_BUDGET) -> None:
        """Hands the batch to the recorder for at most `budget` seconds of analysis; what it
        did not reach stays at the head of the batch, for the next flush."""
        if not self.batch and not self.dirty and not (self.switch and self.switch.events):
            return
        batch, self.batch, self.batch_bytes, self.dirty = self.batch, [], 0, False
        counts = {"tap": dict(self.tap_counts), "worker": dict(self.counts)}
        events = self.switch.take_events() if self.switch else []
        left = await asyncio.get_running_loop().run_in_executor(
            self.executor,
            self.recorder.record,
            batch,
            counts,
            events,
            time.monotonic() + budget,
        )
        if left:
            self.batch[:0] = left
            self.batch_bytes += sum(map(held_bytes, left))
            self.dirty = True

    async def flusher(self, stop: asyncio.Event) -> None:
        last_log = time.monotonic()
        while not stop.is_set():
            if not self.batch:  # a batch left over from a busy flush goes on at once
                await pause(stop, 0.25)
            try:
                await self.flush()
            except Exception:  # the recorder never raises; this guards the guard
                logger.exception("flushing to the store failed")
            if time.monotonic() - last_log >= self.cfg.log_interval:
                last_log = time.monotonic()
                logger.info("%s", summary_line(self.cfg.run, self.merged()))

    def merged(self) -> dict[str, int]:
        """Every counter, as the store will hold them. The recorder's are copied at C level
        first: the store thread may be adding to them while a scrape reads."""
        merged = Counter(self.tap_counts)
        merged.update(self.counts)
        merged.update(dict(self.recorder.books))
        return dict(merged)

    def health(self) -> dict[str, Any]:
        """Proxy, worker and store status; `ok` only when all three are."""
        now = time.monotonic()
        tap_age = now - self.tap_seen_at
        recorder = self.recorder
        restarts = self.tap_counts.get(WORKER_RESTARTS, 0)
        parts = {
            "proxy": {
                "ok": tap_age < TAP_STALE,
                "detail": f"counters received {tap_age:.1f}s ago",
            },
            "worker": {
                "ok": True,
                "detail": f"{self.outstanding} copies in flight; breakers "
                + ", ".join(f"{n} {b.state}" for n, b in self.breakers.items())
                + f"; {restarts} restarts after a worker died",
                "restarts": restarts,
            },
            "store": {  # failing while writes fail: what is held is not written yet
                "ok": recorder.last_error is None,
                "detail": recorder.last_error or f"last write {now - recorder.last_write:.1f}s ago",
                "unwritten": len(recorder.unwritten),
            },
        }
        return {"status": "ok" if all(p["ok"] for p in parts.values()) else "failing", **parts}

    async def shutdown(self, analysis: float = FINAL_ANALYSIS) -> Final:
        """After the tap closed the channel: grace for copies in flight, cancel the rest,
        `analysis` seconds to compare what is held (the rest counted as `dropped.shutdown`),
        the last write; the final books, true even when the store refused the last writes.

        A primary result that has not arrived by now never will, so those exchanges are
        counted as dropped at shutdown at once rather than held for the grace period.
        """
        for future in self.primaries.values():
            future.cancel()
        self.primaries.clear()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=self.cfg.mirror.grace)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.mirror.close()
        await self.flush(analysis)
        if self.batch:  # not analysed in time: the books say so, rather than being cut short
            logger.warning(
                "stopping: %d exchanges not compared within %.0fs are dropped (shutdown)",
                len(self.batch),
                analysis,
            )
            self.count("dropped.shutdown", len(self.batch))
            self.batch, self.batch_bytes = [], 0
        deadline = time.monotonic() + FINAL_WRITE
        while True:  # the last write, through a store outage if it ends soon enough
            self.dirty = True
            await self.flush()
            if not self.recorder.unwritten or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        self.executor.shutdown()
        unwritten = len(self.recorder.unwritten)
        books = self.merged()
        stale = self.recorder.last_error is not None
        if unwritten:
            books["dropped.store"] = books.get("dropped.store", 0) + unwritten
        if stale:
            logger.error(
                "the store refused the last writes (%s): %d exchanges not written are lost "
                "(dropped.store) and its counts for %s are stale; the books: %s",
                self.recorder.last_error,
                unwritten,
                self.instance,
                summary_line(self.cfg.run, books),
            )
        return Final(books, unwritten, stale)

    async def take_over(self, tap: dict[str, int]) -> bool:
        """Takes over the books of this tap's workers that died: what they wrote becomes
        this worker's own, and the samples they were handed but never settled are counted
        as `dropped.worker_died`. `tap`: the tap's counters as it started this worker.
        Retried while the store refuses, up to TAKEOVER_WAIT; before it, nothing of this
        worker's may be written, which would overwrite theirs. Whether it succeeded."""
        self.on_record(TapCounts(self.instance, tap))
        deadline = time.monotonic() + TAKEOVER_WAIT
        loop = asyncio.get_running_loop()
        while True:
            try:
                theirs = await loop.run_in_executor(self.executor, self._adopt, tap)
                break
            except StoreError as e:  # unavailable: retried; refused for good: given up
                if not isinstance(e, StoreUnavailable) or time.monotonic() > deadline:
                    logger.error("cannot take over the books of the worker that died: %s", e)
                    return False
                await asyncio.sleep(1.0)
        self.counts.update(theirs)
        logger.warning(
            "took over the books of the worker that died: %d samples it held are lost "
            "(dropped.worker_died)",
            theirs.get("dropped.worker_died", 0),
        )
        return True

    def _adopt(self, tap: dict[str, int]) -> dict[str, int]:
        """In the store thread: the dead workers' own counters, moved under this worker's
        names (the store's rows of a source are replaced, never added to)."""
        run, instance, store = self.cfg.run, self.instance, self.store
        store.write(run, instance, [], {"tap": tap})  # the line between theirs and ours
        books = store.instance_counts(run).get(instance, {})
        theirs = {k: v - tap.get(k, 0) for k, v in books.items() if v != tap.get(k, 0)}
        lost = books.get("sampled", 0) - books.get("recorded", 0) - total(books, "dropped")
        if lost < 0:
            logger.error("the books of the workers that died settle %d samples too many", -lost)
        elif lost:
            theirs["dropped.worker_died"] = theirs.get("dropped.worker_died", 0) + lost
        store.write(run, instance, [], {"worker": theirs, "store": dict.fromkeys(theirs, 0)})
        return theirs
