"""The aggregates the judge reads: exact counts that add up across instances and merges, and a
bounded bottom-k latency sample that is uniform and merges exactly."""

from __future__ import annotations

import random
import sqlite3

import numpy as np
import pytest
from factories import exchange, outcome, snapshot

from shadowdiff.config import Noise
from shadowdiff.judge.noise import findings
from shadowdiff.model import COUNTED, Divergence, Exchange, Outcome
from shadowdiff.store import SQLiteStore, aggregates


def numbered(i: int, route: str = "GET /u/{id}") -> Exchange:
    """Exchange i, sampled at time i: matched, its primary a 5xx every tenth."""
    x = exchange(
        snapshot(f"f{i}", timestamp=float(i)),
        outcome({"a": 1}, status=500 if i % 10 == 0 else 200, latency=0.01 + i * 1e-6),
        outcome({"a": 1}, latency=0.02),
        route=route,
    )
    x.kept = COUNTED
    return x


@pytest.fixture
def small_sample(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(aggregates, "SAMPLE", 100)
    return 100


def test_counts_add_up_over_instances_and_batches_without_rows(tmp_path):
    with SQLiteStore(tmp_path / "s.db") as store:
        for start in range(0, 300, 50):
            instance = "a" if start < 150 else "b"
            store.write("r", instance, [numbered(i) for i in range(start, start + 50)], {})
        assert store.routes("r") == {
            "GET /u/{id}": {
                "exchanges": 300,
                "with_secondary": 0,
                "matched": 300,
                "ignored": 0,
                "divergent": 0,
                "primary_errors": 30,
                "shadow_errors": 0,
            }
        }
        assert store.statuses("r") == {"GET /u/{id}": {("200", "200"): 270, ("500", "200"): 30}}
        assert list(store.exchanges("r")) == []  # counted: no row at all
        assert len(list(store.latency_sample("r"))) == 300  # under SAMPLE: every pair


def test_the_sample_is_bounded_uniform_and_in_time_order(tmp_path, small_sample):
    with SQLiteStore(tmp_path / "s.db") as store:
        store.aggregates.rng = random.Random(16)  # seeded: a 3-sigma bound fails 1 run in 370
        for start in range(0, 20_000, 1_000):
            store.write("r", "a", [numbered(i) for i in range(start, start + 1_000)], {})
        sample = list(store.latency_sample("r"))
        [(stored,)] = store.db.execute("SELECT COUNT(*) FROM latency_sample").fetchall()
    assert len(sample) == stored == small_sample  # trimmed on write, not only on read
    times = np.array([row[1] for row in sample])
    assert list(times) == sorted(times)
    # uniform over the 20,000: the mean index is 10,000 ± 3 standard errors (577 each)
    assert abs(times.mean() - 10_000) < 3 * 20_000 / np.sqrt(12 * small_sample)
    assert times.min() < 2_000 and times.max() > 18_000  # early exchanges are not favoured


def test_merged_routes_add_their_counts_and_join_their_samples(tmp_path, small_sample):
    with SQLiteStore(tmp_path / "s.db") as store:
        store.write("r", "a", [numbered(i, "GET /u/alice") for i in range(80)], {})
        store.write("r", "b", [numbered(i, "GET /u/bob") for i in range(80, 200)], {})
        store.write(
            "r", "a", [numbered(200, "GET /u/{id}")], {}, merges=[("GET /u/alice", "GET /u/{id}")]
        )
        store.write("r", "a", [], {}, merges=[("GET /u/bob", "GET /u/{id}")])
        routes = store.routes("r")
        assert list(routes) == ["GET /u/{id}"] and routes["GET /u/{id}"]["exchanges"] == 201
        assert sum(store.statuses("r")["GET /u/{id}"].values()) == 201
        assert len(list(store.latency_sample("r"))) == small_sample  # bottom-k of the union


def test_a_sampled_latency_is_none_where_the_side_failed(tmp_path):
    x = numbered(1)
    x.shadow = Outcome(error="timeout", latency=5.0)  # a time to failure, no latency
    x.shadow_diffs = [Divergence("outcome", "shadow_error:timeout", "response", "timeout")]
    with SQLiteStore(tmp_path / "s.db") as store:
        store.write("r", "a", [x], {})
        assert list(store.latency_sample("r")) == [("GET /u/{id}", 1.0, 0.010001, None, None)]
        assert store.routes("r")["GET /u/{id}"]["shadow_errors"] == 1
        assert store.statuses("r") == {"GET /u/{id}": {("200", "timeout"): 1}}


def test_a_key_with_a_newline_still_makes_its_exchange_divergent(tmp_path):
    """A hostile body's key may hold any character: the set of an exchange's paths is a JSON
    array, never text split on a separator."""
    x = numbered(1)
    x.shadow_diffs = [Divergence("body:$['a\nb']", "changed", "1", "2")]
    with SQLiteStore(tmp_path / "s.db") as store:
        store.write("r", "a", [x], {})
        [found] = findings(
            store.routes("r"), store.path_counts("r"), store.signatures("r"), Noise()
        )
    assert (found.divergent, [f.path for f in found.fields]) == (1, ["body:$['a\nb']"])


def test_runs_are_listed_with_their_size_and_deleted_whole(tmp_path):
    path = tmp_path / "s.db"
    with SQLiteStore(path) as store:
        kept = numbered(7)
        kept.kept = "whole"
        store.write("old", "a", [numbered(i) for i in range(5)] + [kept], {"tap": {"seen": 6}})
        store.write("new", "a", [numbered(i) for i in range(100, 103)], {"tap": {"seen": 3}})
        sizes = store.run_sizes()
        assert [(r.run, r.exchanges, r.rows, r.whole) for r in sizes] == [
            ("old", 6, 1, 1),
            ("new", 3, 0, 0),
        ]
        assert sizes[0].bytes > sizes[1].bytes > 0 and sizes[0].last == 7.0
        store.delete_run("old")
        assert store.runs() == ["new"] and store.routes("old") == {}
    with sqlite3.connect(path) as db:
        for table in ("exchanges", "route_stats", "route_statuses", "latency_sample", "counts"):
            assert db.execute(f"SELECT COUNT(*) FROM {table} WHERE run = 'old'").fetchone() == (0,)
