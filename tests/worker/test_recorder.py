"""The recorder: routes, compares, keeps examples, writes, and survives a failing store."""

from __future__ import annotations

import copy
import sqlite3

import factories
from factories import outcome, snapshot

from shadowdiff.compare.outcomes import MAX_DIVERGENCES
from shadowdiff.config import load_config
from shadowdiff.counts import imbalance
from shadowdiff.judge import document
from shadowdiff.model import Exchange
from shadowdiff.store import SQLiteStore
from shadowdiff.worker.recorder import EXAMPLE_PATHS, Recorder

JSON = [(b"Content-Type", b"application/json")]


def exchange(i: int, path: str, shadow_body: dict) -> Exchange:
    return factories.exchange(
        snapshot(f"f{i}", path=path, timestamp=float(i)), outcome({"a": 1}), outcome(shadow_body)
    )


def recorder(tmp_path, **routes) -> Recorder:
    cfg = load_config(
        None,
        {
            "shadow": "http://a:1",
            "store": str(tmp_path / "r.db"),
            "run": "r",
            **{f"routes.{k}": v for k, v in routes.items()},
            "compare.examples": 2,
        },
    )
    return Recorder(cfg, "test:1", SQLiteStore(cfg.store))


def test_compares_routes_and_keeps_examples(tmp_path):
    rec = recorder(tmp_path)
    batch = [exchange(i, f"/users/{i}", {"a": 1} if i % 2 else {"a": 2}) for i in range(10)]
    rec.record(batch, {"tap": {"seen": 10, "sampled": 10}, "worker": {}})
    counts = rec.store.counts("r")
    assert counts["compared"] == counts["recorded"] == 10 and imbalance(counts) == []
    assert (counts["matched"], counts["divergent"]) == (5, 5)
    examples = rec.store.examples("r", "GET /users/{id}", "body:$.a")
    assert len(examples) == 2 and all(x.shadow_diffs[0].path == "body:$.a" for x in examples)


def test_collapsed_routes_regroup_what_is_stored(tmp_path):
    rec = recorder(tmp_path, collapse_after=3)
    names = ["alice", "bob", "carol", "dave", "erin"]
    for i, name in enumerate(names):  # one batch each: merges reach rows already written
        rec.record([exchange(i, f"/users/{name}", {"a": 2})], {})
    assert list(rec.store.routes("r")) == ["GET /users/{id}"]
    assert {x.route for x in rec.store.exchanges("r")} == {"GET /users/{id}"}
    assert len(rec.store.examples("r", "GET /users/{id}", "body:$.a")) == 2


