"""Persistence behind one interface: SQLite embedded, PostgreSQL shared by a fleet.

`open_store` picks the backend from the target (a path or a postgresql:// URL); callers hold
the `Store` interface and see only `StoreError` and `StoreUnavailable`, never a driver's
error. Import from here, not from the submodules.
"""

from __future__ import annotations

from shadowdiff.errors import StoreError, StoreUnavailable
from shadowdiff.store.base import AggregateReads, PathRow, RunSize, SignatureRow, Store
from shadowdiff.store.schema import SCHEMA_VERSION, clean, masked
from shadowdiff.store.sqlite import SQLiteStore

__all__ = [
    "SCHEMA_VERSION",
    "AggregateReads",
    "PathRow",
    "RunSize",
    "SignatureRow",
    "SQLiteStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "clean",
    "masked",
    "open_store",
]


def open_store(target: str, create: bool = True) -> Store:
    """The store a `--store` value names: a PostgreSQL URL (`postgresql://…`, for a fleet),
    or else a SQLite file. Both satisfy `Store` (mypy checks it here, without a cast), and
    tests/store/test_postgres.py holds them to the same answers."""
    if target.startswith(("postgresql://", "postgres://")):
        from shadowdiff.store.postgres import PostgresStore  # psycopg is loaded only when asked for

        return PostgresStore(target, create)
    return SQLiteStore(target, create)
