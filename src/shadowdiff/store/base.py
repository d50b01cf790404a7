"""The store's interface, and its reads written once for both backends.

`Store` is what every caller holds: a Protocol, as prometheus_client's `Collector`, which
`SQLiteStore` and `PostgresStore` satisfy by their shape (mypy checks it where `open_store`
returns either). `Backend` is what both inherit: every read query, once, in SQL that SQLite
(3.30 or later, for `FILTER`) and PostgreSQL both run, with `?` placeholders. A backend
supplies `_read()`, one read's access to its rows (in PostgreSQL one snapshot, so an exchange
and its divergences agree), `_write(batch)` and `close()`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, Self

from shadowdiff.model import Divergence, Event, Exchange, Incident, ReleaseState
from shadowdiff.store import aggregates
from shadowdiff.store.aggregates import STATS
from shadowdiff.store.schema import COLUMNS, TABLES, clean, exchange_of

SampleRow = tuple[str, float, float | None, float | None, float | None]
"""(route, when it was sampled, primary latency, shadow latency, secondary latency) of one
pair of a route's latency sample; a side's latency is None where it failed."""

PathRow = tuple[str, str, str, str, int]
"""(route, side, path, kind, exchanges that really diverge there with that kind)."""

SignatureRow = tuple[str, str, int]
"""(route, the paths where the shadow really diverges, one per line, list indexes as `[*]`,
exchanges that diverge at exactly those)."""

DivergenceRow = tuple[str, str, str, str, str, str | None, str, str]
"""(route, side, exchange key, path, kind, rule, left, right) of one divergence."""


class AggregateReads(Protocol):
    """What the judge reads: a run's aggregates (of one route, if given). A store has them;
    so does a window of the run (`judge.window`), as the difference of two readings."""

    def routes(self, run: str, route: str | None = None) -> dict[str, dict[str, int]]:
        """Per route (or of `route` alone), from the aggregates: exchanges, with a secondary,
        the shadow's matched / ignored / divergent counts (before noise is taken out), and
        the primary's and the shadow's errors (an error outcome or a 5xx)."""
        ...

    def statuses(self, run: str, route: str | None = None) -> dict[str, dict[tuple[str, str], int]]:
        """Per route (or of `route` alone): how many exchanges had each (primary, shadow)
        pair of status or error kind."""
        ...

    def latency_sample(self, run: str, route: str | None = None) -> Iterator[SampleRow]:
        """Per route (or of `route` alone): its uniform latency sample (`aggregates`), at most
        `aggregates.SAMPLE` pairs, by route and then in time order."""
        ...

    def path_counts(self, run: str, route: str | None = None) -> list[PathRow]:
        """Per route (or of `route` alone), side, path and kind: the exchanges that really
        diverge there, from the aggregates, ordered by route, side, path, kind."""
        ...

    def signatures(self, run: str, route: str | None = None) -> list[SignatureRow]:
        """Per route (or of `route` alone): the exchanges by the set of paths where the
        shadow really diverges, from the aggregates."""
        ...


class Store(AggregateReads, Protocol):
    """A store of exchanges and counters: open one with `open_store(target)`, close it with
    `close()` (or `with`). Writes come in batches from one thread of the worker; reads come
    from the faces (CLI, reports, the live verdict). Errors are `StoreError`, and
    `StoreUnavailable` for the transient ones (locked, busy, unreachable): never a driver's."""

    path: str
    """The store's target, fit to print (a URL's password masked)."""

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...

    def write(
        self,
        run: str,
        instance: str,
        exchanges: list[Exchange],
        counts: dict[str, dict[str, int]],
        merges: Iterable[tuple[str, str]] = (),
        examples: Iterable[tuple[str, str, int, str]] = (),
        events: Iterable[Event] = (),
    ) -> None:
        """Records a batch in one transaction: exchanges with their divergences, the latest
        cumulative counters, route merges (old prefix → new), example slots
        (route, path, slot, flow_id) pointing at exchanges of this instance, and events."""
        ...

    def runs(self) -> list[str]: ...

    def run_sizes(self) -> list[RunSize]:
        """Every run with what it holds and about how many bytes, oldest activity first."""
        ...

    def delete_run(self, run: str) -> None:
        """Removes every record of the run, in one transaction."""
        ...

    def prune(self, run: str, keep: int) -> None:
        """Deletes the run's oldest exchange rows beyond the newest `keep`, but for those an
        example slot points at, with their divergences; the aggregates stay as they are."""
        ...

    def counts(self, run: str) -> dict[str, int]:
        """Counters summed over instances and sources (tap and worker own disjoint names)."""
        ...

    def instance_counts(self, run: str) -> dict[str, dict[str, int]]:
        """Counters per instance (one proxy process, one tap object)."""
        ...

    def divergence_rows(self, run: str, route: str | None = None) -> Iterator[DivergenceRow]:
        """A `DivergenceRow` for every divergence kept in a row (of `route` alone, if
        given): the values behind `suggest-ignores`."""
        ...

    def events(self, run: str) -> list[Event]:
        """What operators (and the automatic kill switch) did during the run, oldest first."""
        ...

    def recent_divergences(self, run: str, limit: int) -> list[tuple[str, str, str, str, str]]:
        """(route, path, kind, primary's value, shadow's value) of the latest real divergences
        of the shadow, newest first."""
        ...

    def examples(self, run: str, route: str, path: str) -> list[Exchange]:
        """The sampled example exchanges kept for one (route, path)."""
        ...

    def exchanges(
        self, run: str, instance: str | None = None, flow_id: str | None = None
    ) -> Iterator[Exchange]:
        """The run's exchanges in recording order (or the one of `instance` and `flow_id`)."""
        ...

    def first_bad(self, run: str, route: str, since: float) -> float | None:
        """When the route's first exchange kept as a row that went wrong (divergent, a 5xx
        or an error of the shadow) was sampled, at `since` or later."""
        ...

    def open_incident(self, incident: Incident) -> Incident | None:
        """Records `incident` as the open one of its key, numbered after the last: None if
        one is open already (another proxy of the fleet opened it first)."""
        ...

    def update_incident(
        self, run: str, key: str, seq: int, field: str, at: float, by: str | None = None
    ) -> bool:
        """Sets a moment of an open incident (`alerted`, `acked`, `mitigated`, `resolved`)
        and who or why (`by`), if it is not set yet; whether this call set it."""
        ...

    def heartbeat(
        self, run: str, instance: str, at: float, stopped: tuple[float, str] | None
    ) -> None:
        """A proxy of the run says it is alive at `at`, and since when and why it has stopped
        mirroring (paused or dialled to 0), if it has."""
        ...

    def proxies(self, run: str, since: float) -> list[tuple[str, float | None, str | None]]:
        """(instance, stopped since, why) of the run's proxies heard from since `since`."""
        ...

    def gone(self, run: str, instance: str) -> None:
        """A proxy of the run stops: it is no longer one of its proxies."""
        ...

    def incidents(self, run: str, open_only: bool = False) -> list[Incident]:
        """The run's incidents (or only those still open), oldest first."""
        ...

    def release(self, run: str) -> ReleaseState | None:
        """Where the run's release is; None: it has not started."""
        ...

    def move_release(self, run: str, new: ReleaseState) -> bool:
        """Sets the run's release to `new` if it is still at the version `new` was decided
        on (`new.version`; 0: not started yet). Whether it did; the stored version is one more."""
        ...


