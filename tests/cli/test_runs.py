"""`shadowdiff runs`: every run with its size; deleting named runs and runs too old."""

from __future__ import annotations

import time

from factories import exchange, outcome, snapshot

from conftest import shadowdiff
from shadowdiff.store import SQLiteStore


def test_lists_and_deletes_runs(tmp_path):
    store = tmp_path / "s.db"
    now = time.time()
    with SQLiteStore(store) as s:
        for run, when in (("last-month", now - 40 * 86400), ("today", now)):
            batch = [
                exchange(
                    snapshot(f"f{i}", timestamp=when + i), outcome(i), outcome(i), route="GET /"
                )
                for i in range(3)
            ]
            s.write(run, "a", batch, {"tap": {"seen": 3}})
    listed = shadowdiff("runs", f"--store={store}")
    assert (listed.returncode, listed.stderr) == (0, "")
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:5] == ["run", "exchanges", "rows", "whole", "size"]
    assert [line.split()[:4] for line in lines[1:]] == [
        ["last-month", "3", "3", "3"],
        ["today", "3", "3", "3"],
    ]
    unknown = shadowdiff("runs", f"--store={store}", "--delete=nope")
    assert (unknown.returncode, unknown.stdout) == (2, "")
    assert unknown.stderr == f"shadowdiff: error: --delete: {store} holds no run named 'nope'\n"
    old = shadowdiff("runs", f"--store={store}", "--older-than-days=30")
    assert old.returncode == 0 and old.stdout.splitlines()[0] == "deleted run 'last-month'"
    gone = shadowdiff("runs", f"--store={store}", "--delete=today")
    assert gone.stdout.splitlines() == ["deleted run 'today'", f"{store}: no runs"]
    with SQLiteStore(store, create=False) as s:
        assert s.runs() == []
