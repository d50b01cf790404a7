"""The SQLite store, the embedded default: one file, written by one worker.

Writes come in batches from one thread of the worker; reads (in `Backend`) come from the faces.
sqlite3's errors become the store's in `_translated`, and nowhere else.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shadowdiff.errors import StoreError, StoreUnavailable
from shadowdiff.model import apply_merge
from shadowdiff.store import schema
from shadowdiff.store.aggregates import Aggregates, migrate
from shadowdiff.store.base import Backend, Batch, Rows
from shadowdiff.store.schema import clean

LOCK_TIMEOUT = 10.0
"""Seconds one statement waits for another process's lock before the write is retried."""
MIGRATION_WAIT = 600.0
"""Seconds an opener waits for another process's migration of an old store."""


@contextmanager
def _translated(opening: str | None = None) -> Iterator[None]:
    """sqlite3's errors as the store's, as httpx's `map_httpcore_exceptions` does. While
    opening the store at path `opening`, a database error means no readable store. Afterwards
    an OperationalError (locked or busy past the timeout, a disk I/O error, a full disk, a
    vanished file) may well pass: StoreUnavailable, which the recorder retries; any other is
    a StoreError. Either keeps sqlite3's message."""
    try:
        yield
    except sqlite3.Error as e:
        if opening is not None and isinstance(e, sqlite3.DatabaseError):
            raise StoreError(f"{opening}: not a readable shadowdiff store ({e})") from None
        if isinstance(e, sqlite3.OperationalError):
            raise StoreUnavailable(str(e)) from e
        raise StoreError(str(e)) from e


class _Rows:
    """A read on the store's one connection, or a write's statements (`aggregates.Cursor`)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def all(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self.db.execute(sql, args).fetchall()

    rows = all

    def stream(self, sql: str, args: Sequence[object] = ()) -> Iterator[tuple[Any, ...]]:
        yield from self.db.execute(sql, args)

    def run(self, sql: str, args: Sequence[object] = ()) -> None:
        self.db.execute(sql, args)

    def many(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        self.db.executemany(sql, rows)


def _create_private(path: str) -> None:
    """Creates the store's file readable by its owner alone (0600, whatever the umask): it
    holds whole requests and responses. SQLite gives its -wal and -shm files the mode of the
    database file. A file that exists already keeps its mode: its owner chose it."""
    if path in ("", ":memory:"):
        return  # no file: SQLite's temporary and in-memory databases
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as e:
        raise StoreError(f"{path}: cannot create the store: {e.strerror or e}") from None
    try:
        os.fchmod(fd, 0o600)  # the umask may have taken bits away
    finally:
        os.close(fd)


class SQLiteStore(Backend):
    """A SQLite store; open it with `SQLiteStore(path)`, close it with `close()`."""

    def __init__(self, path: str | Path, create: bool = True) -> None:
        self.path = str(path)
        if not create and not Path(self.path).exists():
            raise StoreError(f"{self.path}: no such store")
        if create:
            _create_private(self.path)
        with _translated(opening=self.path):
            self.db = sqlite3.connect(self.path, check_same_thread=False, timeout=LOCK_TIMEOUT)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.create_function("shadowdiff_apply_merge", 3, apply_merge, deterministic=True)
            self._check_schema(create)
        self._rows = _Rows(self.db)
        self.aggregates = Aggregates(key=clean, one_statement=False)

    def _check_schema(self, create: bool) -> None:
        tables = {
            r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        if "meta" not in tables:
            if tables or not create:
                raise StoreError(f"{self.path}: not a shadowdiff store")
            with self.db:
                self.db.executescript(schema.SCHEMA)
                self.db.execute(
                    "INSERT INTO meta VALUES ('schema_version', ?)", (str(schema.SCHEMA_VERSION),)
                )
            return
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if schema.must_migrate(self.path, row[0] if row else "unknown"):
            self._migrate()
        columns = self.db.execute(
            "SELECT m.name, c.name FROM sqlite_master AS m, pragma_table_info(m.name) AS c"
            " WHERE m.type = 'table'"
        )
        schema.check_complete(self.path, columns)

    def _migrate(self) -> None:
        """The aggregates and the new version, in one transaction that holds the write lock
        from its start: a second process opening the old store at once waits, then finds it
        migrated."""
        self.db.execute(f"PRAGMA busy_timeout = {round(MIGRATION_WAIT * 1000)}")
        try:
            self.db.executescript(schema.SCHEMA)  # every statement of it is idempotent
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row and row[0] != str(schema.SCHEMA_VERSION):
                if row[0] in schema.WITHOUT_AGGREGATES:
                    migrate(_Rows(self.db), "(random() / 18446744073709551616.0 + 0.5)")
                self.db.execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema_version'",
                    (str(schema.SCHEMA_VERSION),),
                )
        except BaseException:
            self.db.rollback()
            raise
        finally:
            self.db.execute(f"PRAGMA busy_timeout = {round(LOCK_TIMEOUT * 1000)}")
        self.db.commit()

    @contextmanager
    def _read(self) -> Iterator[Rows]:
        with _translated():
            yield self._rows

    def close(self) -> None:
        with _translated():
            self.db.close()

    def _write(self, batch: Batch) -> None:
        run, instance = batch.run, batch.instance
        rows = [
            schema.exchange_row(run, instance, x, key=clean, text=clean)
            for x in schema.stored(batch.exchanges)
        ]
        diffs = schema.divergence_rows(run, instance, batch.exchanges, key=clean, text=clean)
        marks = ", ".join("?" * (11 + 5 * len(schema.SIDES)))
        with _translated(), self.db:
            for old, new in batch.merges:  # stored routes are clean: so must the prefixes be
                self._merge(run, clean(old), clean(new))
            self.aggregates.write(self._rows, run, instance, batch.exchanges, batch.merges)
            self.db.executemany(f"INSERT INTO exchanges ({schema.COLUMNS}) VALUES ({marks})", rows)
            self.db.executemany(
                "INSERT INTO divergences VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", diffs
            )
            self.db.executemany(
                "INSERT OR REPLACE INTO examples VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (run, clean(route), clean(path), slot, instance, flow)
                    for route, path, slot, flow in batch.examples
                ],
            )
            self.db.executemany(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(run, instance, e.ts, e.kind, clean(e.actor), e.old, e.new) for e in batch.events],
            )
            self.db.executemany(
                "INSERT INTO counts VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (run, instance, source, name) DO UPDATE SET value = excluded.value",
                [
                    (run, instance, source, name, value)
                    for source, named in batch.counts.items()
                    for name, value in named.items()
                ],
            )
        self.aggregates.committed()

    def _change(
        self, statements: list[tuple[str, Sequence[object]]], unbounded: bool = False
    ) -> int:
        with _translated(), self.db:
            return sum(self.db.execute(sql, args).rowcount for sql, args in statements)

    def _merge(self, run: str, old: str, new: str) -> None:
        """Regroups what is stored under route prefix `old` as `new` (a collapsed segment)."""
        for update in ("UPDATE exchanges", "UPDATE divergences", "UPDATE OR REPLACE examples"):
            self.db.execute(
                f"{update} SET route = shadowdiff_apply_merge(route, ?, ?)"
                " WHERE run = ? AND (route = ? OR route LIKE ? ESCAPE '\\')",
                (old, new, run, old, schema.like_prefix(old)),
            )
