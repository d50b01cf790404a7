"""The PostgreSQL store: the interface of the SQLite `Store`, for proxies that share a database.

Chosen by a `postgresql://` store URL (`open_store`). Several proxies (instances) may write one
run at once: every row carries its instance and every read aggregates over all of them, in SQL,
so two proxies that each saw half the traffic read back like one proxy that saw all of it.

The schema is store.py's, translated to PostgreSQL and created or migrated by shadowdiff itself
under an advisory lock, so proxies starting together never race. A batch is one transaction:
exchanges and divergences go in by binary COPY, the rest in pipelined statements, never one
round trip per exchange. A database that is unreachable, drops the connection or times out
raises `StoreUnavailable`, which the recorder retries; the pool reconnects on the next write.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool

from shadowdiff.model import Divergence, Event, Exchange, RequestSnapshot, result_of
from shadowdiff.store.sqlite import (
    COLUMNS,
    MIGRATES_FROM,
    SCHEMA,
    SCHEMA_VERSION,
    SIDES,
    StoreError,
    clean,
    headers_in,
    headers_out,
    masked,
    outcome_of,
    side_row,
)

CONNECT_TIMEOUT = 3.0
"""Seconds to connect, or to wait for a pooled connection: a stopped database fails a write
that fast instead of holding up the writer thread."""

STATEMENT_TIMEOUT = 10.0
"""Seconds a statement of a write may take before the server cancels it (a slow or locked
database); reads, which may aggregate a long run, have no limit."""

RECONNECT_TIMEOUT = 2.0
"""Seconds the pool keeps reconnecting in the background after losing a connection. Kept
short: afterwards each write connects afresh, so the store recovers on the first write after
the database returns, not after a backoff grown long during the outage."""

KEY_BYTES = 1000
"""Longest route or divergence path kept whole: they are index keys, and a PostgreSQL index
entry holds at most ~2700 bytes. A longer one (only a hostile request makes one) is cut and
suffixed with a hash of the whole, so distinct keys stay distinct."""

_LOCK = int.from_bytes(b"shadowdf", "big")
"""The advisory lock that serializes schema creation and migration across processes."""

_TRANSIENT = ("08", "40", "53", "57", "58", "55P03")
"""SQLSTATE classes and codes worth a retry: connection lost, serialization failure or
deadlock, resources exhausted (disk, connections), operator intervention (statement timeout,
shutdown), system error, lock not available."""


class StoreUnavailable(sqlite3.OperationalError, StoreError):
    """The database cannot be reached, dropped the connection or timed out: transient.

    A `sqlite3.OperationalError`, so the recorder's existing retry path (which keeps the batch
    and retries with the next one) treats it exactly like a locked or full SQLite file; and a
    `StoreError`, so the command line reports it in one line.
    """


def _pg_schema(sqlite_ddl: str) -> str:
    """store.py's schema in PostgreSQL's types. Text compares bytewise (collation "C") as in
    SQLite, so every ORDER BY sorts alike; tables without a primary key get the `rowid` that
    SQLite gives implicitly and that the reads order by."""
    ddl = re.sub(
        r"\bid INTEGER PRIMARY KEY\b",
        "id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        sqlite_ddl,
    )
    for sqlite_type, pg_type in (
        ("INTEGER", "BIGINT"),
        ("REAL", "DOUBLE PRECISION"),
        ("BLOB", "BYTEA"),
        ("TEXT", 'TEXT COLLATE "C"'),
    ):
        ddl = re.sub(rf"\b{sqlite_type}\b", pg_type, ddl)
    return re.sub(
        r"(CREATE TABLE IF NOT EXISTS \w+ \()(?![^;]*PRIMARY KEY)",
        r"\1\n    rowid BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,",
        ddl,
    )


_PG_SCHEMA = (
    _pg_schema(SCHEMA)
    + """
-- routes.apply_merge, in SQL: regroups stored rows without reading them out.
CREATE OR REPLACE FUNCTION shadowdiff_apply_merge(route TEXT, old TEXT, new TEXT)
RETURNS TEXT LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN route = old OR starts_with(route, old || '/')
        THEN new || substr(route, length(old) + 1) ELSE route END
