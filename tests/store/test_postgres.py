"""The PostgreSQL store: the same answers as SQLite, across instances, through outages.

Against a real server: `SHADOWDIFF_TEST_PG` (a URL, set by CI), or else a throwaway cluster
this module starts with `.ci/postgres`. No server is a failure, never a skip. Each test works
in a schema of its own (the URL's search_path), so no test sees another's data.
"""

from __future__ import annotations

import dataclasses
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import aggregates

from conftest import Cluster, schema
from shadowdiff.cli.demo import free_port
from shadowdiff.config import Config
from shadowdiff.judge.evidence import document
from shadowdiff.model import (
    Divergence,
    Event,
    Exchange,
    Incident,
    Outcome,
    ReleaseState,
    RequestSnapshot,
    apply_merge,
)
from shadowdiff.store import (
    SCHEMA_VERSION,
    SQLiteStore,
    Store,
    StoreError,
    StoreUnavailable,
    masked,
    open_store,
)
from shadowdiff.store import postgres as pgstore
from shadowdiff.store.postgres import PostgresStore
from shadowdiff.worker.recorder import Recorder


def query(url: str, text: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(text, args)
        return cursor.fetchall() if cursor.description else []


ROUTES = ["GET /users/{id}", "POST /orders", "GET /é/x", "GET /Zebra", "GET /a_b"]
"""Ties and non-ASCII: the reads must sort them bytewise, as SQLite does."""


def exchange(i: int, route: str | None = None) -> Exchange:
    """Exchange number i: matched, shadow timeout, divergent or ignored, some with a
    secondary, with strings a hostile client could send (a lone surrogate)."""
    request = RequestSnapshot(
        f"f{i}",
        "GET",
        f"/p/{i}?q=\udcff",
        [(b"X-A", b"\xe9\x00"), (b"X-A", b"2")],
        bytes([i % 256, 0]) * (i % 5),
        1_732_700_000.123456 + i / 7,
    )
    primary = Outcome(200, [(b"Content-Type", b"application/json")], b'{"a":%d}' % i, i / 100)
    shadow_diffs: list[Divergence] = []
    if i % 4 == 0:
        shadow = Outcome(200, [(b"Content-Type", b"application/json")], b'{"a":%d}' % i, i / 90)
    elif i % 4 == 1:
        shadow = Outcome(error="timeout", latency=5.0)
        shadow_diffs = [Divergence("outcome", "shadow_error:timeout", "response", "timeout")]
    elif i % 4 == 2:
        shadow = Outcome(500, [], b'{"a":"cafe"}', i / 80)
        shadow_diffs = [
            Divergence("status", "changed", "200", "500"),
            Divergence("body:$.a", "type" if i % 3 else "changed", str(i), "caf\udce9"),
        ]
    else:
        shadow = Outcome(200, [], b'{"a":0}', i / 70)
        shadow_diffs = [Divergence("body:$.a", "changed", str(i), "0", rule="ignore")]
    secondary = Outcome(200, [], b'{"a":1}', i / 95) if i % 3 == 0 else None
    return Exchange(
        request,
        primary,
        shadow,
        secondary,
        route=route or ROUTES[i % len(ROUTES)],
        shadow_diffs=shadow_diffs,
        secondary_diffs=[Divergence("body:$.a", "changed", str(i), "1")] if secondary else [],
    )


def write_history(store: Store) -> None:
    """Several runs and instances, examples, events, counters updated, routes merged."""
    store.write(
        "r1",
        "a",
        [exchange(i) for i in range(20)],
        {"tap": {"seen": 50, "sampled": 20}, "store": {"recorded": 20}},
        examples=[("GET /users/{id}", "status", 0, "f0"), ("POST /orders", "outcome", 0, "f1")],
        events=[Event(5.0, "paused", "ops\udcff", "false", "true")],
    )
    store.write(
        "r1",
        "b",
        [exchange(i) for i in range(20, 30)],
        {"tap": {"seen": 30, "sampled": 10}, "store": {"recorded": 10}},
        examples=[("POST /orders", "outcome", 1, "f21"), ("POST /orders", "outcome", 0, "f26")],
        events=[Event(1.0, "rate", "alice", "0.1", "0.5"), Event(5.0, "resumed", "b", "1", "0")],
    )
    store.write(
        "r1",
        "a",
        [exchange(60 + i, r) for i, r in enumerate(["GET /u/al", "GET /u/al/x", "GET /u/alx"])]
        + [exchange(40, "GET /u/abx"), exchange(41, "GET /u/a_x/y"), exchange(42, "GET /u/{id}")],
        {"tap": {"seen": 60, "sampled": 26}, "store": {"recorded": 26}},
        examples=[("GET /u/al", "body:$.a", 0, "f62"), ("GET /u/{id}", "body:$.a", 0, "f42")],
    )
    # The prefix `GET /u/al` collapses; so does `GET /u/a_x`, whose `_` LIKE must not widen.
    store.write(
        "r1",
        "a",
        [exchange(50, "GET /u/{id}")],
        {"tap": {"seen": 61, "sampled": 27}, "store": {"recorded": 27}},
        merges=[("GET /u/al", "GET /u/{id}"), ("GET /u/a_x", "GET /u/{id}")],
    )
    store.write("r0", "a", [exchange(99)], {"store": {"recorded": 1}})
    store.write("Z", "a", [], {"tap": {"seen": 3}})


def reads(store: Store) -> dict[str, Any]:
    """Every read method's answer, in the order it gives."""
    out: dict[str, Any] = {"runs": store.runs()}
    for run in out["runs"]:
        rows = list(store.divergence_rows(run))
        out[run] = {
            "counts": list(store.counts(run).items()),
            "instance_counts": list(store.instance_counts(run).items()),
            "routes": list(store.routes(run).items()),
            "statuses": list(store.statuses(run).items()),
            "latency_sample": list(store.latency_sample(run)),
            "path_counts": store.path_counts(run),
            "signatures": store.signatures(run),
            "divergence_rows": rows,
            "events": store.events(run),
            "recent": store.recent_divergences(run, 4),
            "exchanges": list(store.exchanges(run)),
            "one": list(store.exchanges(run, "a", "f2")),
            "examples": {(r[0], r[3]): store.examples(run, r[0], r[3]) for r in rows},
        }
    return out


def test_both_backends_are_stores(url: str, tmp_path: Path) -> None:
    """The interface is the Protocol `Store`: mypy checks that each backend is one, here and
    where `open_store` returns them, without a cast; a method missing or of another
    signature fails the type check."""
    stores: list[Store] = [SQLiteStore(tmp_path / "s.db"), PostgresStore(url)]
    for store in stores:
        with store as same:
            assert same is store and same.runs() == []


def test_same_answers_as_sqlite(url: str, tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "s.db") as lite, PostgresStore(url) as pg:
        write_history(lite)
        write_history(pg)
        expected, got = reads(lite), reads(pg)
    assert got == expected
    assert expected["runs"] == ["Z", "r0", "r1"]
    routes = [route for route, _ in expected["r1"]["routes"]]
    assert "GET /u/al/x" not in routes and "GET /u/{id}/x" in routes and "GET /u/alx" in routes
    moved = expected["r1"]["examples"][("GET /u/{id}", "body:$.a")]
    assert [x.request.flow_id for x in moved] == ["f62"]  # the moved example took the slot


def test_schema_is_sqlites(url: str, tmp_path: Path) -> None:
    """Same tables and columns, plus the rowid SQLite has implicitly."""
    SQLiteStore(tmp_path / "s.db").close()
    PostgresStore(url).close()
    with SQLiteStore(tmp_path / "s.db") as lite:
        tables = [
            r[0] for r in lite.db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        expected = {t: [r[1] for r in lite.db.execute(f"PRAGMA table_info({t})")] for t in tables}
    got: dict[str, list[str]] = {}
    for table, column in query(
        url,
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position",
    ):
        if column != "rowid":
            got.setdefault(table, []).append(column)
    assert got == expected
    assert query(url, "SELECT * FROM meta") == [("schema_version", str(SCHEMA_VERSION))]


def books(n: int) -> dict[str, dict[str, int]]:
    """Counters of an instance that saw, sampled and recorded n requests."""
    return {"tap": {"seen": n, "sampled": n}, "store": {"recorded": n}}


def test_instances_add_up_to_one_proxy(url: str) -> None:
    """Two proxies that each saw half of the traffic: the same counts, routes and verdict
    as one proxy that saw all of it."""
    cfg = Config(shadow="http://127.0.0.1:1")
    with PostgresStore(url) as store:
        for start in range(0, 80, 10):
            batch = [exchange(i) for i in range(start, start + 10)]
            store.write("one", "solo", batch, books(start + 10))
            half = "a" if start % 20 == 0 else "b"
            store.write(
                "two",
                half,
                [exchange(i) for i in range(start, start + 10)],
                books(start // 20 * 10 + 10),
            )
        assert (
            store.counts("two")
            == store.counts("one")
            == {"recorded": 80, "sampled": 80, "seen": 80}
        )
        assert store.instance_counts("two") == {
            half: {"recorded": 40, "sampled": 40, "seen": 40} for half in "ab"
        }
        assert store.routes("two") == store.routes("one")
        assert sum(r["exchanges"] for r in store.routes("two").values()) == 80
        assert store.statuses("two") == store.statuses("one")
        assert list(store.latency_sample("two")) == list(store.latency_sample("one"))
        keys = {row[2].split()[0] for row in store.divergence_rows("two")}
        assert keys == {"a", "b"}
        one, _, verdict_one = document(store, "one", cfg)
        two, _, verdict_two = document(store, "two", cfg)
    assert verdict_two == verdict_one
    for doc in (one, two):
        del doc["run"], doc["generated_at"]
    assert two == one


@pytest.mark.parametrize(
    ("route", "old", "new"),
    [
        ("GET /u/alice", "GET /u/alice", "GET /u/{id}"),
        ("GET /u/alice/x/y", "GET /u/alice", "GET /u/{id}"),
        ("GET /u/alicex", "GET /u/alice", "GET /u/{id}"),
        ("GET /u", "GET /u/alice", "GET /u/{id}"),
        ("GET /u/a_b%/é/x", "GET /u/a_b%", "GET /u/{id}"),
        ("GET /u/axb/x", "GET /u/a_b", "GET /u/{id}"),
        ("GET /é/ü", "GET /é", "GET /{id}"),
        ("GET /", "GET ", "POST "),
        ("", "", "x"),
    ],
)
def test_merge_function_is_apply_merge(url: str, route: str, old: str, new: str) -> None:
    PostgresStore(url).close()
    assert query(url, "SELECT shadowdiff_apply_merge(%s, %s, %s)", route, old, new) == [
        (apply_merge(route, old, new),)
    ]


def test_schema_created_by_many_at_once(url: str) -> None:
    """Proxies starting together (processes and threads): one schema, no error."""
    at = time.time() + 2.0
    child = (
        "import sys, time\n"
        "from shadowdiff.store.postgres import PostgresStore\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "with PostgresStore(sys.argv[1]) as store:\n"
        "    store.write('r', sys.argv[3], [], {'tap': {'seen': 1}})\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", child, url, str(at), f"p{n}"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(6)
    ]
    errors: list[BaseException] = []

    def open_and_write(n: int) -> None:
        time.sleep(max(0.0, at - time.time()))
        try:
            with PostgresStore(url) as store:
                store.write("r", f"t{n}", [], {"tap": {"seen": 1}})
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=open_and_write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for process in processes:
        _, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
    assert errors == []
    assert query(url, "SELECT * FROM meta") == [("schema_version", str(SCHEMA_VERSION))]
    with PostgresStore(url, create=False) as store:
        assert store.counts("r") == {"seen": 10}


def test_other_schema_version_is_refused(url: str) -> None:
    PostgresStore(url).close()
    query(url, "UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(
        StoreError, match=f"store schema version 99, this shadowdiff reads version {SCHEMA_VERSION}"
    ):
        PostgresStore(url)


@pytest.mark.parametrize(
    "damage, missing",
    [
        (["DROP TABLE exchanges, divergences, examples, counts"], "table exchanges"),
        (["ALTER TABLE events DROP COLUMN actor"], "column events.actor"),
    ],
)
def test_a_store_claiming_this_schema_without_its_tables_is_refused(
    url: str, damage: list[str], missing: str
) -> None:
    """`meta` says this version but the tables are not all there: refused at once, not retried
    for every batch (audit finding 16); a table of that name in another schema of the
    database does not count."""
    PostgresStore(url).close()
    for statement in damage:
        query(url, statement)
    query(url, "CREATE TABLE public.exchanges (id INTEGER)")
    try:
        for create in (True, False):
            with pytest.raises(StoreError) as caught:
                PostgresStore(url, create=create)
            assert str(caught.value).startswith(
                f"{masked(url)}: not a complete shadowdiff store"
                f" (schema version {SCHEMA_VERSION} without {missing})"
            )
    finally:
        query(url, "DROP TABLE public.exchanges")


def test_version_2_store_is_upgraded_in_place(url: str) -> None:
    with PostgresStore(url) as store:
        store.write("r", "i", [], {"tap": {"seen": 3}})
    query(url, "DROP TABLE events")
    query(url, "UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    with PostgresStore(url, create=False) as store:
        assert store.counts("r") == {"seen": 3}
        store.write("r", "i", [], {}, events=[Event(1.0, "paused", "ops", "false", "true")])
        assert store.events("r") == [Event(1.0, "paused", "ops", "false", "true")]
    assert query(url, "SELECT value FROM meta") == [(str(SCHEMA_VERSION),)]


def test_version_3_store_gets_its_aggregates_from_its_rows(url: str) -> None:
    with PostgresStore(url) as store:
        store.write("r", "a", [exchange(1), exchange(2)], {})
        store.write("r", "b", [exchange(3, route="GET /v/{id}")], {})
        kept = aggregates(store, "r")
    for table in ("route_stats", "route_statuses", "path_stats", "signatures", "latency_sample"):
        query(url, f"DROP TABLE {table}")
    query(url, "UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    with PostgresStore(url, create=False) as store:
        assert aggregates(store, "r") == kept
    assert sum(r["exchanges"] for r in kept[0].values()) == 3


def test_version_4_store_gets_the_incidents_table_and_keeps_its_aggregates(url: str) -> None:
    with PostgresStore(url) as store:
        store.write("r", "a", [exchange(1), exchange(2)], {})
        kept = aggregates(store, "r")
    query(url, "DROP TABLE incidents")
    query(url, "UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    with PostgresStore(url, create=False) as store:
        assert aggregates(store, "r") == kept
        assert store.incidents("r") == []
    assert query(url, "SELECT value FROM meta") == [(str(SCHEMA_VERSION),)]


def test_two_proxies_open_one_incident_and_see_each_other(url: str) -> None:
    """The fleet's incidents and heartbeats on PostgreSQL: one open per key, whoever asks
    first; moments set once; the proxies heard from lately."""
    incident = Incident("r", "k", 0, "GET /a", "divergence_rate", "t", "error", "s", 1.0, 2.0)
    with PostgresStore(url) as one, PostgresStore(url) as two:
        opened = one.open_incident(incident)
        assert opened is not None and opened.seq == 1
        assert two.open_incident(incident) is None
        assert two.update_incident("r", "k", 1, "acked", 3.0, "ada\x00\udcff")
        assert not one.update_incident("r", "k", 1, "acked", 4.0, "bob")
        assert one.update_incident("r", "k", 1, "resolved", 5.0, "why")
        assert two.open_incident(incident).seq == 2  # type: ignore[union-attr]
        [first, second] = one.incidents("r")
        assert (first.acked, first.acked_by, second.resolved) == (3.0, "ada\\x00\\udcff", None)
        one.heartbeat("r", "p1", 10.0, None)
        two.heartbeat("r", "p2", 10.0, (9.0, "paused by ops"))
        one.heartbeat("r", "p1", 11.0, (10.5, "rate 0 by ops"))
        assert one.proxies("r", 10.5) == [("p1", 10.5, "rate 0 by ops")]
        assert two.proxies("r", 0.0) == [
            ("p1", 10.5, "rate 0 by ops"),
            ("p2", 9.0, "paused by ops"),
        ]
        two.gone("r", "p2")
        assert [p for p, _, _ in one.proxies("r", 0.0)] == ["p1"]


def test_shared_database_is_fine_but_no_store_is_not_created_on_read(url: str) -> None:
    query(url, "CREATE TABLE accounts (id INTEGER)")
    with pytest.raises(StoreError, match="no such store"):
        PostgresStore(url, create=False)
    with PostgresStore(url) as store:
        store.write("r", "i", [exchange(1)], {})
    assert query(url, "SELECT count(*) FROM accounts") == [(0,)]


def test_hostile_strings_are_stored(url: str) -> None:
    """NUL (which PostgreSQL refuses in text), lone surrogates and keys too long for an
    index: the batch goes in, each string as its escape or cut with a hash."""
    x = exchange(2, route="GET /\x00\udcff")
    x.request.method = "G\x00T"
    x.shadow_diffs = [Divergence("body:$.\x00", "changed", "a\x00\udcff", "\x00", "r\x00")]
    long = "GET /" + secrets.token_hex(3000)  # random hex: no compression gets it under 2.7 kB
    other = long[:-1] + ("0" if long[-1] != "0" else "1")
    with PostgresStore(url) as store:
        store.write(
            "r\x00",
            "i\x00",
            [x, exchange(3, route=long), exchange(4, route=other)],
            {"tap\x00": {"seen\x00": 1}},
            examples=[("GET /\x00\udcff", "body:$.\x00", 0, "f2")],
            events=[Event(1.0, "k\x00", "\udcff\x00", "\x00", "\udcff")],
        )
        (run,) = store.runs()
        assert run == "r\\x00"
        assert store.counts(run) == {"seen\\x00": 1}
        assert store.events(run) == [Event(1.0, "k\\x00", "\\udcff\\x00", "\\x00", "\\udcff")]
        got = store.examples(run, "GET /\\x00\\udcff", "body:$.\\x00")
        assert [g.request.method for g in got] == ["G\\x00T"]
        assert got[0].shadow_diffs == [
            Divergence("body:$.\\x00", "changed", "a\\x00\\udcff", "\\x00", "r\\x00")
        ]
        keys = [route for route in store.routes(run) if route.startswith("GET /" + long[5:50])]
    assert len(keys) == 2 and all(len(k.encode()) <= pgstore.KEY_BYTES for k in keys)


def test_open_store_picks_the_backend(url: str, tmp_path: Path) -> None:
    with open_store(str(tmp_path / "s.db")) as lite:
        assert isinstance(lite, SQLiteStore)
    with open_store(url) as pg:
        assert isinstance(pg, PostgresStore)
    with open_store(url.replace("postgresql://", "postgres://", 1)) as pg:
        assert isinstance(pg, PostgresStore)
    secret = url.replace("postgresql://postgres@", "postgresql://postgres:s3cret@", 1)
    with open_store(secret + "&password=s3cret") as pg:  # trust auth takes any password
        assert "s3cret" not in pg.path and "postgres:***@" in pg.path


def test_unreachable_database_is_a_clear_error_at_start() -> None:
    started = time.monotonic()
    with pytest.raises(StoreError, match="database unavailable.*refused") as caught:
        PostgresStore(f"postgresql://u:pw@127.0.0.1:{free_port()}/db")
    assert isinstance(caught.value, StoreUnavailable)
    assert "pw" not in str(caught.value)
    assert time.monotonic() - started < 5


def test_outage_fails_fast_and_loses_nothing(own_cluster: Cluster) -> None:
    counts = {"tap": {"seen": 1}}
    with schema(own_cluster.url, "outage") as url, PostgresStore(url) as store:
        store.write("r", "i", [exchange(1)], counts)
        own_cluster.halt()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.write("r", "i", [exchange(2)], counts)
        with pytest.raises(StoreUnavailable):
            store.counts("r")
        assert time.monotonic() - started < 10  # two calls, each bounded by CONNECT_TIMEOUT
        own_cluster.start()
        store.write("r", "i", [exchange(2)], {"tap": {"seen": 2}})
        assert [x.request.flow_id for x in store.exchanges("r")] == ["f1", "f2"]
        assert store.counts("r") == {"seen": 2}


def test_recorder_rides_out_an_outage(own_cluster: Cluster) -> None:
    """The recorder's retry path, unchanged: it keeps the batch and writes it later."""
    cfg = Config(shadow="http://127.0.0.1:1")
    with schema(own_cluster.url, "recorder") as url, PostgresStore(url) as store:
        recorder = Recorder(cfg, "i", store)
        recorder.record([exchange(1)], {"tap": {"seen": 1}})
        own_cluster.halt()
        recorder.record([exchange(2)], {"tap": {"seen": 2}})
        assert recorder.last_error and len(recorder.unwritten) == 1
        own_cluster.start()
        recorder.record([exchange(3)], {"tap": {"seen": 3}})
        assert recorder.last_error is None and not recorder.unwritten
        assert [x.request.flow_id for x in store.exchanges(cfg.run)] == ["f1", "f2", "f3"]
        assert store.counts(cfg.run)["recorded"] == 3


def test_other_errors_are_store_errors_not_psycopgs(url: str) -> None:
    """A write or read the database refuses for good: a StoreError (the recorder drops the
    batch), neither StoreUnavailable (which it would retry forever) nor a psycopg error."""
    with PostgresStore(url) as store:
        store.write("r", "i", [exchange(1)], {"tap": {"seen": 1}})
        query(url, "DROP TABLE events")
        for call in (
            lambda: store.write("r", "i", [], {}, events=[Event(1.0, "k", "a", "o", "n")]),
            lambda: store.events("r"),
        ):
            with pytest.raises(StoreError, match='relation "events" does not exist') as caught:
                call()
            assert not isinstance(caught.value, StoreUnavailable | psycopg.Error)
        assert store.counts("r") == {"seen": 1}


def test_slow_database_times_out(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write stuck behind a lock is cancelled by the server, and nothing of it is kept."""
    monkeypatch.setattr(pgstore, "STATEMENT_TIMEOUT", 1.0)
    with PostgresStore(url) as store, psycopg.connect(url) as blocker:
        blocker.execute("LOCK TABLE counts IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="statement timeout"):
            store.write("r", "i", [exchange(1)], {"tap": {"seen": 1}})
        assert time.monotonic() - started < 5
        blocker.rollback()
        store.write("r", "i", [exchange(1)], {"tap": {"seen": 1}})
        assert len(list(store.exchanges("r"))) == 1


def test_write_speed(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Printed, not asserted: rows/s for 10 batches of 500 exchanges (1 kB bodies)."""
    body = b'{"items": [%s]}' % b",".join(b'{"id": %d, "name": "item"}' % i for i in range(40))
    batches = [[exchange(b * 500 + i) for i in range(500)] for b in range(10)]
    for batch in batches:
        for x in batch:
            x.primary.body = x.shadow.body = body
    speeds = {}
    with SQLiteStore(tmp_path / "s.db") as lite, PostgresStore(url) as pg:
        for name, store in (("sqlite", lite), ("postgresql", pg)):
            started = time.perf_counter()
            for n, batch in enumerate(batches):
                store.write("speed", "i", batch, {"store": {"recorded": 500 * (n + 1)}})
            speeds[name] = 5000 / (time.perf_counter() - started)
        assert pg.counts("speed") == {"recorded": 5000}
    with capsys.disabled():
        print(
            "\nwrite speed, 10 batches of 500 exchanges: "
            + ", ".join(f"{name} {speed:,.0f} rows/s" for name, speed in speeds.items())
        )


def test_two_proxies_move_a_release_once(url: str) -> None:
    """The release's state on PostgreSQL: the first to start it wins, a change made on a
    stale version is refused, and a rolled-back store migrated from version 5 keeps it."""
    first = ReleaseState(0, "running", 1.0, 0, "proxy", "started")
    with PostgresStore(url) as one, PostgresStore(url) as two:
        assert one.move_release("r", first)
        assert not two.move_release("r", dataclasses.replace(first, actor="other"))
        state = two.release("r")
        assert state == dataclasses.replace(first, version=1)
        promoted = dataclasses.replace(state, stage=1, actor="ada\x00\udcff")
        assert one.move_release("r", promoted)
        assert not two.move_release("r", dataclasses.replace(state, state="rolled_back"))
        now = one.release("r")
        assert now is not None and (now.stage, now.version, now.actor) == (1, 2, "ada\\x00\\udcff")
        assert one.release("other") is None
    query(url, "DROP TABLE releases")
    query(url, "UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    with PostgresStore(url, create=False) as store:
        assert store.release("r") is None
