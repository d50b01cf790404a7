"""Per-route aggregates, written in the same transaction as the rows: what the judge reads.

A run of millions of exchanges is judged from these, never from its rows. Per run, instance
and route, added to on every write (`ON CONFLICT ... DO UPDATE SET n = n + excluded.n`), so
the instances of a fleet and a worker that restarts under its proxy's instance add up
exactly:

- `route_stats`: exchanges, with a secondary, matched / ignored / divergent, each side's errors;
- `route_statuses`: the status matrix (primary's status or error kind × the shadow's);
- `path_stats`: per side, path and kind, the exchanges that really diverge there (the noise
  test's r and n: an exchange counts once per path);
- `signatures`: the exchanges by the set of paths where the shadow really diverges (at most
  MAX_DIVERGENCES + 1 of them, a JSON array): the divergent count once noise is known,
  exactly as from the rows, without the exchanges' keys.

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

import orjson

from shadowdiff.model import DIVERGENT, IGNORED, MATCHED, Divergence, Exchange, Outcome, result_of
from shadowdiff.store.schema import like_prefix

SAMPLE = 20_000
"""Latency pairs kept per route: enough for the paired estimate's interval (its half-width
at 20,000 pairs is a few tenths of a per cent for millisecond services) and for the p99
bootstrap (200 pairs above the p99); a route's 20,000 take about 1.3 MB on disk."""

RESULTS = (MATCHED, IGNORED, DIVERGENT)
STATS = ("exchanges", "with_secondary", *RESULTS, "primary_errors", "shadow_errors")
"""The additive counters of `route_stats`, in its column order after run, instance, route."""
_EXCHANGES, _SECONDARY, _PRIMARY_ERRORS, _SHADOW_ERRORS = (
    STATS.index(name) for name in ("exchanges", "with_secondary", "primary_errors", "shadow_errors")
)


