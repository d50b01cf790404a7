"""The SQLite store: round trip, counters, and refusing stores it must not touch."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest
from helpers import aggregates

from shadowdiff.model import Divergence, Event, Exchange, Outcome, RequestSnapshot
from shadowdiff.store import SCHEMA_VERSION, SQLiteStore, StoreError, StoreUnavailable, open_store


def exchange(i: int, secondary: bool = False) -> Exchange:
    request = RequestSnapshot(
        f"f{i}", "POST", f"/u/{i}?q=1", [(b"X-A", b"\xe9")], b"\x00\xff", 10.0 + i
    )
    return Exchange(
        request=request,
        primary=Outcome(200, [(b"Content-Type", b"application/json")], b'{"a":1}', 0.01),
        shadow=Outcome(error="timeout", latency=5.0),
        secondary=Outcome(200, [], b"", 0.02) if secondary else None,
        route="POST /u/{id}",
        shadow_diffs=[Divergence("outcome", "shadow_error:timeout", "response", "timeout")],
    )


def test_round_trip(tmp_path):
    path = tmp_path / "s.db"
    with SQLiteStore(path) as store:
        store.write(
            "r1",
            "h:1",
            [exchange(1), exchange(2, secondary=True)],
            {"tap": {"seen": 5}, "worker": {"recorded": 2}},
        )
        store.write("r1", "h:1", [], {"tap": {"seen": 7}, "worker": {"recorded": 2}})
        store.write("r1", "h:2", [], {"tap": {"seen": 1}})
        store.write("r2", "h:1", [exchange(3)], {"worker": {"recorded": 1}})
    with SQLiteStore(path, create=False) as store:
        assert store.runs() == ["r1", "r2"]
        assert store.counts("r1") == {"recorded": 2, "seen": 8}  # latest per instance, summed
        got = list(store.exchanges("r1"))
        assert got == [exchange(1), exchange(2, secondary=True)]
        # A failed side has no latency; every exchange has the time it was sampled.
        assert list(store.latency_sample("r1")) == [
            ("POST /u/{id}", 11.0, 0.01, None, None),
            ("POST /u/{id}", 12.0, 0.01, None, 0.02),
        ]
        assert store.statuses("r1") == {"POST /u/{id}": {("200", "timeout"): 2}}
        assert store.routes("r1") == {
            "POST /u/{id}": {
                "exchanges": 2,
                "with_secondary": 1,
                "matched": 0,
                "ignored": 0,
                "divergent": 2,
                "primary_errors": 0,
                "shadow_errors": 2,
            }
        }


def test_missing_store_is_an_error(tmp_path):
    with pytest.raises(StoreError, match="no such store"):
        SQLiteStore(tmp_path / "nope.db", create=False)


def test_not_a_database(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a readable shadowdiff store"):
        SQLiteStore(path)


def test_foreign_database_is_left_alone(tmp_path):
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE accounts (id INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="not a shadowdiff store"):
        SQLiteStore(path)


def test_other_schema_version_is_refused(tmp_path):
    path = tmp_path / "s.db"
    SQLiteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(
        StoreError, match=f"store schema version 99, this shadowdiff reads version {SCHEMA_VERSION}"
    ):
        SQLiteStore(path)


def test_version_2_store_is_upgraded_in_place(tmp_path):
    path = tmp_path / "s.db"
    with SQLiteStore(path) as store:
        store.write("r", "i", [], {"tap": {"seen": 3}})
    db = sqlite3.connect(path)
    db.execute("DROP TABLE events")
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with SQLiteStore(path, create=False) as store:
        assert store.counts("r") == {"seen": 3}
        store.write("r", "i", [], {}, events=[Event(1.0, "paused", "ops", "false", "true")])
        assert store.events("r") == [Event(1.0, "paused", "ops", "false", "true")]
    with SQLiteStore(path) as store:  # and opens again at the new version
        assert store.events("r")[0].actor == "ops"


def test_version_3_store_gets_its_aggregates_from_its_rows(tmp_path):
    """Version 4 judges from aggregates: a version 3 store (rows only) gets them computed
    from its exchanges as it is opened, the same as if they had been kept all along."""
    path = tmp_path / "s.db"
    with SQLiteStore(path) as store:
        store.write("r", "i", [exchange(1), exchange(2, secondary=True)], {})
        store.write("r", "j", [exchange(3)], {})
        kept = aggregates(store, "r")
    db = sqlite3.connect(path)
    for table in ("route_stats", "route_statuses", "path_stats", "signatures", "latency_sample"):
        db.execute(f"DROP TABLE {table}")
    db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with SQLiteStore(path, create=False) as store:
        assert aggregates(store, "r") == kept
        assert kept[0]["POST /u/{id}"]["exchanges"] == 3


def test_version_4_store_gets_the_incidents_table_and_keeps_its_aggregates(tmp_path):
    """Version 5 adds incidents: a version 4 store gains the (empty) table, and its
    aggregates are kept as they are, not computed again on top."""
    path = tmp_path / "s.db"
    with SQLiteStore(path) as store:
        store.write("r", "i", [exchange(1), exchange(2, secondary=True)], {})
        kept = aggregates(store, "r")
    db = sqlite3.connect(path)
    db.execute("DROP TABLE incidents")
    db.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with SQLiteStore(path, create=False) as store:
        assert aggregates(store, "r") == kept
        assert store.incidents("r") == []
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta").fetchall() == [(str(SCHEMA_VERSION),)]
    db.close()


def test_a_locked_store_is_unavailable(tmp_path):
    """Locked past the timeout (or busy, or a disk error): StoreUnavailable, which the
    recorder retries, with sqlite3's message; never a sqlite3 error."""
    path = tmp_path / "s.db"
    with SQLiteStore(path) as store:
        blocker = sqlite3.connect(path, timeout=0)
        blocker.execute("BEGIN EXCLUSIVE")
        store.db.execute("PRAGMA busy_timeout = 0")
        with pytest.raises(StoreUnavailable, match="^database is locked$") as caught:
            store.write("r", "i", [exchange(1)], {"tap": {"seen": 1}})
        assert not isinstance(caught.value, sqlite3.Error)
        blocker.rollback()
        blocker.close()
        store.write("r", "i", [exchange(1)], {"tap": {"seen": 1}})
        assert store.counts("r") == {"seen": 1}


