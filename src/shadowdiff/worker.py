"""The worker process: everything that waits on the network or costs CPU, off the live path.

It reads snapshots from the tap, sends each copy to the shadow (and secondary) at once,
concurrently with the primary, joins the primary's result when it arrives, and records the
exchange in batches through the recorder (which compares and writes in the store thread).
Started by the tap as `python -m shadowdiff.worker --fd N`; it stops when
the tap closes the channel (or on SIGTERM), giving in-flight copies a short grace period.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from shadowdiff import control
from shadowdiff.alerts import Alerter
from shadowdiff.breaker import CircuitBreaker
from shadowdiff.channel import Reader
from shadowdiff.config import ConfigError, access_token, loopback
from shadowdiff.counts import summary_line
from shadowdiff.exchange import (
    Exchange,
    Outcome,
    PrimaryResult,
    RequestSnapshot,
    Setup,
    TapCounts,
)
from shadowdiff.live import Live
from shadowdiff.metrics import Gauges, Metrics
from shadowdiff.mirror import Mirror
from shadowdiff.recorder import Recorder
from shadowdiff.store import Store, StoreError, open_store

logger = logging.getLogger("shadowdiff.worker")

FINAL_WRITE = 5.0
"""Seconds a stopping worker keeps retrying a store that refuses its last batch."""

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
            for name, url in (("shadow", self.cfg.shadow), ("secondary", self.cfg.secondary))
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
        self.batch: list[Exchange] = []
        self.dirty = False
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self.recorder = Recorder(self.cfg, self.instance, store)
        self.live: Live | None = None  # the switch, auto-pause and alerts of a live worker

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
            self.dirty = True

    def on_request(self, request: RequestSnapshot) -> asyncio.Task[None] | None:
        """Starts the exchange; its task (None: dropped and counted)."""
        # max_in_flight copies go out at once and as many wait for a slot (a burst, a slow
        # shadow); beyond that, samples are dropped.
        if self.outstanding >= 2 * self.cfg.mirror.max_in_flight:
            self.drop("in_flight")
            return None
        if not all(breaker.ready() for breaker in self.breakers.values()):
            self.drop("circuit_open")
            return None
        for breaker in self.breakers.values():
            breaker.allow()
        future: asyncio.Future[PrimaryResult] = asyncio.get_running_loop().create_future()
        self.primaries[request.flow_id] = future
        self.outstanding += 1
        if self.live:
            self.live.on_backlog(self.outstanding - self.cfg.mirror.max_in_flight)
        task = asyncio.create_task(self.exchange(request, future))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def drop(self, reason: str) -> None:
        self.counts[f"dropped.{reason}"] += 1
        self.dirty = True

    # -- one exchange ----------------------------------------------------------------------

    async def exchange(
        self, request: RequestSnapshot, primary: asyncio.Future[PrimaryResult]
    ) -> None:
        try:
            outcomes = await self.copies(request)
        except asyncio.CancelledError:
            self.drop("shutdown")
            raise
        try:
            result = await asyncio.wait_for(primary, PRIMARY_WAIT)
        except TimeoutError:  # the tap could not hand the primary's result over
            self.primaries.pop(request.flow_id, None)
            self.drop("primary_lost")
            return
        except asyncio.CancelledError:  # shut down before the primary's result arrived
            self.drop("shutdown")
            return
        if result.skip:
            self.drop(result.skip)
            return
        self.batch.append(
            Exchange(
                request=request,
                primary=result.outcome,
                shadow=outcomes["shadow"],
                secondary=outcomes.get("secondary"),
                route="",  # the recorder routes it
            )
        )

    async def copies(self, request: RequestSnapshot) -> dict[str, Outcome]:
        """Waits for a slot under the in-flight cap, then sends every copy at once."""
        try:
            async with self.slots:
                sent = [self.copy(name, url, request) for name, url in self.targets.items()]
                return dict(zip(self.targets, await asyncio.gather(*sent), strict=True))
        finally:
            self.outstanding -= 1

    async def copy(self, name: str, url: str, request: RequestSnapshot) -> Outcome:
        outcome = await self.mirror.send(url, request)
        if outcome.error:
            self.counts[f"{name}_error.{outcome.error}"] += 1
        changed = self.breakers[name].record(outcome.error is None)
        if changed:
            self.counts[f"breaker.{name}.{changed}"] += 1
            logger.warning("circuit breaker for %s is now %s", name, changed)
        if self.live:
            self.live.on_copy(name, outcome.error is None)
            if changed:
                self.live.on_breaker(name, changed)
        return outcome

    # -- writing ---------------------------------------------------------------------------

    async def flush(self) -> None:
        if not self.batch and not self.dirty and not (self.live and self.live.events):
            return
        batch, self.batch, self.dirty = self.batch, [], False
        counts = {"tap": dict(self.tap_counts), "worker": dict(self.counts)}
        events = self.live.take_events() if self.live else []
        await asyncio.get_running_loop().run_in_executor(
            self.executor, self.recorder.record, batch, counts, events
        )

    async def flusher(self, stop: asyncio.Event) -> None:
        last_log = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)
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

    def gauges(self) -> Gauges:
        assert self.live is not None
        return Gauges(
            sample_rate=self.live.rate,
            paused=self.live.control.paused,
            in_flight=self.outstanding,
            breakers={name: b.state for name, b in self.breakers.items()},
        )

    async def shutdown(self) -> None:
        """After the tap closed the channel: grace for copies in flight, cancel the rest, flush.

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
        deadline = time.monotonic() + FINAL_WRITE
        while True:  # the last batch, through a store outage if it ends soon enough
            self.dirty = True
            await self.flush()
            if not self.recorder.unwritten or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        if self.recorder.unwritten:
            logger.error(
                "the store refused the last writes: %d exchanges recorded but not written are lost",
                len(self.recorder.unwritten),
            )
        self.executor.shutdown()


