"""Persistence behind one interface: SQLite embedded, PostgreSQL shared by a fleet.
`open_store` picks the backend from the target (a path or a postgresql:// URL)."""

from shadowdiff.store.sqlite import SCHEMA_VERSION, Store, StoreError, masked, open_store

__all__ = ["SCHEMA_VERSION", "Store", "StoreError", "masked", "open_store"]
