"""The PostgreSQL store: the `Store` interface, for proxies that share a database.

Chosen by a `postgresql://` store URL (`open_store`). Several proxies (instances) may write one
run at once: every row carries its instance and every read aggregates over all of them, in SQL,
so two proxies that each saw half the traffic read back like one proxy that saw all of it.

The schema is schema.py's, translated to PostgreSQL and created or migrated by shadowdiff itself
under an advisory lock, so proxies starting together never race. A batch is one transaction:
exchanges and divergences go in by binary COPY, the rest in pipelined statements, never one
round trip per exchange. The reads are `Backend`'s, each in a read-only snapshot. psycopg's errors
become the store's in `_translated` only: a database that is unreachable, drops the connection
or times out raises `StoreUnavailable`, which the recorder retries; the pool reconnects on the
next write.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool

from shadowdiff.errors import StoreError, StoreUnavailable
from shadowdiff.store import schema
from shadowdiff.store.aggregates import Aggregates, migrate
from shadowdiff.store.base import Backend, Batch, Rows

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


def _pg_schema(sqlite_ddl: str) -> str:
    """schema.py's schema in PostgreSQL's types. Text compares bytewise (collation "C") as in
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
    _pg_schema(schema.SCHEMA)
    + """
-- model.apply_merge, in SQL: regroups stored rows without reading them out.
CREATE OR REPLACE FUNCTION shadowdiff_apply_merge(route TEXT, old TEXT, new TEXT)
RETURNS TEXT LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN route = old OR starts_with(route, old || '/')
        THEN new || substr(route, length(old) + 1) ELSE route END
$$;
"""
)

