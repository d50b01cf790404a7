"""Per-route aggregates, written in the same transaction as the rows: what the judge reads.

A run of millions of exchanges is judged from these, never from its rows. Per run, instance
and route: the counts by result, the errors of each side and the status matrix, added to on
every write (`ON CONFLICT ... DO UPDATE SET n = n + excluded.n`), so the instances of a fleet
and a worker that restarts under its proxy's instance add up exactly. Per run and route: a
uniform sample of at most SAMPLE latency pairs.

The sample is a bottom-k sample (Cohen & Kaplan, "Summarizing data using bottom-k sketches",
PODC 2007): every exchange draws a uniform priority and a route keeps the SAMPLE pairs of
lowest priority, a uniform random sample without replacement of all its pairs. The lowest
SAMPLE of a union is the bottom-k sample of the union, so instances writing one route, and
routes that merge when a segment collapses, combine exactly, in any order, without weights; a
write trims its routes above their cut, a read takes the lowest SAMPLE whatever a concurrent
writer left. Below SAMPLE pairs the sample is every pair: small runs are judged exactly as
from their rows.

The SQL runs on both backends (`?` placeholders; the PostgreSQL store translates them).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from shadowdiff.model import DIVERGENT, IGNORED, MATCHED, Exchange, Outcome, result_of
from shadowdiff.store.schema import like_prefix

SAMPLE = 20_000
"""Latency pairs kept per route: enough for the paired estimate's interval (its half-width
at 20,000 pairs is a few tenths of a per cent for millisecond services) and for the p99
bootstrap (200 pairs above the p99); a route's 20,000 take 1.3 MB on disk."""

RESULTS = (MATCHED, IGNORED, DIVERGENT)
STATS = ("exchanges", "with_secondary", *RESULTS, "primary_errors", "shadow_errors")
"""The additive counters of `route_stats`, in its column order after run, instance, route."""

_ADD = ", ".join(f"{c} = route_stats.{c} + excluded.{c}" for c in STATS)
STATS_UPSERT = (
    f"INSERT INTO route_stats (run, instance, route, {', '.join(STATS)})"
    f" VALUES (?, ?, ?, {', '.join('?' * len(STATS))})"
    f" ON CONFLICT (run, instance, route) DO UPDATE SET {_ADD}"
)
STATUS_UPSERT = (
    "INSERT INTO route_statuses (run, instance, route, primary_side, shadow_side, count)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run, instance, route, primary_side, shadow_side)"
    " DO UPDATE SET count = route_statuses.count + excluded.count"
)
_SAMPLED = "run, route, priority, ts, primary_latency, shadow_latency, secondary_latency"
SAMPLE_INSERT = f"INSERT INTO latency_sample ({_SAMPLED}) VALUES (?, ?, ?, ?, ?, ?, ?)"
_CUT = (
    "SELECT priority FROM latency_sample WHERE run = ? AND route = ?"
    " ORDER BY priority LIMIT 1 OFFSET ?"
)
_TRIM = "DELETE FROM latency_sample WHERE run = ? AND route = ? AND priority > ?"
_UNDER = "run = ? AND (route = ? OR route LIKE ? ESCAPE '\\')"

_SIDE = "COALESCE({s}_error, CAST({s}_status AS TEXT), 'None')"
_FAILED = "COUNT(*) FILTER (WHERE {s}_error IS NOT NULL OR {s}_status >= 500)"
_LATENCY = "CASE WHEN {s}_error IS NULL THEN {s}_latency END"
MIGRATE = (
    f"INSERT INTO route_stats (run, instance, route, {', '.join(STATS)})"
    " SELECT run, instance, route, COUNT(*), COUNT(secondary_result),"
    + "".join(f" COUNT(*) FILTER (WHERE shadow_result = '{r}')," for r in RESULTS)
    + f" {_FAILED.format(s='primary')}, {_FAILED.format(s='shadow')}"
    " FROM exchanges GROUP BY run, instance, route",
    "INSERT INTO route_statuses (run, instance, route, primary_side, shadow_side, count)"
    " SELECT run, instance, route,"
    f" {_SIDE.format(s='primary')}, {_SIDE.format(s='shadow')}, COUNT(*)"
    " FROM exchanges GROUP BY 1, 2, 3, 4, 5",
    f"INSERT INTO latency_sample ({_SAMPLED}) SELECT run, route, {{random}}, ts, "
    + ", ".join(_LATENCY.format(s=s) for s in ("primary", "shadow", "secondary"))
    + " FROM exchanges",
)
"""What migrating a store of version 2 or 3 computes from its exchanges, in order; `{random}`
is the backend's uniform random number in [0, 1) (the sample is trimmed on later writes and
read bottom-k in any case)."""


