"""Offline replay: recorded requests through the live pipeline, so both runs read the same.

The worker runs in this process and gets what the tap would give it: each sampled snapshot,
then the primary's result, from calling the primary (timed by the same client as the shadow)
or from the recording. Sampling rules apply as in a live run, but at rate 1 with no rate cap
unless asked (a recording already is a sample), and the tap's books are kept here, so
`summary` and `gate` read a replayed run like a live one.

Requests of one client connection start in recorded order; a request that may change state
(anything but GET, HEAD, OPTIONS, TRACE) waits for every earlier request of its connection to
finish, and the later ones wait for it. At most `concurrency` requests are in flight and at most
`rate` start per second: starts wait, nothing is dropped to keep either limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from shadowdiff.channel import PrimaryResult, Setup, TapCounts
from shadowdiff.client import Mirror
from shadowdiff.config import SHADOW_MARKER, Config, Sampling
from shadowdiff.counts import RECORDED_PRIMARY
from shadowdiff.live import Sampler
from shadowdiff.model import Outcome, RequestSnapshot
from shadowdiff.replay.flowfiles import Entry, Recording
from shadowdiff.store import open_store
from shadowdiff.worker import Worker

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
"""Methods that may overlap with others of their connection; any other one runs alone."""

WINDOW = 4
"""Entries set up ahead (waiting for their turn) per request in flight: bounds memory."""


@dataclass
class Lane:
    """One client connection: its last state-changing entry and the entries started since."""

    barrier: asyncio.Task[None] | None = None
    since: list[asyncio.Task[None]] = field(default_factory=list)


@dataclass
class Result:
    counts: dict[str, int]
    elapsed: float
    interrupted: bool


class Pacer:
    """At most `rate` starts a second, granted in call order."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next = 0.0

    async def wait(self) -> None:
        now = time.monotonic()
        at = max(now, self.next)
        self.next = at + self.interval
        if at > now:
            await asyncio.sleep(at - now)


def not_eligible(request: RequestSnapshot) -> str | None:
    """The tap's reasons never to mirror a request, for the ones a recording can hold."""
    names = {name.lower() for name, _ in request.headers}
    if request.method == "CONNECT":
        return "connect"
    if not request.path.startswith("/"):
        return "target"
    if SHADOW_MARKER[0].lower().encode() in names:
        return "loop"
    if b"upgrade" in names:
        return "upgrade"
    return None


class Replayer:
    """Feeds recorded entries to an in-process worker, as the tap feeds it live ones."""

    def __init__(
        self,
        worker: Worker,
        sampling: Sampling,
        primary: str | None,
        concurrency: int,
        rate: float | None,
    ) -> None:
        self.worker = worker
        self.cfg = worker.cfg
        self.sampler = Sampler(sampling)
        self.primary = primary
        self.to_primary = Mirror(self.cfg.mirror) if primary else None
        self.concurrency = concurrency
        self.slots = asyncio.Semaphore(concurrency)
        self.window = asyncio.Semaphore(concurrency * WINDOW)
        self.pacer = Pacer(rate) if rate else None
        self.counts: Counter[str] = Counter()  # the tap's books
        self.lanes: dict[str, Lane] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.running: set[asyncio.Task[None]] = set()  # tasks whose entry has started
        self.stopping = asyncio.Event()
        self.done = 0
        self.pairs = 0

    # -- scheduling ------------------------------------------------------------------------

    async def run(self, entries: list[Entry]) -> None:
        """Sets every entry up and waits for them all. A stop ends the setting up at once:
        entries still waiting for their turn never start, the ones in flight get the grace
        period, and what is left after it is cancelled (the worker counts those)."""
        dispatcher = asyncio.create_task(self.dispatch(entries))
        stopped = asyncio.create_task(self.stopping.wait())
        try:
            await asyncio.wait([dispatcher, stopped], return_when=asyncio.FIRST_COMPLETED)
            if not stopped.done():
                dispatcher.result()  # what went wrong, if anything did
            if self.tasks and not stopped.done():
                everything = asyncio.ensure_future(asyncio.wait(self.tasks))
                await asyncio.wait([everything, stopped], return_when=asyncio.FIRST_COMPLETED)
                everything.cancel()
        finally:
            dispatcher.cancel()
            stopped.cancel()
        for task in self.tasks - self.running:
            task.cancel()
        if self.running:
            await asyncio.wait(list(self.running), timeout=self.cfg.mirror.grace)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def dispatch(self, entries: list[Entry]) -> None:
        """Decides on each entry in recorded order and sets the sampled ones up in their lane."""
        for entry in entries:
            request = entry.request
            reason = not_eligible(request)
            bucket = f"not_eligible.{reason}" if reason else None
            if bucket is None:
                lookup = _lookup(request)
                reason = self.sampler.decide(request.method, request.path, lookup)
                bucket = f"not_sampled.{reason}" if reason else None
            if bucket is not None:  # decided at once; a sampled entry is counted as it starts
                self.tally("seen", bucket)
                self.done += 1
                continue
            await self.window.acquire()
            self.schedule(entry)

    def schedule(self, entry: Entry) -> None:
        lane = self.lanes.setdefault(entry.connection, Lane())
        ordered = entry.request.method not in SAFE_METHODS
        before = [lane.barrier] if lane.barrier else []
        after = (lane.since or before) if ordered else before
        task = asyncio.create_task(self.one(entry, [t for t in after if not t.done()]))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        if ordered:
            lane.barrier, lane.since = task, []
        else:
            if len(lane.since) >= self.concurrency:
                lane.since = [t for t in lane.since if not t.done()]
            lane.since.append(task)

    async def one(self, entry: Entry, after: list[asyncio.Task[None]]) -> None:
        try:
            if after:
                await asyncio.wait(after)
            async with self.slots:
                if self.pacer:
                    await self.pacer.wait()
                if self.stopping.is_set():  # stopped before it started: never seen
                    return
                task = asyncio.current_task()
                assert task is not None
                self.running.add(task)
                try:
                    await self.start(entry)
                finally:
                    self.running.discard(task)
        finally:
            self.window.release()
            self.done += 1

    # -- one entry, as the tap would hand it over ----------------------------------------

    def tally(self, *names: str) -> None:
        """Counts in the tap's books and hands them to the worker, as the tap does."""
        self.counts.update(names)
        self.worker.on_record(TapCounts(self.worker.instance, dict(self.counts)))

    async def start(self, entry: Entry) -> None:
        request = entry.request
        self.tally("seen", "sampled")
        if len(request.body) > self.cfg.mirror.max_body:
            self.tally("dropped.too_large")
            return
        exchange = self.worker.on_request(request)
        if exchange is None:  # dropped by the worker, and counted there
            return
        outcome, skip = await self.primary_side(entry)
        self.worker.on_record(PrimaryResult(request.flow_id, outcome, skip))
        await asyncio.wait([exchange])  # not `await`: stopping must not cancel the exchange
        self.pairs += 1

    async def primary_side(self, entry: Entry) -> tuple[Outcome, str | None]:
        """The primary's outcome: a call to the primary, or the recorded response."""
        if self.to_primary is not None and self.primary is not None:
            return await self.to_primary.send(self.primary, entry.request), None
        assert entry.response is not None  # the recording skipped entries without one
        self.worker.count(RECORDED_PRIMARY)
        too_large = len(entry.response.body) > self.cfg.mirror.max_body
        return entry.response, "too_large" if too_large else None

    # -- progress --------------------------------------------------------------------------

    async def tick(
        self, view: tuple[Progress, TaskID] | None, started: float, once: bool = False
    ) -> None:
        """Refreshes the progress bar a few times a second (no bar: nothing to do)."""
        if view is None:
            return
        progress, task = view
        while True:
            elapsed = max(time.monotonic() - started, 1e-9)
            progress.update(
                task,
                completed=self.done,
                rate=self.pairs / elapsed,
                divergent=self.worker.merged().get("divergent", 0),
                refresh=True,
            )
            if once:
                return
            await asyncio.sleep(0.25)