$$;
"""
)

_EXCHANGE_TYPES = (
    ["text", "text", "text", "float8", "text", "text", "text", "bytea", "bytea"]
    + ["int8", "text", "float8", "bytea", "bytea"] * len(SIDES)
    + ["text", "text"]
)
"""The types of `COLUMNS`, in order, for the binary COPY."""

_DIVERGENCE_COLUMNS = (
    "run, instance, flow_id, route, side, path, kind, left_value, right_value, rule"
)

_MOVED = "run = %(run)s AND (route = %(old)s OR route LIKE %(like)s ESCAPE '\\')"
_MERGES = (
    f"UPDATE exchanges SET route = shadowdiff_apply_merge(route, %(old)s, %(new)s) WHERE {_MOVED}",
    f"UPDATE divergences SET route = shadowdiff_apply_merge(route, %(old)s, %(new)s)"
    f" WHERE {_MOVED}",
    # SQLite's UPDATE OR REPLACE: a moved example takes the slot of one already there.
    f"WITH moved AS (DELETE FROM examples WHERE {_MOVED}"
    " RETURNING run, route, path, slot, instance, flow_id)"
    " INSERT INTO examples (run, route, path, slot, instance, flow_id)"
    " SELECT run, shadowdiff_apply_merge(route, %(old)s, %(new)s), path, slot, instance, flow_id"
    " FROM moved ON CONFLICT (run, route, path, slot)"
    " DO UPDATE SET instance = EXCLUDED.instance, flow_id = EXCLUDED.flow_id",
)


def _text(value: str) -> str:
    """Text PostgreSQL always takes: store.py's cleaning (a lone surrogate becomes its
    escape), and a NUL, which PostgreSQL refuses in text, becomes `\\x00`."""
    if value.isascii() and "\x00" not in value:  # nearly every string: no copy
        return value
    return clean(value).replace("\x00", "\\x00")


def _key(value: str) -> str:
    """A route or path as an index can hold it (see KEY_BYTES)."""
    text = _text(value)
    data = text.encode()
    if len(data) <= KEY_BYTES:
        return text
    digest = hashlib.sha256(data).hexdigest()[:16]
    return data[: KEY_BYTES - 20].decode(errors="ignore") + "…" + digest


def _row(*values: object) -> tuple[object, ...]:
    """A row no hostile string can make PostgreSQL refuse."""
    return tuple(_text(v) if isinstance(v, str) else v for v in values)


def _like_prefix(prefix: str) -> str:
    """LIKE pattern of the routes under `prefix` (`prefix/...`)."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"


def _connect_options(url: str) -> dict[str, Any]:
    """Our connection defaults, except where the URL says otherwise."""
    defaults = {"connect_timeout": round(CONNECT_TIMEOUT), "tcp_user_timeout": 10_000}
    given = conninfo_to_dict(url)
    return {"autocommit": False, **{k: v for k, v in defaults.items() if k not in given}}


def _configure(conn: psycopg.Connection[TupleRow]) -> None:
    """Every connection's writes time out (reads lift the limit in their own transaction)."""
    conn.execute(f"SET statement_timeout = {round(STATEMENT_TIMEOUT * 1000)}")
    conn.commit()


def _transient(e: psycopg.Error) -> bool:
    """No answer at all (sqlstate None: connection refused or lost, pool timeout), or a
    server error that may well pass (see _TRANSIENT)."""
    state = e.sqlstate
    return isinstance(e, psycopg.OperationalError) and (
        state is None or state[:2] in _TRANSIENT or state in _TRANSIENT
    )