_EXCHANGE_TYPES = (
    ["text", "text", "text", "float8", "text", "text", "text", "bytea", "bytea"]
    + ["int8", "text", "float8", "bytea", "bytea"] * len(schema.SIDES)
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
    """Text PostgreSQL always takes: schema.py's cleaning (a lone surrogate becomes its
    escape), and a NUL, which PostgreSQL refuses in text, becomes `\\x00`."""
    if value.isascii() and "\x00" not in value:  # nearly every string: no copy
        return value
    return schema.clean(value).replace("\x00", "\\x00")


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


def _same(value: str) -> str:
    return value


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


@contextmanager
def _translated(path: str, opening: bool = False) -> Iterator[None]:
    """psycopg's errors as the store's, as httpx's `map_httpcore_exceptions` does: a transient
    one (see _transient) is StoreUnavailable, which the recorder retries; any other is a
    StoreError. While opening, the message says whether the database is down or unusable."""
    try:
        yield
    except psycopg.Error as e:
        if opening:
            if _transient(e):
                raise StoreUnavailable(f"{path}: database unavailable ({e})") from None
            raise StoreError(f"{path}: not a usable shadowdiff store ({e})") from None
        if _transient(e):
            raise StoreUnavailable(f"{path}: {e}") from e
        raise StoreError(f"{path}: {e}") from e


@cache
def _placeholders(sql: str) -> str:
    """A read's SQL with psycopg's placeholders: `?` becomes `%s`, once per query."""
    return sql.replace("?", "%s")


class _Rows:
    """A read in one transaction of a pooled connection."""

    def __init__(self, conn: psycopg.Connection[TupleRow]) -> None:
        self.conn = conn

    def all(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(_placeholders(sql), args).fetchall()

    def stream(self, sql: str, args: Sequence[object] = ()) -> Iterator[tuple[Any, ...]]:
        """Rows fetched by the thousand from a server-side cursor."""
        with self.conn.cursor("rows", binary=True) as cursor:
            cursor.itersize = 1000
            yield from cursor.execute(_placeholders(sql), list(args))


class _Writes:
    """A write's statements on its cursor (`aggregates.Cursor`), every string made safe."""

    def __init__(self, cursor: psycopg.Cursor[TupleRow]) -> None:
        self.cursor = cursor

    def rows(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self.cursor.execute(_placeholders(sql), _row(*args)).fetchall()

    def run(self, sql: str, args: Sequence[object] = ()) -> None:
        self.cursor.execute(_placeholders(sql), _row(*args))

    def many(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        listed = [_row(*row) for row in rows]
        if listed:
            self.cursor.executemany(_placeholders(sql), listed)


class PostgresStore(Backend):
    """A PostgreSQL store; open it with `PostgresStore(url)`, close it with `close()`."""

    def __init__(self, url: str, create: bool = True) -> None:
        self.path = schema.masked(url)
        with _translated(self.path, opening=True):
            options = _connect_options(url)
            # A connection of its own, not the pool's: its error says why (refused, bad
            # password, no such database) where the pool would only time out.
            with psycopg.connect(url, **options) as conn:
                _configure(conn)
                self._check_schema(conn, create)
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
        self.aggregates = Aggregates(key=_key, one_statement=True)

    def _check_schema(self, conn: psycopg.Connection[TupleRow], create: bool) -> None:
        """Creates, migrates or checks the schema, one process at a time. Unlike a SQLite
        file, a database may hold other applications' tables: only the store's own matter."""
        with conn.transaction():
            # the lock waits for another process's migration, the migration takes its time
            conn.execute("SET LOCAL statement_timeout = 0")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            found = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
            if not (found and found[0]):
                if not create:
                    raise StoreError(f"{self.path}: no such store")
                conn.execute(_PG_SCHEMA)
                conn.execute(
                    "INSERT INTO meta VALUES ('schema_version', %s)", (str(schema.SCHEMA_VERSION),)
                )
                return
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if schema.must_migrate(self.path, row[0] if row else "unknown"):
                conn.execute(_PG_SCHEMA)  # every statement of the schema is idempotent
                if row and row[0] in schema.WITHOUT_AGGREGATES:
                    with conn.cursor() as cursor:
                        migrate(_Writes(cursor), "random()")
                conn.execute(
                    "UPDATE meta SET value = %s WHERE key = 'schema_version'",
                    (str(schema.SCHEMA_VERSION),),
                )
            columns = conn.execute(
                # the tables the search path finds, as every statement of the store does
                "SELECT t, a.attname FROM unnest(%s::text[]) AS t"
                " JOIN pg_attribute AS a ON a.attrelid = to_regclass(t)"
                " WHERE a.attnum > 0 AND NOT a.attisdropped",
                (list(schema.TABLES),),
            )
            schema.check_complete(self.path, columns)

    @contextmanager
    def _transaction(self, read: bool = False) -> Iterator[psycopg.Connection[TupleRow]]:
        """A pooled connection in a transaction, committed at the end of the block. A read
        sees one snapshot of the whole store (the exchanges and their divergences agree),
        without the time limit of writes."""
        with _translated(self.path), self.pool.connection() as conn:
            if read:
                conn.execute(
                    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY;"
                    " SET LOCAL statement_timeout = 0"
                )
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Rows]:
        with self._transaction(read=True) as conn:
            yield _Rows(conn)

    def _as_text(self, value: str) -> str:
        return _text(value)

    def _as_key(self, value: str) -> str:
        return _key(value)  # as written: a lookup from a URL matches

    def close(self) -> None:
        self.pool.close()

    def _change(
        self, statements: list[tuple[str, Sequence[object]]], unbounded: bool = False
    ) -> int:
        with self._transaction() as conn:
            if unbounded:  # a long run takes its time
                conn.execute("SET LOCAL statement_timeout = 0")
            return sum(conn.execute(_placeholders(sql), args).rowcount for sql, args in statements)

    def _write(self, batch: Batch) -> None:
        run, instance, exchanges = batch.run, batch.instance, batch.exchanges
        rows = [
            _row(*schema.exchange_row(run, instance, x, key=_key, text=_same))
            for x in schema.stored(exchanges)
        ]
        diffs = [
            _row(*d) for d in schema.divergence_rows(run, instance, exchanges, key=_key, text=_same)
        ]
        moves = [
            {
                "run": _text(run),
                "old": _key(old),
                "new": _key(new),
                "like": schema.like_prefix(_key(old)),
            }
            for old, new in batch.merges
        ]
        slots = [
            _row(run, _key(route), _key(path), slot, instance, flow)
            for route, path, slot, flow in batch.examples
        ]
        happened = [_row(run, instance, e.ts, e.kind, e.actor, e.old, e.new) for e in batch.events]
        counters = [
            _row(run, instance, source, name, value)
            for source, named in batch.counts.items()
            for name, value in named.items()
        ]
        with self._transaction() as conn, conn.cursor() as cursor:
            for statement in _MERGES:
                cursor.executemany(statement, moves)
            self.aggregates.write(_Writes(cursor), run, instance, exchanges, batch.merges)
            if rows:
                with cursor.copy(
                    f"COPY exchanges ({schema.COLUMNS}) FROM STDIN (FORMAT BINARY)"
                ) as copy:
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
        self.aggregates.committed()