def test_other_sqlite_errors_are_store_errors(tmp_path):
    store = open_store(str(tmp_path / "s.db"))
    store.close()
    with pytest.raises(StoreError, match="closed database") as caught:
        store.counts("r")
    assert not isinstance(caught.value, StoreUnavailable | sqlite3.Error)


@pytest.mark.parametrize(
    "damage, missing",
    [
        (
            [f"DROP TABLE {t}" for t in ("exchanges", "divergences", "examples", "counts")],
            "table exchanges",
        ),
        (["DROP TABLE events", "CREATE TABLE events (run TEXT)"], "column events.actor"),
    ],
)
def test_a_store_claiming_this_schema_without_its_tables_is_refused(tmp_path, damage, missing):
    """`meta` says this version but the tables are not all there: refused at once, not retried
    as "no such table" for every batch (audit finding 16)."""
    path = tmp_path / "s.db"
    SQLiteStore(path).close()
    db = sqlite3.connect(path)
    for statement in damage:
        db.execute(statement)
    db.commit()
    db.close()
    for create in (True, False):
        with pytest.raises(StoreError) as caught:
            SQLiteStore(path, create=create)
        assert str(caught.value).startswith(
            f"{path}: not a complete shadowdiff store"
            f" (schema version {SCHEMA_VERSION} without {missing}"
        )


def test_a_new_store_is_private_whatever_the_umask(tmp_path):
    """It holds whole requests and responses: 0600, its -wal and -shm too (audit finding 18);
    a store that exists keeps the mode its owner gave it."""
    path = tmp_path / "s.db"
    old = os.umask(0)
    try:
        with SQLiteStore(path) as store:
            store.write("r", "i", [exchange(1)], {"tap": {"seen": 1}})
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        assert modes == {"s.db": 0o600, "s.db-wal": 0o600, "s.db-shm": 0o600}
        shared = tmp_path / "shared.db"
        SQLiteStore(shared).close()
        shared.chmod(0o640)
        with SQLiteStore(shared) as store:
            store.write("r", "i", [exchange(1)], {})
        assert stat.S_IMODE(shared.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_a_store_that_cannot_be_created_is_one_line(tmp_path):
    with pytest.raises(StoreError, match=r"nowhere/s.db: cannot create the store: No such file"):
        SQLiteStore(tmp_path / "nowhere" / "s.db")