async def serve(sock: socket.socket) -> int:
    reader = await Reader.open(sock)
    setup = await reader.read()
    if not isinstance(setup, Setup):
        logger.error("the tap sent no setup record; stopping")
        return 2
    # SIGTERM usually reaches the whole process group: the tap then closes the channel after
    # its last records. Only if it does not, stop reading on our own after the grace period.
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGTERM,
        lambda: asyncio.get_running_loop().call_later(
            setup.config.mirror.grace + 5.0, reader.writer.close
        ),
    )
    logging.getLogger().setLevel(setup.config.log_level.upper())
    cfg = setup.config
    try:
        store = open_store(cfg.store)
    except StoreError as e:
        logger.error("cannot open the store: %s", e)
        return 2
    worker = Worker(setup, store)
    alerter = Alerter(cfg.alerts, cfg.run, worker.counts)
    live = worker.live = Live(cfg, setup.control, reader.send, alerter)
    metrics = Metrics(cfg.run, worker.merged, worker.gauges)
    worker.recorder.on_written = metrics.observe
    try:
        server = await _control_server(worker, live, metrics)
    except (ConfigError, OSError) as e:
        logger.error("control server cannot start on %s: %s", cfg.control.listen, e)
        await worker.mirror.close()
        store.close()
        return 2
    await alerter.start()
    stop = asyncio.Event()
    flusher = asyncio.create_task(worker.flusher(stop))
    watcher = asyncio.create_task(live.watch(stop))
    reader.greet()
    while (record := await reader.read()) is not None:
        worker.on_record(record)
    stop.set()
    await flusher
    await watcher
    if server:
        await server.cleanup()
    await asyncio.gather(worker.shutdown(), alerter.close(timeout=cfg.mirror.grace))
    await live.close()
    store.close()
    logger.info("%s (store %s)", summary_line(cfg.run, worker.merged()), store.path)
    return 0


async def _control_server(worker: Worker, live: Live, metrics: Metrics) -> web.AppRunner | None:
    listen = worker.cfg.control.listen
    if listen is None:
        return None
    token = access_token(worker.cfg.control)
    app = control.build(worker, live, metrics, token, loopback(listen.rpartition(":")[0]))
    runner = await control.serve(app, listen)
    logger.info("control server on http://%s (dashboard, /metrics, /verdict)", listen)
    return runner


def main() -> None:
    parser = argparse.ArgumentParser(description="shadowdiff worker (started by the tap)")
    parser.add_argument("--fd", type=int, required=True, help="the channel's socket descriptor")
    args = parser.parse_args()
    # Ctrl-C reaches the whole process group: the tap decides when the worker stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s", level=logging.INFO)
    # psycopg's pool logs every reconnect attempt during a database outage; the recorder
    # already says once per batch that it will retry.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    sock = socket.socket(fileno=args.fd)
    raise SystemExit(asyncio.run(serve(sock)))


if __name__ == "__main__":
    main()