class PostgresStore:
    """A PostgreSQL store; open it with `PostgresStore(url)`, close it with `close()`."""

    def __init__(self, url: str, create: bool = True) -> None:
        self.path = masked(url)
        try:
            options = _connect_options(url)
            # A connection of its own, not the pool's: its error says why (refused, bad
            # password, no such database) where the pool would only time out.
            with psycopg.connect(url, **options) as conn:
                _configure(conn)
                self._check_schema(conn, create)
        except psycopg.Error as e:
            if _transient(e):
                raise StoreUnavailable(f"{self.path}: database unavailable ({e})") from None
            raise StoreError(f"{self.path}: not a usable shadowdiff store ({e})") from None
        self.pool: ConnectionPool[psycopg.Connection[TupleRow]] = ConnectionPool(
            url,
            kwargs=options,
            min_size=1,
            max_size=4,
            open=True,
            configure=_configure,
            check=ConnectionPool.check_connection,  # a connection broken by an outage
            timeout=CONNECT_TIMEOUT,
            reconnect_timeout=RECONNECT_TIMEOUT,
            name="shadowdiff",
        )

    def _check_schema(self, conn: psycopg.Connection[TupleRow], create: bool) -> None:
        """Creates, migrates or checks the schema, one process at a time. Unlike a SQLite
        file, a database may hold other applications' tables: only `meta` matters."""
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            found = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
            if not (found and found[0]):
                if not create:
                    raise StoreError(f"{self.path}: no such store")
                conn.execute(_PG_SCHEMA)
                conn.execute(
                    "INSERT INTO meta VALUES ('schema_version', %s)", (str(SCHEMA_VERSION),)
                )
                return
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = row[0] if row else "unknown"
            if version in MIGRATES_FROM:
                conn.execute(_PG_SCHEMA)  # every statement of the schema is idempotent
                conn.execute(
                    "UPDATE meta SET value = %s WHERE key = 'schema_version'",
                    (str(SCHEMA_VERSION),),
                )
                return
            if version != str(SCHEMA_VERSION):
                raise StoreError(
                    f"{self.path}: store schema version {version}, this shadowdiff reads version "
                    f"{SCHEMA_VERSION}; use a matching shadowdiff or a new store path"
                )

    @contextmanager
    def _transaction(self, read: bool = False) -> Iterator[psycopg.Connection[TupleRow]]:
        """A pooled connection in a transaction, committed at the end of the block. A read
        sees one snapshot of the whole store (the exchanges and their divergences agree),
        without the time limit of writes."""
        try:
            with self.pool.connection() as conn:
                if read:
                    conn.execute(
                        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY;"
                        " SET LOCAL statement_timeout = 0"
                    )
                yield conn
        except psycopg.Error as e:
            if _transient(e):
                raise StoreUnavailable(f"{self.path}: {e}") from e
            if read:  # a face prints it as one line; a write's error goes to the recorder
                raise StoreError(f"{self.path}: {e}") from e
            raise

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> PostgresStore:
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
        """Records a batch in one transaction, as `Store.write` does."""
        rows = [
            _row(
                run,
                instance,
                x.request.flow_id,
                x.request.timestamp,
                _key(x.route),
                x.request.method,
                x.request.path,
                headers_out(x.request.headers),
                x.request.body,
                *side_row(x.primary),
                *side_row(x.shadow),
                *side_row(x.secondary),
                result_of(x.shadow_diffs),
                result_of(x.secondary_diffs) if x.secondary else None,
            )
            for x in exchanges
        ]
        diffs = [
            _row(
                run,
                instance,
                x.request.flow_id,
                _key(x.route),
                side,
                _key(d.path),
                d.kind,
                d.left,
                d.right,
                d.rule,
            )
            for x in exchanges
            for side, listed in (("shadow", x.shadow_diffs), ("secondary", x.secondary_diffs))
            for d in listed
        ]
        moves = [
            {"run": _text(run), "old": _key(old), "new": _key(new), "like": _like_prefix(_key(old))}
            for old, new in merges
        ]
        slots = [
            _row(run, _key(route), _key(path), slot, instance, flow)
            for route, path, slot, flow in examples
        ]
        happened = [_row(run, instance, e.ts, e.kind, e.actor, e.old, e.new) for e in events]
        counters = [
            _row(run, instance, source, name, value)
            for source, named in counts.items()
            for name, value in named.items()
        ]
        with self._transaction() as conn, conn.cursor() as cursor:
            for statement in _MERGES:
                cursor.executemany(statement, moves)
            if rows:
                with cursor.copy(f"COPY exchanges ({COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(_EXCHANGE_TYPES)
                    for row in rows:
                        copy.write_row(row)
            if diffs:
                with cursor.copy(
                    f"COPY divergences ({_DIVERGENCE_COLUMNS}) FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(["text"] * 10)
                    for row in diffs:
                        copy.write_row(row)
            cursor.executemany(
                "INSERT INTO examples (run, route, path, slot, instance, flow_id)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (run, route, path, slot)"
                " DO UPDATE SET instance = EXCLUDED.instance, flow_id = EXCLUDED.flow_id",
                slots,
            )
            cursor.executemany(
                "INSERT INTO events (run, instance, ts, kind, actor, old_value, new_value)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                happened,
            )
            cursor.executemany(
                "INSERT INTO counts (run, instance, source, name, value)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (run, instance, source, name)"
                " DO UPDATE SET value = EXCLUDED.value",
                counters,
            )

    def _all(self, query: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._transaction(read=True) as conn:
            return conn.execute(query, args).fetchall()

    def _stream(self, query: str, args: Iterable[object]) -> Iterator[tuple[Any, ...]]:
        """Rows fetched by the thousand from a server-side cursor: a long run never sits in
        memory whole."""
        with self._transaction(read=True) as conn, conn.cursor("rows", binary=True) as cursor:
            cursor.itersize = 1000
            yield from cursor.execute(query, list(args))

    def runs(self) -> list[str]:
        rows = self._all("SELECT run FROM counts UNION SELECT run FROM exchanges ORDER BY run")
        return [r[0] for r in rows]

    def counts(self, run: str) -> dict[str, int]:
        """Counters summed over instances and sources (tap and worker own disjoint names)."""
        rows = self._all(
            "SELECT name, SUM(value) FROM counts WHERE run = %s GROUP BY name ORDER BY name",
            (run,),
        )
        return {name: int(value) for name, value in rows}

    def instance_counts(self, run: str) -> dict[str, dict[str, int]]:
        """Counters per instance (one proxy process, one tap object): each one's books must
        balance on their own; one that stopped without its last counts shows here."""
        rows = self._all(
            "SELECT instance, name, SUM(value) FROM counts WHERE run = %s"
            " GROUP BY instance, name ORDER BY instance, name",
            (run,),
        )
        out: dict[str, dict[str, int]] = {}
        for instance, name, value in rows:
            out.setdefault(instance, {})[name] = int(value)
        return out

    def routes(self, run: str) -> dict[str, dict[str, int]]:
        """Per route, over all instances: exchanges, with a secondary, and the shadow's
        matched / ignored / divergent counts (before noise is taken out)."""
        rows = self._all(
            "SELECT route, COUNT(*), COUNT(secondary_result),"
            " COUNT(*) FILTER (WHERE shadow_result = 'matched'),"
            " COUNT(*) FILTER (WHERE shadow_result = 'ignored'),"
            " COUNT(*) FILTER (WHERE shadow_result = 'divergent')"
            " FROM exchanges WHERE run = %s GROUP BY route ORDER BY COUNT(*) DESC, route",
            (run,),
        )
        names = ("exchanges", "with_secondary", "matched", "ignored", "divergent")
        return {route: dict(zip(names, map(int, rest), strict=True)) for route, *rest in rows}

    def outcome_rows(
        self, run: str
    ) -> Iterator[
        tuple[
            str,
            int | None,
            str | None,
            float | None,
            int | None,
            str | None,
            float | None,
            float | None,
        ]
    ]:
        """(route, primary status, primary error, primary latency, shadow status, shadow error,
        shadow latency, secondary latency) per exchange, in recording order."""
        yield from self._stream(
            # A failed side's time-to-failure is no latency: NULL, so it never skews a check.
            "SELECT route, primary_status, primary_error,"
            " CASE WHEN primary_error IS NULL THEN primary_latency END, shadow_status,"
            " shadow_error, CASE WHEN shadow_error IS NULL THEN shadow_latency END,"
            " CASE WHEN secondary_error IS NULL THEN secondary_latency END"
            " FROM exchanges WHERE run = %s ORDER BY id",
            (run,),
        )

    def divergence_rows(
        self, run: str
    ) -> Iterator[tuple[str, str, str, str, str, str | None, str, str]]:
        """(route, side, exchange key, path, kind, rule, left, right) for every divergence, in
        the order SQLite's index yields them, so a field's kind (its most common, ties to the
        first seen) comes out the same."""
        yield from self._stream(
            "SELECT route, side, instance || ' ' || flow_id, path, kind, rule,"
            " left_value, right_value FROM divergences WHERE run = %s"
            " ORDER BY route, side, path, rowid",
            (run,),
        )

    def events(self, run: str) -> list[Event]:
        """What operators (and the automatic kill switch) did during the run, oldest first."""
        rows = self._all(
            "SELECT ts, kind, actor, old_value, new_value FROM events WHERE run = %s"
            " ORDER BY ts, rowid",
            (run,),
        )
        return [Event(*row) for row in rows]

    def recent_divergences(self, run: str, limit: int) -> list[tuple[str, str, str, str, str]]:
        """(route, path, kind, primary's value, shadow's value) of the latest real divergences
        of the shadow, newest first."""
        rows = self._all(
            "SELECT route, path, kind, left_value, right_value FROM divergences"
            " WHERE run = %s AND side = 'shadow' AND rule IS NULL ORDER BY rowid DESC LIMIT %s",
            (run, limit),
        )
        return [(route, path, kind, left, right) for route, path, kind, left, right in rows]

    def examples(self, run: str, route: str, path: str) -> list[Exchange]:
        """The sampled example exchanges kept for one (route, path)."""
        keys = self._all(
            "SELECT instance, flow_id FROM examples WHERE run = %s AND route = %s AND path = %s"
            " ORDER BY slot",
            (_text(run), _key(route), _key(path)),  # as written: a lookup from a URL matches
        )
        return [x for instance, flow in keys for x in self.exchanges(run, instance, flow)]

    def exchanges(
        self, run: str, instance: str | None = None, flow_id: str | None = None
    ) -> Iterator[Exchange]:
        """The run's exchanges in recording order (or the one of `instance` and `flow_id`)."""
        where, args = "run = %s", [_text(run)]
        if instance is not None and flow_id is not None:
            where += " AND instance = %s AND flow_id = %s"
            args += [_text(instance), _text(flow_id)]
        with self._transaction(read=True) as conn:
            diffs: dict[tuple[str, str], list[tuple[str, Divergence]]] = {}
            for row in conn.execute(
                "SELECT instance, flow_id, side, path, kind, left_value, right_value, rule"
                f" FROM divergences WHERE {where} ORDER BY rowid",
                args,
            ):
                diffs.setdefault((row[0], row[1]), []).append((row[2], Divergence(*row[3:])))
            with conn.cursor("exchanges", binary=True) as cursor:
                cursor.itersize = 1000
                cursor.execute(f"SELECT {COLUMNS} FROM exchanges WHERE {where} ORDER BY id", args)
                for row in cursor:
                    yield _exchange(row, diffs.get((row[1], row[2]), []))


def _exchange(row: tuple[Any, ...], found: list[tuple[str, Divergence]]) -> Exchange:
    """An exchange from its row of `COLUMNS` and its (side, divergence) list."""
    request = RequestSnapshot(
        flow_id=row[2],
        method=row[5],
        path=row[6],
        headers=headers_in(row[7]),
        body=row[8],
        timestamp=row[3],
    )
    primary, shadow, secondary = (
        outcome_of(row[9 + 5 * i : 14 + 5 * i]) for i in range(len(SIDES))
    )
    assert primary is not None and shadow is not None
    return Exchange(
        request,
        primary,
        shadow,
        secondary,
        route=row[4],
        shadow_diffs=[d for side, d in found if side == "shadow"],
        secondary_diffs=[d for side, d in found if side == "secondary"],
    )
