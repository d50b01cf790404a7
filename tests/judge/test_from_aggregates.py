"""The verdict from the aggregates equals the verdict from the rows; from a latency sample, its
interval agrees with the one from every pair within the sampling error it states."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from factories import exchange, outcome, snapshot, timings

from shadowdiff.config import load_config
from shadowdiff.judge import document
from shadowdiff.judge.checks import RouteData, judge
from shadowdiff.judge.evidence import judge_config
from shadowdiff.model import Exchange
from shadowdiff.store import SQLiteStore, aggregates
from shadowdiff.worker.recorder import Recorder


def traffic(n: int, slow: float) -> list[Exchange]:
    """n exchanges on two routes; the shadow's /b is `slow` times slower, a few 5xx and
    timeouts on either side, some divergent bodies."""
    primary, shadow = timings(n, seed=3)
    secondary, _ = timings(n, seed=4)
    out = []
    for i in range(n):
        route = "ab"[i % 2]
        factor = slow if route == "b" else 1.0
        status = 503 if i % 97 == 0 else 200
        x = exchange(
            snapshot(f"f{i}", path=f"/{route}/{i}", timestamp=1000.0 + i / 50),
            outcome({"v": 1}, latency=float(primary[i])),
            outcome({"v": 2 if i % 41 == 0 else 1}, status=status, latency=factor * shadow[i]),
            outcome({"v": 1}, latency=float(secondary[i])),
        )
        if i % 89 == 0:
            x.shadow.error, x.shadow.status = "timeout", None
        out.append(x)
    return out


def recorded(tmp_path, n: int, slow: float) -> Recorder:
    cfg = load_config(
        None,
        {
            "shadow": "http://a:1",
            "secondary": "http://b:1",
            "store": str(tmp_path / "s.db"),
            "run": "r",
            "storage.bodies": "all",
            "judge.p99_min_pairs": 300,
        },
    )
    store = SQLiteStore(cfg.store)
    store.aggregates.rng = random.Random(5)  # the same sample every run: a verdict to assert
    rec = Recorder(cfg, "t:1", store)
    batch = traffic(n, slow)
    for start in range(0, n, 1_000):
        rec.record(batch[start : start + 1_000], {"tap": {"seen": n, "sampled": n}})
    return rec


def from_rows(rec: Recorder) -> list[RouteData]:
    """The judge's inputs computed from every stored row, as v1 did."""
    by_route: dict[str, list[Exchange]] = {}
    for x in rec.store.exchanges("r"):
        by_route.setdefault(x.route, []).append(x)
    out = []
    for route, xs in by_route.items():

        def latency(o: object) -> float:
            return math.nan if o is None or o.error else o.latency  # type: ignore[attr-defined]

        transitions: dict[tuple[str, str], int] = {}
        for x in xs:
            key = (x.primary.error or str(x.primary.status), x.shadow.error or str(x.shadow.status))
            transitions[key] = transitions.get(key, 0) + 1

        def failed(o: object) -> bool:
            return o.error is not None or o.status >= 500  # type: ignore[attr-defined]

        out.append(
            RouteData(
                route=route,
                pairs=len(xs),
                # no secondary difference here, so no noise: every real shadow divergence
                divergent=sum(any(d.rule is None for d in x.shadow_diffs) for x in xs),
                accepted=0,
                transitions=transitions,
                primary_errors=sum(failed(x.primary) for x in xs),
                shadow_errors=sum(failed(x.shadow) for x in xs),
                primary_latency=np.array([latency(x.primary) for x in xs]),
                shadow_latency=np.array([latency(x.shadow) for x in xs]),
                secondary_latency=np.array([latency(x.secondary) for x in xs]),
                timestamps=np.array([x.request.timestamp for x in xs]),
            )
        )
    return sorted(out, key=lambda rd: rd.route)


def test_the_verdict_from_aggregates_is_the_verdict_from_rows(tmp_path):
    rec = recorded(tmp_path, 4_000, slow=1.3)
    _, _, verdict = document(rec.store, "r", rec.cfg, extras=False)
    expected = judge(from_rows(rec), judge_config(rec.cfg))
    assert verdict.verdict == expected.verdict == "FAIL"
    got = {(c.id, c.route): c for c in verdict.checks}
    for want in expected.checks:
        check = got[(want.id, want.route)]
        assert (check.result, check.n, check.value, check.ci) == (
            want.result,
            want.n,
            pytest.approx(want.value),
            pytest.approx(want.ci),
        ), want.id


def test_a_sampled_latency_interval_agrees_with_every_pair(tmp_path, monkeypatch):
    """10,000 pairs a route judged from a sample of 2,000: the estimate from every pair lies
    within the sample's interval, about sqrt(5) times as wide, and the check says so."""
    monkeypatch.setattr(aggregates, "SAMPLE", 2_000)
    rec = recorded(tmp_path, 20_000, slow=1.3)
    _, _, verdict = document(rec.store, "r", rec.cfg, extras=False)
    full = judge(from_rows(rec), judge_config(rec.cfg))
    for route in ("GET /a/{id}", "GET /b/{id}"):
        [sampled] = [c for c in verdict.checks if (c.id, c.route) == ("latency", route)]
        [every] = [c for c in full.checks if (c.id, c.route) == ("latency", route)]
        assert sampled.n <= 2_000 < every.n  # each route's sample of its 10,000 exchanges
        assert sampled.ci[0] <= every.value <= sampled.ci[1]
        width = math.log(sampled.ci[1] / sampled.ci[0]) / math.log(every.ci[1] / every.ci[0])
        assert 1.5 < width < 3.5
        assert "a uniform sample of the route's 10,000 exchanges" in sampled.detail
    b = {c.id: c.result for c in verdict.checks if c.route == "GET /b/{id}"}
    assert b["latency"] == "FAIL"