@dataclass(frozen=True)
class Table:
    """An additive aggregate: its key columns after run and instance (route first), columns
    that follow from the key (a signature's paths from its digest), and the counters."""

    name: str
    keys: tuple[str, ...]
    extra: tuple[str, ...]
    counters: tuple[str, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return ("run", "instance", *self.keys, *self.extra, *self.counters)

    @property
    def on_conflict(self) -> str:
        added = ", ".join(f"{c} = {self.name}.{c} + excluded.{c}" for c in self.counters)
        return f" ON CONFLICT (run, instance, {', '.join(self.keys)}) DO UPDATE SET {added}"

    @property
    def upsert(self) -> str:
        columns, marks = ", ".join(self.columns), ", ".join("?" * len(self.columns))
        return f"INSERT INTO {self.name} ({columns}) VALUES ({marks}){self.on_conflict}"

    def merged(self, under: str) -> str:
        """One statement that moves the rows `under` a route prefix to their merged route,
        adding up those that become one (PostgreSQL: a concurrent writer's row is either
        moved with the rest or written after, never lost between a read and a delete). Its
        parameters: those of `under`, then old and new."""
        rest = (*self.keys[1:], *self.extra)
        moved = ", ".join(("run", "instance", "route", *rest, *self.counters))
        picked = ", ".join(
            ("run", "instance", "shadowdiff_apply_merge(route, ?, ?)", *rest)
            + tuple(f"SUM({c})" for c in self.counters)
        )
        groups = ", ".join(str(i + 1) for i in range(3 + len(rest)))
        return (
            f"WITH moved AS (DELETE FROM {self.name} WHERE {under} RETURNING {moved})"
            f" INSERT INTO {self.name} ({', '.join(self.columns)})"
            f" SELECT {picked} FROM moved GROUP BY {groups}{self.on_conflict}"
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
_TRIM_ALL = (
    "DELETE FROM latency_sample WHERE rowid IN (SELECT rowid FROM (SELECT rowid,"
    " ROW_NUMBER() OVER (PARTITION BY run, route ORDER BY priority) AS k FROM latency_sample)"
    " AS ranked WHERE k > ?)"
)

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
    """The digest (the key) and the text (a JSON array, sorted) of the set of paths where an
    exchange diverges."""
    text = orjson.dumps(sorted(set(paths))).decode()
    return hashlib.sha256(text.encode()).hexdigest()[:32], text


class Aggregates:
    """The aggregates' writes of one backend; `key` prepares a route or path as it stores
    them. It remembers each route's cut (the SAMPLE-th lowest priority after its last trim),
    so once a route's sample is full only the rare pair that beats the cut is written."""

    def __init__(
        self, key: Callable[[str], str], one_statement: bool, rng: random.Random | None = None
    ) -> None:
        """`one_statement`: merges move rows in one statement (PostgreSQL, where other
        instances write at the same time); else in three (SQLite, one writer, no RETURNING
        in a WITH)."""
        self.key = key
        self.one_statement = one_statement
        self.rng = rng or random.Random()
        self.cuts: dict[tuple[str, str], float] = {}
        self.pending: dict[tuple[str, str], float | None] = {}
        """The cuts a write found, taken into `cuts` once it commits (`committed`)."""

    def committed(self) -> None:
        """The last write committed: its cuts hold (a route with none any more, a run deleted
        under a writer, has its cut dropped)."""
        for route, cut in self.pending.items():
            if cut is None:
                self.cuts.pop(route, None)
            else:
                self.cuts[route] = cut
        self.pending = {}

    def write(
        self,
        c: Cursor,
        run: str,
        instance: str,
        exchanges: list[Exchange],
        merges: Iterable[tuple[str, str]],
    ) -> None:
        """Applies the batch's route merges to the aggregates, then adds its exchanges; the
        backend calls `committed` once the transaction is."""
        self.pending = {}
        for old, new in merges:
            self.merge(c, run, self.key(old), self.key(new))
        added: dict[Table, Counter[tuple[object, ...]]] = {t: Counter() for t in TABLES}
        stats: dict[str, list[int]] = {}
        fresh: list[tuple[object, ...]] = []
        sampled: set[str] = set()
        for x in exchanges:
            route = self.key(x.route)
            counts = stats.setdefault(route, [0] * len(STATS))
            counts[_EXCHANGES] += 1
            counts[_SECONDARY] += x.secondary is not None
            counts[STATS.index(result_of(x.shadow_diffs))] += 1
            counts[_PRIMARY_ERRORS] += _failed(x.primary)
            counts[_SHADOW_ERRORS] += _failed(x.shadow)
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
        for route in sorted(sampled):  # in one order in every instance: no deadlock
            cut = c.rows(_CUT, (run, route, SAMPLE - 1))
            if cut:
                c.run(_TRIM, (run, route, cut[0][0]))
            self.pending[(run, route)] = float(cut[0][0]) if cut else None

    def merge(self, c: Cursor, run: str, old: str, new: str) -> None:
        """Regroups the aggregates under route prefix `old` as `new`, adding up the counts of
        routes that become one; their samples just join (bottom-k of the union)."""
        under = (run, old, like_prefix(old))
        for table in TABLES:
            if self.one_statement:
                c.run(table.merged(_UNDER), (*under, old, new))
                continue
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
    and the sample in SQL (`random_sql`: the backend's uniform number in [0, 1)), the sample
    trimmed to SAMPLE a route; the paths and signatures from the divergences, an exchange at
    a time as the write path counts them. Holds the store's real divergences in memory: a
    version 3 store was judged in memory whole, so it is small enough."""
    for statement in _MIGRATE:
        c.run(statement.format(random=random_sql))
    c.run(_TRIM_ALL, (SAMPLE,))
    first: dict[tuple[str, str, str, str, str], dict[str, str]] = {}
    for run, instance, flow, route, side, path, kind in c.rows(
        "SELECT run, instance, flow_id, route, side, path, kind FROM divergences"
        " WHERE rule IS NULL ORDER BY rowid"
    ):
        first.setdefault((run, instance, flow, route, side), {}).setdefault(path, kind)
    paths: Counter[tuple[str, ...]] = Counter()
    signatures: Counter[tuple[str, ...]] = Counter()
    for (run, instance, _, route, side), kinds in first.items():
        for path, kind in kinds.items():
            paths[(run, instance, route, side, path, kind)] += 1
        if side == "shadow":
            signatures[(run, instance, route, *signature(kinds))] += 1
    c.many(PATHS.upsert, [(*k, n) for k, n in paths.items()])
    c.many(SIGNATURES.upsert, [(*k, n) for k, n in signatures.items()])
