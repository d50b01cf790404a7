"""Per-route aggregates, written in the same transaction as the rows: what the judge reads.

A run of millions of exchanges is judged from these, never from its rows. Per run, instance
and route, added to on every write (`ON CONFLICT ... DO UPDATE SET n = n + excluded.n`), so
the instances of a fleet and a worker that restarts under its proxy's instance add up
exactly:

- `route_stats`: exchanges, with a secondary, matched / ignored / divergent, each side's errors;
- `route_statuses`: the status matrix (primary's status or error kind × the shadow's);
- `path_stats`: per side, path and kind, the exchanges that really diverge there (the noise
  test's r and n: an exchange counts once per path);
- `signatures`: the exchanges by the set of paths where the shadow really diverges, list
  indexes as `[*]` (so a list changed anywhere is one set): the divergent count once noise
  is known, without the exchanges' keys. A signature path is real when any path it names is;
  an exchange whose `[7]` is real and whose `[9]` is noise counts as divergent, the cautious
  side.

And per run and route a uniform sample of at most SAMPLE latency pairs, a bottom-k sample
(Cohen & Kaplan, "Summarizing data using bottom-k sketches", PODC 2007): every exchange draws
a uniform priority and a route keeps the SAMPLE pairs of lowest priority, a uniform random
sample without replacement of all its pairs. The lowest SAMPLE of a union is the bottom-k
sample of the union, so instances writing one route, and routes that merge when a segment
collapses, combine exactly, in any order, without weights; a write trims its routes above
their cut, a read takes the lowest SAMPLE whatever a concurrent writer left. Below SAMPLE
pairs the sample is every pair: small runs are judged exactly as from their rows.

The SQL runs on both backends (`?` placeholders; the PostgreSQL store translates them).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from shadowdiff.jsonpath import any_index
from shadowdiff.model import DIVERGENT, IGNORED, MATCHED, Divergence, Exchange, Outcome, result_of
from shadowdiff.store.schema import like_prefix

SAMPLE = 20_000
"""Latency pairs kept per route: enough for the paired estimate's interval (its half-width
at 20,000 pairs is a few tenths of a per cent for millisecond services) and for the p99
bootstrap (200 pairs above the p99); a route's 20,000 take about 1.3 MB on disk."""

RESULTS = (MATCHED, IGNORED, DIVERGENT)
STATS = ("exchanges", "with_secondary", *RESULTS, "primary_errors", "shadow_errors")
"""The additive counters of `route_stats`, in its column order after run, instance, route."""


@dataclass(frozen=True)
class Table:
    """An additive aggregate: its key columns after run and instance (route first), columns
    that follow from the key (a signature's paths from its digest), and the counters."""

    name: str
    keys: tuple[str, ...]
    extra: tuple[str, ...]
    counters: tuple[str, ...]

    @property
    def upsert(self) -> str:
        columns = ("run", "instance", *self.keys, *self.extra, *self.counters)
        added = ", ".join(f"{c} = {self.name}.{c} + excluded.{c}" for c in self.counters)
        return (
            f"INSERT INTO {self.name} ({', '.join(columns)})"
            f" VALUES ({', '.join('?' * len(columns))})"
            f" ON CONFLICT (run, instance, {', '.join(self.keys)}) DO UPDATE SET {added}"
        )