def test_a_failing_store_keeps_the_batch_and_compares_it_once(tmp_path):
    rec = recorder(tmp_path)
    blocker = sqlite3.connect(tmp_path / "r.db", timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    rec.store.db.execute("PRAGMA busy_timeout = 0")
    rec.record([exchange(1, "/x", {"a": 2})], {})
    assert len(rec.unwritten) == 1
    blocker.rollback()
    blocker.close()
    rec.record([exchange(2, "/x", {"a": 1})], {})
    counts = rec.store.counts("r")
    assert counts["recorded"] == counts["compared"] == 2 and not rec.unwritten
    assert (counts["divergent"], counts["matched"]) == (1, 1)


def test_a_backlog_is_written_in_chunks(tmp_path, monkeypatch):
    """An outage's backlog goes in transactions a statement time limit can hold."""
    monkeypatch.setattr("shadowdiff.worker.recorder.CHUNK", 3)
    rec = recorder(tmp_path)
    seen: list[int] = []
    rec.on_written = lambda batch: seen.append(len(batch))
    tap = {"tap": {"seen": 10, "sampled": 10}}
    rec.record([exchange(i, f"/u/{i}", {"a": 1}) for i in range(10)], tap)
    assert seen == [3, 3, 3, 1] and rec.unwritten == []
    counts = rec.store.counts("r")
    assert counts["recorded"] == 10 and imbalance(counts) == []
    assert rec.store.routes("r")["GET /u/{id}"]["exchanges"] == 10


def test_example_reservoirs_are_bounded_per_route(tmp_path):
    """Audit finding 7: a list changed in every item keeps its examples under one path
    (`[*]`), and made-up keys (a fresh one in each answer) fill at most EXAMPLE_PATHS
    reservoirs a route, where each used to keep one for ever."""
    rec = recorder(tmp_path)
    items = factories.exchange(
        snapshot("f0", path="/list"), outcome(list(range(1000))), outcome(list(range(1, 1001)))
    )
    made_up = [exchange(i, "/keys", {"a": 1, f"key{i}": 1}) for i in range(1, 3 * EXAMPLE_PATHS)]
    rec.record([items, *made_up], {})
    assert sorted(rec.reservoirs["GET /list"]) == ["body:$[*]", "body:…"]
    assert len(rec.reservoirs["GET /keys"]) == EXAMPLE_PATHS
    [kept] = rec.store.examples("r", "GET /list", "body:$[*]")
    assert kept.request.flow_id == "f0" and len(kept.shadow_diffs) == MAX_DIVERGENCES + 1
    stored = rec.store.db.execute("SELECT COUNT(*) FROM examples").fetchone()[0]
    assert stored == 2 + EXAMPLE_PATHS


def mixed(n: int) -> list[Exchange]:
    """n exchanges over three routes with a secondary: mostly matched, a real divergence on
    every 7th order, a header both the shadow and the secondary differ on (noise) on users."""
    out = []
    for i in range(n):
        route = ("users", "orders", "items")[i % 3]
        served = [*JSON, (b"X-Node", b"n%d" % (i % 2))] if route == "users" else JSON
        other = [*JSON, (b"X-Node", b"n%d" % ((i + 1) % 2))] if route == "users" else JSON
        shadow = {"a": 2} if route == "orders" and i % 7 == 0 else {"a": 1}
        out.append(
            factories.exchange(
                snapshot(f"f{i}", path=f"/{route}/{i}", timestamp=float(i)),
                outcome({"a": 1}, headers=served, latency=0.01 + (i % 5) * 1e-3),
                outcome(shadow, headers=other, latency=0.011 + (i % 3) * 1e-3),
                outcome({"a": 1}, headers=other, latency=0.0105 + (i % 4) * 1e-3),
            )
        )
    return out


def frugal(tmp_path, bodies: str | None, name: str) -> Recorder:
    settings = {
        "shadow": "http://a:1",
        "secondary": "http://b:1",
        "store": str(tmp_path / f"{name}.db"),
        "run": "r",
        "judge.min_pairs": 10,
        "storage.bodies": bodies,
    }
    cfg = load_config(None, settings)
    return Recorder(cfg, "test:1", SQLiteStore(cfg.store))


def test_frugal_bodies_report_the_same_as_keeping_every_body(tmp_path):
    """The same recorded traffic, kept whole or frugally: the same verdict, divergences, noise
    findings and examples; only what the store keeps differs."""
    traffic = mixed(600)
    reported, kept = {}, {}
    for bodies in ("all", "divergent", "examples"):
        rec = frugal(tmp_path, bodies, bodies)
        rec.rng.seed(7)  # the same exchanges take the example slots
        rec.record(copy.deepcopy(traffic), {"tap": {"seen": 600, "sampled": 600}})
        doc, extras, _ = document(rec.store, "r", rec.cfg)
        for generated in ("generated_at", "config_sha256"):
            doc.pop(generated)  # type: ignore[misc]
        reported[bodies] = (doc, extras)
        stored = list(rec.store.exchanges("r"))
        kept[bodies] = (len(stored), sum(bool(x.primary.body) for x in stored))
    assert reported["examples"] == reported["all"] == reported["divergent"]
    doc = reported["all"][0]
    orders = next(r for r in doc["routes"] if r["route"] == "GET /orders/{id}")
    users = next(r for r in doc["routes"] if r["route"] == "GET /users/{id}")
    assert (orders["divergent"], users["divergent"]) == (29, 0)  # users: noise only
    assert [f["noise"] for f in users["fields"]] == [True]
    assert reported["all"][1]["examples"]["GET /orders/{id}"]["body:$.a"]
    assert kept["all"] == (600, 600)
    # divergent: the shadow's 29 real divergences and its 200 differing X-Node headers
    # (noise, which only the judge tells apart) whole, and the matched that took an example
    # slot; examples: the same rows, without their bodies but for the examples'
    assert 229 < kept["divergent"][0] == kept["examples"][0] < 300
    assert kept["examples"][1] < kept["divergent"][1] == kept["divergent"][0]


def test_a_matched_exchange_costs_under_200_bytes_on_disk(tmp_path):
    """storage.bodies at its default: matched exchanges live on in the aggregates and the
    latency sample alone (pages and indexes included in the file sizes)."""
    sizes = {}
    for bodies in (None, "all"):
        rec = frugal(tmp_path, bodies, bodies or "default")
        for start in range(0, 20_000, 2_000):
            batch = [
                factories.exchange(
                    snapshot(f"f{i}", path=f"/users/{i}", timestamp=float(i)),
                    outcome({"id": i, "name": f"user {i}"}, latency=0.01),
                    outcome({"id": i, "name": f"user {i}"}, latency=0.011),
                    outcome({"id": i, "name": f"user {i}"}, latency=0.012),
                )
                for i in range(start, start + 2_000)
            ]
            rec.record(batch, {"tap": {"seen": start + 2_000, "sampled": start + 2_000}})
        rec.store.close()
        files = tmp_path.glob(f"{bodies or 'default'}.db*")
        sizes[bodies] = sum(f.stat().st_size for f in files) / 20_000
    assert sizes[None] <= 200 < sizes["all"], sizes


def test_max_rows_deletes_the_oldest_rows_but_the_examples(tmp_path, monkeypatch):
    """storage.max_rows caps a run's rows: the oldest go with their divergences, the rows the
    examples point at stay, and the aggregates still count every exchange."""
    monkeypatch.setattr("shadowdiff.worker.recorder.PRUNE_EVERY", 10)
    cfg = load_config(
        None,
        {
            "shadow": "http://a:1",
            "store": str(tmp_path / "r.db"),
            "run": "r",
            "storage.bodies": "all",
            "storage.max_rows": 20,
            "compare.examples": 2,
        },
    )
    rec = Recorder(cfg, "test:1", SQLiteStore(cfg.store))
    for start in range(0, 100, 10):
        batch = [
            exchange(i, f"/u/{i}", {"a": 2} if i % 5 == 0 else {"a": 1})
            for i in range(start, start + 10)
        ]
        rec.record(batch, {"tap": {"seen": start + 10, "sampled": start + 10}})
    rows = [x.request.flow_id for x in rec.store.exchanges("r")]
    examples = rec.store.examples("r", "GET /u/{id}", "body:$.a")
    matched = rec.store.examples("r", "GET /u/{id}", "matched")
    assert len(examples) == len(matched) == 2
    kept = {x.request.flow_id for x in examples + matched}
    assert kept <= set(rows) and len(rows) <= 20 + len(kept)
    assert rows[-20:] == [f"f{i}" for i in range(80, 100)]  # the newest
    assert rec.store.routes("r")["GET /u/{id}"]["exchanges"] == 100
    with sqlite3.connect(cfg.store) as db:
        orphans = db.execute(
            "SELECT COUNT(*) FROM divergences AS d WHERE NOT EXISTS (SELECT 1 FROM exchanges"
            " AS x WHERE x.instance = d.instance AND x.flow_id = d.flow_id)"
        ).fetchone()
    assert orphans == (0,)