def _lookup(request: RequestSnapshot) -> Callable[[str], str | None]:
    """A request header's value by case-insensitive name, for the sticky sampling key."""

    def lookup(name: str) -> str | None:
        wanted = name.lower().encode("latin-1")
        return next((v.decode("latin-1") for n, v in request.headers if n.lower() == wanted), None)

    return lookup


@contextlib.contextmanager
def _progress(show: bool, total: int) -> Iterator[tuple[Progress, TaskID] | None]:
    """A progress bar on stderr (done / total, pairs/s, divergences, ETA), or none."""
    if not show:
        yield None
        return
    progress = Progress(
        TextColumn("replay"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>6.0f} pairs/s"),
        TextColumn("{task.fields[divergent]} divergent"),
        TimeRemainingColumn(),
        console=Console(file=sys.stderr),
        auto_refresh=False,
    )
    with progress:
        yield progress, progress.add_task("replay", total=total, rate=0.0, divergent=0)


async def replay(
    cfg: Config,
    recording: Recording,
    sampling: Sampling,
    primary: str | None,
    concurrency: int,
    rate: float | None = None,
    show_progress: bool = False,
) -> Result:
    """Replays the recording into the run `cfg.run` of the store `cfg.store`.

    `primary` None: the recorded responses stand in for the primary (their latencies are then
    not compared). `cfg.mirror.max_in_flight` must be at least `concurrency`, so the worker
    never drops a copy for want of a slot. SIGINT or SIGTERM stop the starts; what is in
    flight gets `mirror.grace`, and everything recorded is kept.
    """
    instance = f"replay:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    store = open_store(cfg.store)
    worker = Worker(Setup(config=cfg, instance=instance), store)
    worker.recorded_primary = primary is None
    for reason, n in recording.skipped.items():
        worker.count(f"skipped.{reason}", n)
    replayer = Replayer(worker, sampling, primary, concurrency, rate)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, replayer.stopping.set)
    stop = asyncio.Event()
    flusher = asyncio.create_task(worker.flusher(stop))
    started = time.monotonic()
    try:
        with _progress(show_progress, len(recording.entries)) as view:
            ticker = asyncio.create_task(replayer.tick(view, started))
            try:
                await replayer.run(recording.entries)
            finally:
                ticker.cancel()
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(signum)
                stop.set()
                await flusher
                # the last flush, all of it (no live stop waits on a replay): the bar's last
                # count is the store's
                await worker.shutdown(analysis=math.inf)
                if replayer.to_primary:
                    await replayer.to_primary.close()
            await replayer.tick(view, started, once=True)
    finally:
        store.close()
    return Result(worker.merged(), time.monotonic() - started, replayer.stopping.is_set())