class Cursor(Protocol):
    """A backend's statements inside its write transaction."""

    def rows(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]: ...

    def run(self, sql: str, args: Sequence[object] = ()) -> None: ...

    def many(self, sql: str, rows: Iterable[Sequence[object]]) -> None: ...


def _side(o: Outcome) -> str:
    """A side as the status matrix shows it: its status, or its error kind."""
    return o.error or str(o.status)


def _failed(o: Outcome) -> bool:
    return o.error is not None or (o.status is not None and o.status >= 500)


def _latency(o: Outcome | None) -> float | None:
    """A side's latency, None for an error outcome: a time to failure is no latency."""
    return None if o is None or o.error is not None else o.latency


class Aggregates:
    """The aggregates' writes of one backend; `key` prepares a route as it stores them. It
    remembers each route's cut (the SAMPLE-th lowest priority after its last trim), so once
    a route's sample is full only the rare pair that beats the cut is written at all."""

    def __init__(self, key: Callable[[str], str], rng: random.Random | None = None) -> None:
        self.key = key
        self.rng = rng or random.Random()
        self.cuts: dict[tuple[str, str], float] = {}

    def write(
        self,
        c: Cursor,
        run: str,
        instance: str,
        exchanges: list[Exchange],
        merges: Iterable[tuple[str, str]],
    ) -> None:
        """Applies the batch's route merges to the aggregates, then adds its exchanges."""
        for old, new in merges:
            self.merge(c, run, self.key(old), self.key(new))
        stats: dict[str, list[int]] = {}
        statuses: Counter[tuple[str, str, str]] = Counter()
        fresh: list[tuple[object, ...]] = []
        sampled: set[str] = set()
        for x in exchanges:
            route = self.key(x.route)
            counts = stats.setdefault(route, [0] * len(STATS))
            counts[0] += 1
            counts[1] += x.secondary is not None
            counts[2 + RESULTS.index(result_of(x.shadow_diffs))] += 1
            counts[5] += _failed(x.primary)
            counts[6] += _failed(x.shadow)
            statuses[(route, _side(x.primary), _side(x.shadow))] += 1
            priority = self.rng.random()
            if priority < self.cuts.get((run, route), math.inf):
                latencies = (_latency(x.primary), _latency(x.shadow), _latency(x.secondary))
                fresh.append((run, route, priority, x.request.timestamp, *latencies))
                sampled.add(route)
        c.many(STATS_UPSERT, [(run, instance, route, *n) for route, n in stats.items()])
        c.many(STATUS_UPSERT, [(run, instance, *k, n) for k, n in statuses.items()])
        c.many(SAMPLE_INSERT, fresh)
        for route in sampled:
            cut = c.rows(_CUT, (run, route, SAMPLE - 1))
            if cut:
                c.run(_TRIM, (run, route, cut[0][0]))
                self.cuts[(run, route)] = float(cut[0][0])

    def merge(self, c: Cursor, run: str, old: str, new: str) -> None:
        """Regroups the aggregates under route prefix `old` as `new`, adding up the counts of
        routes that become one; their samples just join (bottom-k of the union)."""
        under = (run, old, like_prefix(old))
        moved = c.rows(
            f"SELECT instance, shadowdiff_apply_merge(route, ?, ?),"
            f" {', '.join(f'SUM({s})' for s in STATS)} FROM route_stats WHERE {_UNDER}"
            " GROUP BY 1, 2",
            (old, new, *under),
        )
        statuses = c.rows(
            "SELECT instance, shadowdiff_apply_merge(route, ?, ?), primary_side, shadow_side,"
            f" SUM(count) FROM route_statuses WHERE {_UNDER} GROUP BY 1, 2, 3, 4",
            (old, new, *under),
        )
        c.run(f"DELETE FROM route_stats WHERE {_UNDER}", under)
        c.run(f"DELETE FROM route_statuses WHERE {_UNDER}", under)
        c.many(STATS_UPSERT, [(run, *row) for row in moved])
        c.many(STATUS_UPSERT, [(run, *row) for row in statuses])
        c.run(
            f"UPDATE latency_sample SET route = shadowdiff_apply_merge(route, ?, ?) WHERE {_UNDER}",
            (old, new, *under),
        )
        self.cuts.clear()  # the merged routes' samples are trimmed on their next write
