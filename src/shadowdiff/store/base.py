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
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, Self

from shadowdiff.model import Divergence, Event, Exchange
from shadowdiff.store.schema import COLUMNS, clean, exchange_of

OutcomeRow = tuple[
    str,
    int | None,
    str | None,
    float | None,
    int | None,
    str | None,
    float | None,
    float | None,
    float,
]
"""(route, primary status, primary error, primary latency, shadow status, shadow error,
shadow latency, secondary latency, when it was sampled) of one exchange."""

DivergenceRow = tuple[str, str, str, str, str, str | None, str, str]
"""(route, side, exchange key, path, kind, rule, left, right) of one divergence."""


class Store(Protocol):
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

    def counts(self, run: str) -> dict[str, int]:
        """Counters summed over instances and sources (tap and worker own disjoint names)."""
        ...

    def instance_counts(self, run: str) -> dict[str, dict[str, int]]:
        """Counters per instance (one proxy process, one tap object)."""
        ...

    def routes(self, run: str, route: str | None = None) -> dict[str, dict[str, int]]:
        """Per route (or of `route` alone): exchanges, with a secondary, and the shadow's
        matched / ignored / divergent counts (before noise is taken out)."""
        ...

    def outcome_rows(self, run: str, route: str | None = None) -> Iterator[OutcomeRow]:
        """An `OutcomeRow` per exchange (of `route` alone, if given), in recording order."""
        ...

    def divergence_rows(self, run: str, route: str | None = None) -> Iterator[DivergenceRow]:
        """A `DivergenceRow` for every divergence (of `route` alone, if given)."""
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


class Rows(Protocol):
    """One read's access to a backend's rows; the SQL has `?` placeholders."""

    def all(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Every row of the query."""
        ...

    def stream(self, sql: str, args: Sequence[object] = ()) -> Iterator[tuple[Any, ...]]:
        """The query's rows as they come: a long run never sits in memory whole."""
        ...


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
        self._write(Batch(run, instance, exchanges, counts, merges, examples, events))

    def _all(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._read() as rows:
            return rows.all(sql, args)

    def _stream(self, sql: str, args: Sequence[object] = ()) -> Iterator[tuple[Any, ...]]:
        with self._read() as rows:
            yield from rows.stream(sql, args)

    def runs(self) -> list[str]:
        rows = self._all("SELECT run FROM counts UNION SELECT run FROM exchanges ORDER BY run")
        return [r[0] for r in rows]

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
        """Per route (or of `route` alone), over all instances: exchanges, with a secondary,
        and the shadow's matched / ignored / divergent counts (before noise is taken out)."""
        where, args = self._of(run, route)
        rows = self._all(
            "SELECT route, COUNT(*), COUNT(secondary_result),"
            " COUNT(*) FILTER (WHERE shadow_result = 'matched'),"
            " COUNT(*) FILTER (WHERE shadow_result = 'ignored'),"
            " COUNT(*) FILTER (WHERE shadow_result = 'divergent')"
            f" FROM exchanges WHERE {where} GROUP BY route ORDER BY COUNT(*) DESC, route",
            args,
        )
        names = ("exchanges", "with_secondary", "matched", "ignored", "divergent")
        return {route: dict(zip(names, map(int, rest), strict=True)) for route, *rest in rows}

    def outcome_rows(self, run: str, route: str | None = None) -> Iterator[OutcomeRow]:
        """An `OutcomeRow` per exchange (of `route` alone, if given), in recording order."""
        where, args = self._of(run, route)
        yield from self._stream(
            # A failed side's time-to-failure is no latency: NULL, so it never skews a check.
            "SELECT route, primary_status, primary_error,"
            " CASE WHEN primary_error IS NULL THEN primary_latency END, shadow_status,"
            " shadow_error, CASE WHEN shadow_error IS NULL THEN shadow_latency END,"
            " CASE WHEN secondary_error IS NULL THEN secondary_latency END, ts"
            f" FROM exchanges WHERE {where} ORDER BY id",
            args,
        )

    def divergence_rows(self, run: str, route: str | None = None) -> Iterator[DivergenceRow]:
        """A `DivergenceRow` for every divergence (of `route` alone, if given), in the order
        of SQLite's index, so a field's kind (its most common, ties to the first seen) comes
        out the same in both."""
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
