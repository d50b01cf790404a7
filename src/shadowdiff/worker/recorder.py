"""From completed exchanges to stored records: route, compare, redact, keep examples, write.

Runs in the worker's store thread, so neither a comparison nor a slow disk holds up the copies
on the worker's event loop. What it counts (recorded, compared, matched, ignored, divergent,
dropped.store) it owns alone; the batch and those counters reach the store in one transaction.
A batch the store refused is kept (bounded) and written with the next one, never compared twice.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from shadowdiff.compare import OTHER, Comparer, Redactor, RouteTable
from shadowdiff.config import Config
from shadowdiff.model import Event, Exchange, apply_merge, result_of
from shadowdiff.store import Store, StoreUnavailable

logger = logging.getLogger("shadowdiff.recorder")

CHUNK = 2_000
"""Exchanges written in one transaction at most."""
MAX_UNWRITTEN = 50_000
"""Exchanges kept while the store refuses writes; beyond, the oldest are dropped and counted."""


@dataclass
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
        self.reservoirs: dict[tuple[str, str], Reservoir] = {}
        self.rng = random.Random()
        self.books: Counter[str] = Counter()
        self.unwritten: list[Exchange] = []
        self.merges: list[tuple[str, str]] = []
        self.examples: list[tuple[str, str, int, str]] = []
        self.events: list[Event] = []
        self.on_written = on_written
        self.last_write = time.monotonic()
        self.last_error: str | None = None

    def record(
        self,
        batch: list[Exchange],
        counts: dict[str, dict[str, int]],
        events: list[Event] | None = None,
    ) -> None:
        """Analyses a batch and writes it with everything still unwritten; never raises.

        Writes go in transactions of at most CHUNK exchanges, so the backlog of an outage is
        caught up in steps that each fit a statement's time limit."""
        self.unwritten.extend(self.analyse(batch))
        self.events.extend(events or ())
        while self._write_chunk(counts) and self.unwritten:
            pass

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
            lost = len(self.unwritten) - MAX_UNWRITTEN
            if lost > 0:
                del self.unwritten[:lost]
                self.books["dropped.store"] += lost
            return False
        except Exception:  # exchanges the store can never take must not block those after them
            logger.exception(
                "store %s refused a batch; %d exchanges dropped", self.store.path, len(chunk)
            )
            self.books["dropped.store"] += len(chunk)
            del self.unwritten[: len(chunk)]
            return True
        self.books["recorded"] += len(chunk)
        self.last_write, self.last_error = time.monotonic(), None
        del self.unwritten[: len(chunk)]
        self.merges.clear()
        self.examples.clear()
        self.events.clear()
        try:
            self.on_written(chunk)
        except Exception:  # a face must never stop the recording
            logger.exception("observing a written batch failed")
        return True

    def analyse(self, batch: list[Exchange]) -> list[Exchange]:
        """Routes, compares and redacts; an exchange the comparison chokes on is dropped and
        counted (`dropped.compare`), never allowed to stop the recording of the others."""
        for x in batch:
            x.route = self.routes.route(x.request.method, x.request.path)
        merges = self.routes.take_merges()
        for old, new in merges:
            for x in (*self.unwritten, *batch):
                x.route = apply_merge(x.route, old, new)
            self.reservoirs = {
                k: r for k, r in self.reservoirs.items() if apply_merge(k[0], old, new) == k[0]
            }
        self.merges.extend(merges)
        analysed = []
        for x in batch:
            try:
                self.compare(x)
            except Exception:
                logger.exception("cannot compare %s %s; dropped", x.request.method, x.route)
                self.books["dropped.compare"] += 1
                continue
            analysed.append(x)
            self.books["compared"] += 1
            self.books["route_overflow"] += x.route == OTHER
            self.books[result_of(x.shadow_diffs)] += 1
            self.keep_examples(x)
        return analysed

    def compare(self, x: Exchange) -> None:
        x.shadow_diffs = self.comparer.compare(x.primary, x.shadow, x.route)
        if x.secondary is not None:
            x.secondary_diffs = self.comparer.compare(x.primary, x.secondary, x.route, "secondary")
        self.redactor.exchange(x)

    def keep_examples(self, x: Exchange) -> None:
        """Offers the exchange as an example of each path where it really diverged."""
        if not self.cfg.compare.examples:
            return
        for path in sorted({d.path for d in x.shadow_diffs if d.rule is None}):
            key = (x.route, path)
            reservoir = self.reservoirs.get(key)
            if reservoir is None:
                reservoir = self.reservoirs[key] = Reservoir(self.cfg.compare.examples)
            slot = reservoir.offer(x.request.flow_id, self.rng)
            if slot is not None:
                self.examples.append((x.route, path, slot, x.request.flow_id))