class Rows(Protocol):
    """One read's access to a backend's rows; the SQL has `?` placeholders."""

    def all(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Every row of the query."""
        ...

    def stream(self, sql: str, args: Sequence[object] = ()) -> Iterator[tuple[Any, ...]]:
        """The query's rows as they come: a long run never sits in memory whole."""
        ...


@dataclass(frozen=True, slots=True)
class RunSize:
    """What one run holds (`shadowdiff runs`): exchanges compared, rows kept, rows kept
    whole (headers and bodies), about how many bytes of data its exchanges, divergences,
    path aggregates and latency sample take (indexes and pages aside), and when its first and
    last exchanges were sampled (None: none recorded)."""

    run: str
    exchanges: int
    rows: int
    whole: int
    bytes: int
    first: float | None
    last: float | None


_ROW_BYTES = {"exchanges": 100, "divergences": 60, "latency_sample": 60, "aggregate": 60}
"""About what a row of each table costs beyond its variable-length columns."""
_BODY_BYTES = " + ".join(
    f"COALESCE(LENGTH({c}), 0)"
    for c in ("request_headers", "request_body", "path", "flow_id")
    + tuple(
        f"{s}_{part}" for s in ("primary", "shadow", "secondary") for part in ("headers", "body")
    )
)


@dataclass(frozen=True, slots=True)
class Batch:
    """What one `Store.write` records, in one transaction."""

    run: str
    instance: str
    exchanges: list[Exchange]
    counts: dict[str, dict[str, int]]
    merges: Iterable[tuple[str, str]]
    examples: Iterable[tuple[str, str, int, str]]
    events: Iterable[Event]


class Backend(ABC):
    """`Store` as every backend shares it: the reads, once, over the backend's `_read()`;
    `write`, which hands a `Batch` to its `_write`; and the `with` block that closes it."""

    path: str

    @abstractmethod
    def _read(self) -> AbstractContextManager[Rows]:
        """Access to the rows for one read; the backend's driver errors become StoreError."""

    @abstractmethod
    def _write(self, batch: Batch) -> None:
        """Records the batch in one transaction (see `Store.write`)."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _change(
        self, statements: list[tuple[str, Sequence[object]]], unbounded: bool = False
    ) -> int:
        """Runs the statements (SQL with `?` placeholders) in one write transaction; the rows
        they changed. `unbounded`: without the statement time limit (a long run's delete)."""

    def _as_text(self, value: str) -> str:
        """A run, instance or flow id to look up, as the backend writes it (here: `clean`, so
        a lone surrogate from a URL finds what was written, and never reaches the driver)."""
        return clean(value)

    def _as_key(self, value: str) -> str:
        """A route or path to look up, as the backend writes it (here: `clean`)."""
        return clean(value)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(
        self,
        run: str,
        instance: str,
        exchanges: list[Exchange],
        counts: dict[str, dict[str, int]],
        merges: Iterable[tuple[str, str]] = (),
        examples: Iterable[tuple[str, str, int, str]] = (),
        events: Iterable[Event] = (),
    ) -> None:
        self._write(Batch(run, instance, exchanges, counts, list(merges), examples, events))

    def _all(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._read() as rows:
            return rows.all(sql, args)

    def _stream(self, sql: str, args: Sequence[object] = ()) -> Iterator[tuple[Any, ...]]:
        with self._read() as rows:
            yield from rows.stream(sql, args)

    def runs(self) -> list[str]:
        """The runs with counters or aggregates (every exchange is in the aggregates): small
        tables, never a scan of the rows."""
        rows = self._all("SELECT run FROM counts UNION SELECT run FROM route_stats ORDER BY run")
        return [r[0] for r in rows]

    def run_sizes(self) -> list[RunSize]:
        aggregated = dict(self._all("SELECT run, SUM(exchanges) FROM route_stats GROUP BY run"))
        rows = {
            run: rest
            for run, *rest in self._all(
                f"SELECT run, COUNT(*), COUNT(primary_headers), SUM({_BODY_BYTES}),"
                " MIN(ts), MAX(ts) FROM exchanges GROUP BY run"
            )
        }
        diffs = Counter[str]()
        for sql in (
            "SELECT run, SUM(LENGTH(path) + LENGTH(left_value) + LENGTH(right_value)"
            f" + {_ROW_BYTES['divergences']}) FROM divergences GROUP BY run",
            f"SELECT run, SUM(LENGTH(path) + {_ROW_BYTES['aggregate']}) FROM path_stats"
            " GROUP BY run",
            f"SELECT run, SUM(LENGTH(paths) + {_ROW_BYTES['aggregate']}) FROM signatures"
            " GROUP BY run",
        ):
            diffs.update({run: int(n or 0) for run, n in self._all(sql)})
        sampled = {
            run: rest
            for run, *rest in self._all(
                "SELECT run, COUNT(*), MIN(ts), MAX(ts) FROM latency_sample GROUP BY run"
            )
        }
        out = []
        for run in self.runs():
            kept, whole, size, first, last = rows.get(run, (0, 0, 0, None, None))
            pairs, first_pair, last_pair = sampled.get(run, (0, None, None))
            times = [t for t in (first, last, first_pair, last_pair) if t is not None]
            out.append(
                RunSize(
                    run,
                    int(aggregated.get(run) or 0),
                    int(kept),
                    int(whole),
                    int(size or 0)
                    + _ROW_BYTES["exchanges"] * int(kept)
                    + diffs[run]
                    + _ROW_BYTES["latency_sample"] * int(pairs),
                    min(times) if times else None,
                    max(times) if times else None,
                )
            )
        return sorted(out, key=lambda r: (r.last is None, r.last or 0.0, r.run))

    def delete_run(self, run: str) -> None:
        tables = sorted(t for t in TABLES if t != "meta")
        self._change(
            [(f"DELETE FROM {t} WHERE run = ?", (self._as_text(run),)) for t in tables],
            unbounded=True,
        )

    def prune(self, run: str, keep: int) -> None:
        run = self._as_text(run)
        doomed = (
            "run = ? AND id <= (SELECT id FROM exchanges WHERE run = ? ORDER BY id DESC"
            " LIMIT 1 OFFSET ?) AND NOT EXISTS (SELECT 1 FROM examples AS e WHERE e.run ="
            " exchanges.run AND e.instance = exchanges.instance AND e.flow_id = exchanges.flow_id)"
        )
        args = (run, run, keep)
        self._change(
            [
                (
                    "DELETE FROM divergences WHERE run = ? AND (instance, flow_id) IN"
                    f" (SELECT instance, flow_id FROM exchanges WHERE {doomed})",
                    (run, *args),
                ),
                (f"DELETE FROM exchanges WHERE {doomed}", args),
            ],
            unbounded=True,
        )

    def counts(self, run: str) -> dict[str, int]:
        """Counters summed over instances and sources (tap and worker own disjoint names)."""
        rows = self._all(
            "SELECT name, SUM(value) FROM counts WHERE run = ? GROUP BY name ORDER BY name",
            (run,),
        )
        return {name: int(value) for name, value in rows}

    def instance_counts(self, run: str) -> dict[str, dict[str, int]]:
        """Counters per instance (one proxy process, one tap object): each one's books must
        balance on their own; one that stopped without its last counts shows here."""
        rows = self._all(
            "SELECT instance, name, SUM(value) FROM counts WHERE run = ?"
            " GROUP BY instance, name ORDER BY instance, name",
            (run,),
        )
        out: dict[str, dict[str, int]] = {}
        for instance, name, value in rows:
            out.setdefault(instance, {})[name] = int(value)
        return out

    def _of(self, run: str, route: str | None) -> tuple[str, list[object]]:
        """The condition and arguments that select a run's rows, or one route's: the
        `(run, route, ...)` indexes then read that route alone."""
        if route is None:
            return "run = ?", [self._as_text(run)]
        return "run = ? AND route = ?", [self._as_text(run), self._as_key(route)]

    def routes(self, run: str, route: str | None = None) -> dict[str, dict[str, int]]:
        """Per route (or of `route` alone), over all instances, from the aggregates."""
        where, args = self._of(run, route)
        rows = self._all(
            f"SELECT route, {', '.join(f'SUM({s})' for s in STATS)} FROM route_stats"
            f" WHERE {where} GROUP BY route ORDER BY SUM(exchanges) DESC, route",
            args,
        )
        return {route: dict(zip(STATS, map(int, rest), strict=True)) for route, *rest in rows}

    def statuses(self, run: str, route: str | None = None) -> dict[str, dict[tuple[str, str], int]]:
        where, args = self._of(run, route)
        out: dict[str, dict[tuple[str, str], int]] = {}
        for name, primary, shadow, n in self._all(
            "SELECT route, primary_side, shadow_side, SUM(count) FROM route_statuses"
            f" WHERE {where} GROUP BY route, primary_side, shadow_side ORDER BY 1, 2, 3",
            args,
        ):
            out.setdefault(name, {})[(primary, shadow)] = int(n)
        return out

    def path_counts(self, run: str, route: str | None = None) -> list[PathRow]:
        where, args = self._of(run, route)
        rows = self._all(
            f"SELECT route, side, path, kind, SUM(count) FROM path_stats WHERE {where}"
            " GROUP BY route, side, path, kind ORDER BY 1, 2, 3, 4",
            args,
        )
        return [(route, side, path, kind, int(n)) for route, side, path, kind, n in rows]

    def signatures(self, run: str, route: str | None = None) -> list[SignatureRow]:
        where, args = self._of(run, route)
        rows = self._all(
            f"SELECT route, paths, SUM(count) FROM signatures WHERE {where}"
            " GROUP BY route, digest, paths ORDER BY 1, 2",
            args,
        )
        return [(route, paths, int(n)) for route, paths, n in rows]

    def latency_sample(self, run: str, route: str | None = None) -> Iterator[SampleRow]:
        where, args = self._of(run, route)
        yield from self._stream(
            "SELECT route, ts, primary_latency, shadow_latency, secondary_latency FROM"
            " (SELECT route, ts, primary_latency, shadow_latency, secondary_latency,"
            "  ROW_NUMBER() OVER (PARTITION BY route ORDER BY priority) AS k"
            f"  FROM latency_sample WHERE {where}) AS bottom"
            " WHERE k <= ? ORDER BY route, ts",
            [*args, aggregates.SAMPLE],
        )

    def divergence_rows(self, run: str, route: str | None = None) -> Iterator[DivergenceRow]:
        """A `DivergenceRow` for every divergence kept in a row (of `route` alone, if given),
        in the order of the index, the same in both backends."""
        where, args = self._of(run, route)
        yield from self._stream(
            "SELECT route, side, instance || ' ' || flow_id, path, kind, rule,"
            f" left_value, right_value FROM divergences WHERE {where}"
            " ORDER BY route, side, path, rowid",
            args,
        )

    def events(self, run: str) -> list[Event]:
        """What operators (and the automatic kill switch) did during the run, oldest first."""
        rows = self._all(
            "SELECT ts, kind, actor, old_value, new_value FROM events WHERE run = ?"
            " ORDER BY ts, rowid",
            (run,),
        )
        return [Event(*row) for row in rows]

    def recent_divergences(self, run: str, limit: int) -> list[tuple[str, str, str, str, str]]:
        """(route, path, kind, primary's value, shadow's value) of the latest real divergences
        of the shadow, newest first."""
        rows = self._all(
            "SELECT route, path, kind, left_value, right_value FROM divergences"
            " WHERE run = ? AND side = 'shadow' AND rule IS NULL ORDER BY rowid DESC LIMIT ?",
            (run, limit),
        )
        return [(route, path, kind, left, right) for route, path, kind, left, right in rows]

    def examples(self, run: str, route: str, path: str) -> list[Exchange]:
        """The sampled example exchanges kept for one (route, path)."""
        keys = self._all(
            "SELECT instance, flow_id FROM examples WHERE run = ? AND route = ? AND path = ?"
            " ORDER BY slot",
            (self._as_text(run), self._as_key(route), self._as_key(path)),  # as written
        )
        return [x for instance, flow in keys for x in self.exchanges(run, instance, flow)]

    def exchanges(
        self, run: str, instance: str | None = None, flow_id: str | None = None
    ) -> Iterator[Exchange]:
        """The run's exchanges in recording order (or the one of `instance` and `flow_id`)."""
        where, args = self._of(run, None)
        if instance is not None and flow_id is not None:
            where += " AND instance = ? AND flow_id = ?"
            args += [self._as_text(instance), self._as_text(flow_id)]
        with self._read() as rows:  # the divergences and the exchanges of one snapshot
            diffs: dict[tuple[str, str], list[tuple[str, Divergence]]] = {}
            for row in rows.all(
                "SELECT instance, flow_id, side, path, kind, left_value, right_value, rule"
                f" FROM divergences WHERE {where} ORDER BY rowid",
                args,
            ):
                diffs.setdefault((row[0], row[1]), []).append((row[2], Divergence(*row[3:])))
            for row in rows.stream(
                f"SELECT {COLUMNS} FROM exchanges WHERE {where} ORDER BY id", args
            ):
                yield exchange_of(row, diffs.get((row[1], row[2]), []))

    def first_bad(self, run: str, route: str, since: float) -> float | None:
        rows = self._all(
            "SELECT MIN(ts) FROM exchanges WHERE run = ? AND route = ? AND ts >= ?"
            " AND (shadow_result = 'divergent' OR shadow_error IS NOT NULL"
            " OR shadow_status >= 500)",
            (self._as_text(run), self._as_key(route), since),
        )
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    def open_incident(self, incident: Incident) -> Incident | None:
        i, run = incident, self._as_text(incident.run)
        text = (i.key, self._as_key(i.route), i.check, i.team, i.severity, self._as_text(i.summary))
        args = (run, *text, i.started, i.opened)
        opened = self._change(
            [
                (
                    "INSERT INTO incidents (run, key, seq, route, check_id, team, severity,"
                    " summary, started, opened) SELECT ?, ?, COALESCE(MAX(seq), 0) + 1,"
                    " ?, ?, ?, ?, ?, ?, ? FROM incidents WHERE run = ? AND key = ?"
                    " ON CONFLICT DO NOTHING",
                    (*args, run, i.key),
                )
            ]
        )
        if not opened:
            return None
        # None in the rare case another proxy resolved it already (a mitigation)
        return next(
            (x for x in self.incidents(incident.run, open_only=True) if x.key == i.key), None
        )

    def update_incident(
        self, run: str, key: str, seq: int, field: str, at: float, by: str | None = None
    ) -> bool:
        who = {"acked": "acked_by", "mitigated": "mitigated_by", "resolved": "resolved_why"}
        if field not in ("alerted", *who):
            raise ValueError(f"no such moment of an incident: {field}")
        text = None if by is None else self._as_text(by)  # an actor's name: from a header
        extra, args = (f", {who[field]} = ?", [at, text]) if field in who else ("", [at])
        return bool(
            self._change(
                [
                    (
                        f"UPDATE incidents SET {field} = ?{extra} WHERE run = ? AND key = ?"
                        f" AND seq = ? AND {field} IS NULL",
                        (*args, self._as_text(run), key, seq),
                    )
                ]
            )
        )

    def heartbeat(
        self, run: str, instance: str, at: float, stopped: tuple[float, str] | None
    ) -> None:
        when, why = stopped if stopped else (None, None)
        self._change(
            [
                (
                    "INSERT INTO proxies (run, instance, seen, stopped, stopped_why)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (run, instance) DO UPDATE SET"
                    " seen = excluded.seen, stopped = excluded.stopped,"
                    " stopped_why = excluded.stopped_why",
                    (
                        self._as_text(run),
                        self._as_text(instance),
                        at,
                        when,
                        why and self._as_text(why),
                    ),
                )
            ]
        )

    def proxies(self, run: str, since: float) -> list[tuple[str, float | None, str | None]]:
        rows = self._all(
            "SELECT instance, stopped, stopped_why FROM proxies WHERE run = ? AND seen >= ?"
            " ORDER BY instance",
            (self._as_text(run), since),
        )
        return [(instance, stopped, why) for instance, stopped, why in rows]

    def gone(self, run: str, instance: str) -> None:
        self._change(
            [
                (
                    "DELETE FROM proxies WHERE run = ? AND instance = ?",
                    (self._as_text(run), self._as_text(instance)),
                )
            ]
        )

    def incidents(self, run: str, open_only: bool = False) -> list[Incident]:
        only = " AND resolved IS NULL" if open_only else ""
        rows = self._all(
            f"SELECT {_INCIDENT_COLUMNS} FROM incidents WHERE run = ?{only}"
            " ORDER BY opened, key, seq",
            (self._as_text(run),),
        )
        return [Incident(*row) for row in rows]

    def release(self, run: str) -> ReleaseState | None:
        rows = self._all(
            "SELECT stage, state, since, base, actor, why, version FROM releases WHERE run = ?",
            (self._as_text(run),),
        )
        return ReleaseState(*rows[0]) if rows else None

    def move_release(self, run: str, new: ReleaseState) -> bool:
        values = (
            new.stage,
            new.state,
            new.since,
            new.base,
            self._as_text(new.actor),  # an actor's name: from a header
            self._as_text(new.why),
        )
        if new.version == 0:
            sql = (
                "INSERT INTO releases (run, version, stage, state, since, base, actor, why)"
                " VALUES (?, 1, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
            )
            args: tuple[object, ...] = (self._as_text(run), *values)
        else:
            sql = (
                "UPDATE releases SET version = version + 1, stage = ?, state = ?, since = ?,"
                " base = ?, actor = ?, why = ? WHERE run = ? AND version = ?"
            )
            args = (*values, self._as_text(run), new.version)
        return bool(self._change([(sql, args)]))


_INCIDENT_COLUMNS = (
    "run, key, seq, route, check_id, team, severity, summary, started, opened, alerted,"
    " acked, acked_by, mitigated, mitigated_by, resolved, resolved_why"
)
"""The incidents table's columns, in the order of `Incident`'s fields."""
