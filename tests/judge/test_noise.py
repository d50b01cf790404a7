"""The noise test (Fisher's, with Diffy's floor), the findings per route, examples and ignore
suggestions."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest
from factories import tally
from scipy.stats import fisher_exact

from shadowdiff.config import Noise
from shadowdiff.judge.noise import findings, looks_generated, noise_test, suggest_ignores
from shadowdiff.worker.recorder import Reservoir

NOISE = Noise()


def one(r: int, n: int, total: int, with_secondary: int | None = None, **kw) -> tuple:
    """The noise test on a route of one path: (noise, adjusted p)."""
    [found] = noise_test(
        [(r, n)], total, total if with_secondary is None else with_secondary, NOISE, **kw
    )
    return found


@pytest.mark.parametrize(
    "r, n, total, noise",
    [
        (2, 1, 100, True),  # a coin toss: p = 0.5; Diffy's counts called it real
        (10, 0, 100, False),  # p = 0.0008
        (5, 0, 5, False),  # every exchange, never the secondary: p = 1/252
        (4, 0, 4, False),  # p = 1/70: the first few are 4
        (3, 0, 3, True),  # p = 1/20 is not below (1 - 0.95) / 2
        (40, 30, 1000, True),  # relative 14 % < 20 %, and p = 0.14
        (40, 0, 1000, False),
        (1, 0, 5000, True),
        # Diffy called the next two real; one difference in 3,000 and 16 against 10 in 1,000
        # are what chance gives (p = 0.5 and 0.16): the "coin toss called a regression".
        (1, 0, 3000, True),
        (16, 10, 1000, True),
        (30, 40, 1000, True),  # the secondary differs more often
        (7, 7, 100, True),  # as often
        (0, 0, 100, True),
    ],
)
def test_noise_rule(r, n, total, noise):
    assert one(r, n, total)[0] is noise


def test_p_value_is_fishers_one_sided_test():
    rng = random.Random(5)
    for _ in range(50):
        total, with_secondary = rng.randint(1, 300), rng.randint(1, 300)
        r, n = rng.randint(0, total), rng.randint(0, with_secondary)
        table = [[r, total - r], [n, with_secondary - n]]
        expected = fisher_exact(table, alternative="greater").pvalue
        assert one(r, n, total, with_secondary)[1] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    "r, n, total",
    [
        (1300, 1100, 100_000),  # p = 2e-5 but relative 8 % < 20 %
        (40, 0, 1_000_000),  # p = 1e-12 but absolute 0.004 % < 0.03 %
        (1_000_000, 990_000, 10_000_000),  # p = 4e-14 but relative 0.5 %
    ],
)
def test_significant_but_too_small_is_noise(r, n, total):
    noise, p = one(r, n, total)
    assert noise and p < 1e-4


def test_huge_counts():
    noise, p = one(5_000_000, 1_000_000, 10_000_000)
    assert not noise and 0.0 <= p < 1e-100


def test_rates_are_compared_when_the_secondary_saw_fewer_exchanges():
    # 5 % on both sides; on counts (50 > 5, Diffy's rule) it looked like a real divergence
    assert one(50, 5, 1000, with_secondary=100) == (True, pytest.approx(0.617, abs=1e-3))
    assert one(50, 0, 1000, with_secondary=100)[0] is False


def test_confidence_sets_the_level():
    assert one(5, 0, 5, confidence=0.99)[0] is False  # p = 0.004 <= 0.005
    assert one(5, 0, 5, confidence=0.999)[0] is True


def test_counts_beyond_their_totals_do_not_crash():
    assert one(3, 1, 0, with_secondary=2) == (True, pytest.approx(0.4))  # read as 3 of 3, 1 of 2
    assert one(0, 0, 0, with_secondary=1) == (True, 1.0)
    assert noise_test([], 100, 100, NOISE) == []


def test_without_secondary_everything_counts():
    assert one(1, 0, 100_000, with_secondary=0) == (False, None)
    assert one(0, 0, 0, with_secondary=0) == (False, None)


def test_adjusted_over_the_paths_of_a_route():
    real = [(r, 0) for r in (5, 6)]
    timestamps = [(6, 6)] * 9
    # alone, 5 of 5 is real; with 9 noisy paths it needs a 6th exchange (p 1/924 <= 0.025 / 10)
    assert [x for x, _ in noise_test([real[0], *timestamps], 5, 5, NOISE)][0] is True
    assert [x for x, _ in noise_test([real[1], *timestamps], 6, 6, NOISE)][0] is False


def test_many_noisy_paths_do_not_fail_an_unchanged_release():
    rng = np.random.default_rng(7)
    r, n = rng.binomial(1000, 0.05, 2000), rng.binomial(1000, 0.05, 2000)
    raw = fisher_exact_tail(r, n, 1000, 1000)
    # tested one by one, about 2.5 % of 2,000 paths that are all noise would pass for real
    assert ((raw <= 0.025) & (r > 1.5 * n)).sum() >= 20
    assert all(noise for noise, _ in noise_test(list(zip(r, n, strict=True)), 1000, 1000, NOISE))


def test_the_adjustment_spans_every_route_of_the_run():
    """Review: adjusted route by route, each of a hundred quiet routes keeps its own 2.5 %, and
    an unchanged release fails most of the time. Over the run, 7 against 0 in 100 on one route
    (p 0.007) is noise among 99 routes whose path differs as often on both sides; alone, real."""
    routes, rows = {}, []
    for i in range(100):
        route = f"GET /r{i}"
        routes[route] = {
            "exchanges": 100,
            "with_secondary": 100,
            "matched": 90,
            "ignored": 0,
            "divergent": 10,
        }
        shadow, secondary = (7, 0) if i == 0 else (5, 5)
        rows += [
            (route, "shadow", f"{i}.{k}", "body:$.v", "changed", None, "1", "2")
            for k in range(shadow)
        ]
        rows += [
            (route, "secondary", f"{i}.{k}", "body:$.v", "changed", None, "1", "3")
            for k in range(secondary)
        ]
    together = {f.route: f for f in findings(routes, *tally(rows), NOISE)}
    assert together["GET /r0"].fields[0].noise and together["GET /r0"].divergent == 0
    assert not any(f.divergent for f in together.values())
    [alone] = findings(
        {"GET /r0": routes["GET /r0"]}, *tally([r for r in rows if r[0] == "GET /r0"]), NOISE
    )
    assert not alone.fields[0].noise and alone.divergent == 7


def fisher_exact_tail(r, n, total: int, with_secondary: int):
    return np.array(
        [
            fisher_exact([[a, total - a], [b, with_secondary - b]], alternative="greater").pvalue
            for a, b in zip(r, n, strict=True)
        ]
    )


def test_findings_separate_noise_from_divergence():
    routes = {
        "GET /a": {
            "exchanges": 100,
            "with_secondary": 100,
            "matched": 40,
            "ignored": 10,
            "divergent": 50,
        }
    }
    rows = []
    for i in range(50):  # timestamps differ everywhere, against both shadow and secondary
        rows.append(("GET /a", "shadow", f"x{i}", "body:$.ts", "changed", None, "1", "2"))
        rows.append(("GET /a", "secondary", f"x{i}", "body:$.ts", "changed", None, "1", "3"))
    for i in range(10):  # a renamed field only the shadow shows
        rows.append(("GET /a", "shadow", f"x{i}", "body:$.name", "removed", None, "a", ""))
    rows.append(("GET /a", "shadow", "x99", "header:x-build", "changed", "ignore", "1", "2"))
    [found] = findings(routes, *tally(rows), Noise())
    assert [(f.path, f.count, f.noise_count, f.noise) for f in found.fields] == [
        ("body:$.name", 10, 0, False),
        ("body:$.ts", 50, 50, True),
    ]
    assert (found.divergent, found.noisy, found.matched, found.ignored) == (10, 40, 40, 10)
    assert found.fields[0].p_value < 0.01 < 0.5 < found.fields[1].p_value
    assert (found.noise_measured, found.note) == (True, "")


def test_findings_without_secondary_say_noise_is_not_measured():
    routes = {
        "GET /a": {
            "exchanges": 100,
            "with_secondary": 0,
            "matched": 98,
            "ignored": 0,
            "divergent": 2,
        }
    }
    rows = [("GET /a", "shadow", f"x{i}", "body:$.ts", "changed", None, "1", "2") for i in range(2)]
    [found] = findings(routes, *tally(rows), Noise())
    assert [(f.count, f.noise, f.p_value) for f in found.fields] == [(2, False, None)]
    assert found.divergent == 2 and not found.noise_measured
    assert "no secondary" in found.note


def test_an_exchange_is_divergent_by_its_own_paths_not_its_lists():
    """A real item and a noisy item of one list: only the exchanges where the real one differs
    are divergent (the rows' answer), the others are noise only."""
    routes = {"GET /a": {"exchanges": 400, "with_secondary": 400, "matched": 0, "ignored": 0,
                         "divergent": 400}}  # fmt: skip
    rows = [("GET /a", "shadow", f"r{i}", "body:$.items[0].x", "changed", None, "1", "2")
            for i in range(100)]  # fmt: skip
    for i in range(300):
        for side in ("shadow", "secondary"):
            rows.append(("GET /a", side, f"n{i}", "body:$.items[5].x", "changed", None, "1", "3"))
    [found] = findings(routes, *tally(rows), NOISE)
    assert [(f.path, f.noise) for f in found.fields] == [
        ("body:$.items[0].x", False),
        ("body:$.items[5].x", True),
    ]
    assert (found.divergent, found.noisy) == (100, 300)


def test_findings_without_secondary_do_not_load_scipy():
    code = """if True:
        import sys
        from shadowdiff.config import Noise
        from shadowdiff.judge.noise import findings
        totals = {"exchanges": 1, "with_secondary": 0, "matched": 0, "ignored": 0, "divergent": 1}
        paths = [("GET /a", "shadow", "status", "changed", 1)]
        found = findings({"GET /a": totals}, paths, [("GET /a", '["status"]', 1)], Noise())
        assert found[0].divergent == 1
        assert "scipy.stats" not in sys.modules
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_reservoir_is_uniform_and_bounded():
    hits = [0] * 20
    rng = random.Random(3)
    for _ in range(2000):
        reservoir = Reservoir(5)
        for i in range(20):
            reservoir.offer(str(i), rng)
        assert len(reservoir.items) == 5
        for item in reservoir.items:
            hits[int(item)] += 1
    assert all(400 <= h <= 600 for h in hits)  # each kept with probability 1/4


@pytest.mark.parametrize(
    "value, generated",
    [
        ("2026-11-27T14:00:00.123Z", True),
        ('"2026-11-27 14:00:00+01:00"', True),
        ("3f2504e0-4f89-11d3-9a0c-0305e82c3301", True),
        ("a94a8fe5ccb19ba61c4c0873d391e987982fbbd3", True),
        ("1764252000", True),
        ("tok_9aX2kLm3Qz8vW1pR", True),
        ("free", False),
        ("42", False),
        ("Hello world", False),
    ],
)
def test_looks_generated(value, generated):
    assert looks_generated(value) is generated


def test_suggest_ignores():
    routes = {"GET /a": {"exchanges": 20}, "GET /b": {"exchanges": 20}}
    rows = [
        (
            "GET /a",
            "shadow",
            f"k{i}",
            "body:$.at",
            "changed",
            None,
            f'"2026-01-0{i % 9 + 1}T00:00:00Z"',
            '"2026-02-01T00:00:00Z"',
        )
        for i in range(20)
    ]
    rows += [
        ("GET /a", "shadow", f"k{i}", "body:$.plan", "changed", None, '"free"', '"pro"')
        for i in range(20)
    ]
    rows += [
        (
            "GET /b",
            "shadow",
            f"k{i}",
            "body:$.id",
            "changed",
            None,
            '"3f2504e0-4f89-11d3-9a0c-0305e82c3301"',
            '"4f2504e0-4f89-11d3-9a0c-0305e82c3301"',
        )
        for i in range(5)
    ]
    assert suggest_ignores(routes, tally(rows)[0], rows) == {"GET /a": ["body:$.at"]}
