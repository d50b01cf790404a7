"""From completed exchanges to stored records: route, compare, redact, keep examples, write.

Runs in the worker's store thread, so neither a comparison nor a slow disk holds up the copies
on the worker's event loop. What it counts (recorded, compared, matched, ignored, divergent,
dropped.store) it owns alone; the batch and those counters reach the store in one transaction.
A batch the store refused is kept (bounded) and written with the next one, never compared twice.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from shadowdiff import jsonpath
from shadowdiff.compare import OTHER, Comparer, Redactor, RouteTable
from shadowdiff.config import Config
from shadowdiff.counts import SERVED_PAIRS
from shadowdiff.model import (
    COUNTED,
    DIVERGENT,
    ROW,
    WHOLE,
    Event,
    Exchange,
    apply_merge,
    result_of,
)
from shadowdiff.store import Store, StoreUnavailable

logger = logging.getLogger("shadowdiff.recorder")

CHUNK = 2_000
"""Exchanges written in one transaction at most."""
MAX_UNWRITTEN = 50_000
"""Exchanges kept while the store refuses writes, however small; their bytes are bounded by
the `max_unwritten` option. Beyond either, the newest are dropped and counted."""
HELD_OVERHEAD = 1024
"""Bytes an unwritten exchange holds beyond the bytes `held_bytes` adds up: its records."""
PRUNE_EVERY = 10_000
"""Rows written between two prunes of a run capped by `storage.max_rows`."""
ITEM_OVERHEAD = 128
"""Bytes of the objects around one header pair or one divergence, beyond their text."""


def held_bytes(x: Exchange) -> int:
    """About what an unwritten exchange costs in memory: its bodies dominate, and a response
    of 256 KB held on both sides costs half a megabyte. Counts only what never changes once
    the exchange is analysed (a route merge renames `route`), so it can be taken back."""
    size = HELD_OVERHEAD + len(x.request.path) + len(x.request.body)
    headers = [x.request.headers]
    for outcome in (x.primary, x.shadow, x.secondary):
        if outcome is not None:
            size += len(outcome.body)
            headers.append(outcome.headers)
    size += sum(ITEM_OVERHEAD + len(n) + len(v) for listed in headers for n, v in listed)
    return size + sum(
        ITEM_OVERHEAD + len(d.path) + len(d.left) + len(d.right)
        for d in (*x.shadow_diffs, *x.secondary_diffs)
    )


MATCHED_EXAMPLES = "matched"
"""The examples "path" of a route's sample of exchanges that matched (or differed only where
rules say to ignore): kept whole, whatever
`storage.bodies` says, to show what a good answer looks like (`/api/examples?path=matched`)."""

EXAMPLE_PATHS = 20
"""Paths (list indexes as `[*]`) of one route that keep examples: the first to diverge. With
the routes' own cap this bounds the reservoirs, and the examples a report shows, whatever
paths the traffic makes up (random keys)."""


@dataclass(slots=True)
class Reservoir:
    """A uniform random sample of at most `size` items from a stream (Algorithm R)."""

    size: int
    seen: int = 0
    items: list[str] = field(default_factory=list)

    def offer(self, item: str, rng: random.Random) -> int | None:
        """Offers one item; returns the slot it took, or None when it was not kept."""
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
            return len(self.items) - 1
        slot = rng.randrange(self.seen)
        if slot < self.size:
            self.items[slot] = item
            return slot
        return None


class Recorder:
    """`on_written` sees every batch once it is committed (the live metrics observe it)."""

    def __init__(
        self,
        cfg: Config,
        instance: str,
        store: Store,
        on_written: Callable[[list[Exchange]], None] = lambda batch: None,
    ) -> None:
        self.cfg = cfg
        self.instance = instance
        self.store = store
        self.routes = RouteTable(cfg.routes)
        self.redactor = Redactor(cfg.redact)
        self.comparer = Comparer(cfg.compare, mask=self.redactor.json)
        self.reservoirs: dict[str, dict[str, Reservoir]] = {}
        """Route → path (indexes as `[*]`) → the examples kept of it."""
        self.rng = random.Random()
        self.books: Counter[str] = Counter()
        self.unwritten: list[Exchange] = []
        self.unwritten_bytes = 0  # held_bytes of `unwritten` and of the batch in analysis
        self.refused = 0  # by `admits`, on the worker's loop: it alone writes this
        self.refused_counted = 0  # of those, already in the books (the store thread's)
        self.merges: list[tuple[str, str]] = []
        self.examples: list[tuple[str, str, int, str]] = []
        self.events: list[Event] = []
        self.on_written = on_written
        self.last_write = time.monotonic()
        self.last_error: str | None = None
        self.unpruned = 0  # rows written since the last prune

    def record(
        self,
        batch: list[Exchange],
        counts: dict[str, dict[str, int]],
        events: list[Event] | None = None,
        until: float = math.inf,
    ) -> list[Exchange]:
        """Analyses a batch and writes it with everything still unwritten; never raises.
        Analysis stops at `until` (time.monotonic()): the exchanges it did not reach are
        given back, untouched by this call's books, so a slow comparison (huge lists, say)
        holds a flush, or the end of the worker, for at most its caller's budget plus the one
        comparison in progress then.

        Writes go in transactions of at most CHUNK exchanges, so the backlog of an outage is
        caught up in steps that each fit a statement's time limit."""
        refused = self.refused
        self.books["dropped.store"] += refused - self.refused_counted
        self.refused_counted = refused
        coming = sum(map(held_bytes, batch))
        self.unwritten_bytes += coming  # at once, for `admits`: the batch is held meanwhile
        analysed, left = self.analyse(batch, until)
        self.unwritten.extend(analysed)
        self.unwritten_bytes += sum(map(held_bytes, analysed)) - coming
        self.events.extend(events or ())
        while self._write_chunk(counts) and self.unwritten:
            pass
        return left

    def _write_chunk(self, counts: dict[str, dict[str, int]]) -> bool:
        """Writes the oldest CHUNK unwritten exchanges with the latest counters; whether the
        store took them (or refused them for good, dropped and counted)."""
        chunk = self.unwritten[:CHUNK]
        books = self.books.copy()
        books["recorded"] += len(chunk)  # true once this transaction commits
        try:
            self.store.write(
                self.cfg.run,
                self.instance,
                chunk,
                {**counts, "store": dict(books)},
                self.merges,
                self.examples,
                self.events,
            )
        except StoreUnavailable as e:  # a lock, a full disk, a vanished file, a database down
            logger.error("cannot write to store %s: %s; will retry", self.store.path, e)
            self.last_error = str(e)
            self._hold_within_bounds()
            return False
        except Exception:  # exchanges the store can never take must not block those after them
            logger.exception(
                "store %s refused a batch; %d exchanges dropped", self.store.path, len(chunk)
            )
            self.books["dropped.store"] += len(chunk)
            self._forget(len(chunk))
            # What rode along goes too, or it would poison every later batch.
            self.merges.clear()
            self.examples.clear()
            self.events.clear()
            return True
        self.books["recorded"] += len(chunk)
        self.last_write, self.last_error = time.monotonic(), None
        self._prune(sum(x.kept != COUNTED for x in chunk))
        self._forget(len(chunk))
        self.merges.clear()
        self.examples.clear()
        self.events.clear()
        try:
            self.on_written(chunk)
        except Exception:  # a face must never stop the recording
            logger.exception("observing a written batch failed")
        return True

    def _prune(self, rows: int) -> None:
        """Every PRUNE_EVERY rows written, holds the run to `storage.max_rows`; a prune that
        fails is logged and tried again after the next PRUNE_EVERY."""
        cap = self.cfg.storage.max_rows
        self.unpruned += rows
        if cap is None or self.unpruned < PRUNE_EVERY:
            return
        self.unpruned = 0
        try:
            self.store.prune(self.cfg.run, cap)
        except Exception as e:  # the rows stay; the recording goes on
            logger.error("cannot prune run %s to %d rows: %s", self.cfg.run, cap, e)

    def admits(self, queued: int) -> bool:
        """Whether the worker may queue one more exchange for the store thread, `queued`
        being the `held_bytes` of its next batch with that exchange. No once they and what
        is unwritten would pass `max_unwritten`: the exchange is dropped at once and counted
        as `dropped.store` with the next batch, so a store outage costs bounded memory
        whatever the bodies and the traffic. Called on the worker's loop, never blocks."""
        if self.unwritten_bytes + queued <= self.cfg.max_unwritten:
            return True
        self.refused += 1
        return False

    def _hold_within_bounds(self) -> None:
        """Drops the newest unwritten exchanges, counted as `dropped.store`, until at most
        MAX_UNWRITTEN of them hold at most `max_unwritten` bytes (as `admits` does for
        those that come later); the oldest are written first once the store returns."""
        held, kept = self.unwritten_bytes, len(self.unwritten)
        while kept and (kept > MAX_UNWRITTEN or held > self.cfg.max_unwritten):
            kept -= 1
            held -= held_bytes(self.unwritten[kept])
        lost = len(self.unwritten) - kept
        if lost:
            del self.unwritten[kept:]
            self.unwritten_bytes = held
            self.books["dropped.store"] += lost
            logger.warning(
                "store %s still refuses writes: dropped the %d newest unwritten exchanges,"
                " holding %d (%.1f MiB)",
                self.store.path,
                lost,
                kept,
                held / 2**20,
            )

    def _forget(self, n: int) -> None:
        """Lets go of the `n` oldest unwritten exchanges (written, or dropped and counted)."""
        self.unwritten_bytes -= sum(map(held_bytes, self.unwritten[:n]))
        del self.unwritten[:n]

    def analyse(
        self, batch: list[Exchange], until: float = math.inf
    ) -> tuple[list[Exchange], list[Exchange]]:
        """Routes, compares and redacts, until `until`; the analysed, and those not reached
        (routed already, so they keep up with later merges). An exchange the comparison
        chokes on is dropped and counted (`dropped.compare`), never allowed to stop the
        recording of the others."""
        for x in batch:
            if not x.route:
                x.route = self.routes.route(x.request.method, x.request.path)
        merges = self.routes.take_merges()
        for old, new in merges:
            for x in (*self.unwritten, *batch):
                x.route = apply_merge(x.route, old, new)
            self.reservoirs = {
                route: paths
                for route, paths in self.reservoirs.items()
                if apply_merge(route, old, new) == route
            }
        self.merges.extend(merges)
        analysed: list[Exchange] = []
        for i, x in enumerate(batch):
            if time.monotonic() > until:
                return analysed, batch[i:]
            try:
                self.compare(x)
            except Exception:
                logger.exception("cannot compare %s %s; dropped", x.request.method, x.route)
                self.books["dropped.compare"] += 1
                continue
            analysed.append(x)
            self.books["compared"] += 1
            if x.request.served:  # a release stage's own evidence
                self.books[SERVED_PAIRS] += 1
            self.books["route_overflow"] += x.route == OTHER
            self.books[result_of(x.shadow_diffs)] += 1
            x.kept = self.kept(x, example=self.keep_examples(x))
        return analysed, []

    def compare(self, x: Exchange) -> None:
        x.shadow_diffs = self.comparer.compare(x.primary, x.shadow, x.route)
        if x.secondary is not None:
            x.secondary_diffs = self.comparer.compare(x.primary, x.secondary, x.route, "secondary")
        self.redactor.exchange(x)

    def kept(self, x: Exchange, example: bool) -> str:
        """What the store keeps of the exchange (`storage.bodies`): an example whole; one
        where the shadow really diverged whole or as a row (its divergences' values are what
        `suggest-ignores` and the dashboard show); any other in the aggregates alone."""
        bodies = self.cfg.storage.bodies
        if example or bodies == "all":
            return WHOLE
        if result_of(x.shadow_diffs) != DIVERGENT:
            return COUNTED
        return WHOLE if bodies == "divergent" else ROW

    def keep_examples(self, x: Exchange) -> bool:
        """Offers the exchange as an example of each path where it really diverged (list
        indexes as `[*]`), on the route's first EXAMPLE_PATHS such paths, or of the route's
        matched exchanges; whether it took a slot."""
        if not self.cfg.compare.examples:
            return False
        paths = self.reservoirs.setdefault(x.route, {})
        if result_of(x.shadow_diffs) != DIVERGENT:  # matched, or different only where ignored
            wanted = [MATCHED_EXAMPLES]
        else:
            wanted = sorted({jsonpath.any_index(d.path) for d in x.shadow_diffs if d.rule is None})
        took = False
        for path in wanted:
            reservoir = paths.get(path)
            if reservoir is None:
                full = len(paths.keys() - {MATCHED_EXAMPLES}) >= EXAMPLE_PATHS
                if full and path != MATCHED_EXAMPLES:
                    continue
                reservoir = paths[path] = Reservoir(self.cfg.compare.examples)
            slot = reservoir.offer(x.request.flow_id, self.rng)
            if slot is not None:
                self.examples.append((x.route, path, slot, x.request.flow_id))
                took = True
        return took