ROUTES = Table("route_stats", ("route",), (), STATS)
STATUSES = Table("route_statuses", ("route", "primary_side", "shadow_side"), (), ("count",))
PATHS = Table("path_stats", ("route", "side", "path", "kind"), (), ("count",))
SIGNATURES = Table("signatures", ("route", "digest"), ("paths",), ("count",))
TABLES = (ROUTES, STATUSES, PATHS, SIGNATURES)

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
_MIGRATE = (
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


def _real(diffs: list[Divergence]) -> dict[str, str]:
    """Path → kind of the divergences no rule neutralised, each path once (its first)."""
    out: dict[str, str] = {}
    for d in diffs:
        if d.rule is None:
            out.setdefault(d.path, d.kind)
    return out


def signature(paths: Iterable[str]) -> tuple[str, str]:
    """The digest (the key) and the text of a set of paths where an exchange diverges."""
    text = "\n".join(sorted({any_index(p) for p in paths}))
    return hashlib.sha256(text.encode("utf-8", "backslashreplace")).hexdigest()[:32], text


class Aggregates:
    """The aggregates' writes of one backend; `key` prepares a route or path as it stores
    them. It remembers each route's cut (the SAMPLE-th lowest priority after its last trim),
    so once a route's sample is full only the rare pair that beats the cut is written."""

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
        added: dict[Table, Counter[tuple[object, ...]]] = {t: Counter() for t in TABLES}
        stats: dict[str, list[int]] = {}
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
            added[STATUSES][(route, _side(x.primary), _side(x.shadow))] += 1
            for side, diffs in (("shadow", x.shadow_diffs), ("secondary", x.secondary_diffs)):
                real = _real(diffs)
                for path, kind in real.items():
                    added[PATHS][(route, side, self.key(path), kind)] += 1
                if side == "shadow" and real:
                    added[SIGNATURES][(route, *signature(map(self.key, real)))] += 1
            priority = self.rng.random()
            if priority < self.cuts.get((run, route), math.inf):
                latencies = (_latency(x.primary), _latency(x.shadow), _latency(x.secondary))
                fresh.append((run, route, priority, x.request.timestamp, *latencies))
                sampled.add(route)
        c.many(ROUTES.upsert, [(run, instance, route, *n) for route, n in stats.items()])
        for table in (STATUSES, PATHS, SIGNATURES):
            c.many(table.upsert, [(run, instance, *k, n) for k, n in added[table].items()])
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
        for table in TABLES:
            rest = (*table.keys[1:], *table.extra)
            columns = ", ".join(("instance", "shadowdiff_apply_merge(route, ?, ?)", *rest))
            sums = ", ".join(f"SUM({n})" for n in table.counters)
            groups = ", ".join(str(i + 1) for i in range(2 + len(rest)))
            moved = c.rows(
                f"SELECT {columns}, {sums} FROM {table.name} WHERE {_UNDER} GROUP BY {groups}",
                (old, new, *under),
            )
            c.run(f"DELETE FROM {table.name} WHERE {_UNDER}", under)
            c.many(table.upsert, [(run, *row) for row in moved])
        c.run(
            f"UPDATE latency_sample SET route = shadowdiff_apply_merge(route, ?, ?) WHERE {_UNDER}",
            (old, new, *under),
        )
        self.cuts.clear()  # the merged routes' samples are trimmed on their next write


def migrate(c: Cursor, random_sql: str) -> None:
    """Computes the aggregates of a store of version 2 or 3 from its rows: counts, statuses
    and the sample in SQL (`random_sql`: the backend's uniform number in [0, 1); the sample is
    trimmed on later writes and read bottom-k in any case), the paths and signatures from the
    divergences, an exchange at a time."""
    for statement in _MIGRATE:
        c.run(statement.format(random=random_sql))
    c.many(
        PATHS.upsert,
        c.rows(
            "SELECT run, instance, route, side, path, MIN(kind), COUNT(DISTINCT flow_id)"
            " FROM divergences WHERE rule IS NULL GROUP BY run, instance, route, side, path"
        ),
    )
    per_exchange: dict[tuple[str, str, str, str], set[str]] = {}
    for run, instance, flow, route, path in c.rows(
        "SELECT run, instance, flow_id, route, path FROM divergences"
        " WHERE side = 'shadow' AND rule IS NULL"
    ):
        per_exchange.setdefault((run, instance, route, flow), set()).add(path)
    found: Counter[tuple[str, str, str, str, str]] = Counter()
    for (run, instance, route, _), paths in per_exchange.items():
        found[(run, instance, route, *signature(paths))] += 1
    c.many(SIGNATURES.upsert, [(*k, n) for k, n in found.items()])
