"""The release judge: its statistics against known values and brute force, every check's
branches, and false alarms on simulated A/A runs."""

from __future__ import annotations

import math
import time

import numpy as np
import numpy.typing as npt
import pytest

from shadowdiff.judge import checks as judge_module
from shadowdiff.judge.checks import (
    Check,
    JudgeConfig,
    RouteData,
    hodges_lehmann,
    judge,
    p99_ratio_bootstrap,
    wilson,
)

Array = npt.NDArray[np.float64]


def timings(
    n: int, ratio: float = 1.0, seed: int = 0, outliers: float = 0.02
) -> tuple[Array, Array]:
    """Paired timings like real traffic: a per-request cost both sides share (lognormal, median
    50 ms), independent jitter per side, and a few outliers (GC, cold connections) on either side;
    the shadow is `ratio` times slower."""
    rng = np.random.default_rng(seed)
    cost = rng.lognormal(math.log(0.05), 0.8, n)
    primary = cost * rng.lognormal(0.0, 0.25, n)
    shadow = ratio * cost * rng.lognormal(0.0, 0.25, n)
    hit = rng.random(n) < outliers
    on_shadow = rng.random(n) < 0.5
    spike = rng.uniform(3.0, 10.0, n)
    primary = np.where(hit & ~on_shadow, primary * spike, primary)
    shadow = np.where(hit & on_shadow, shadow * spike, shadow)
    return primary, shadow


def route(
    name: str = "GET /items",
    pairs: int = 200,
    *,
    divergent: int = 0,
    accepted: int = 0,
    transitions: dict[tuple[str, str], int] | None = None,
    primary_errors: int = 0,
    shadow_errors: int = 0,
    ratio: float = 1.0,
    seed: int = 0,
    secondary: Array | None = None,
    latency: tuple[Array, Array] | None = None,
) -> RouteData:
    primary, shadow = latency if latency is not None else timings(pairs, ratio, seed)
    return RouteData(
        route=name,
        pairs=pairs,
        divergent=divergent,
        accepted=accepted,
        transitions=transitions if transitions is not None else {("200", "200"): pairs},
        primary_errors=primary_errors,
        shadow_errors=shadow_errors,
        primary_latency=primary,
        shadow_latency=shadow,
        secondary_latency=secondary,
    )


def check(verdict: judge_module.Verdict, check_id: str, route_name: str = "GET /items") -> Check:
    (found,) = [c for c in verdict.checks if c.id == check_id and c.route == route_name]
    return found


def walsh_brute_force(x: Array) -> Array:
    i, j = np.triu_indices(len(x))
    return np.sort((x[i] + x[j]) / 2)


# --- wilson -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "k, n, lo, hi",
    [
        (3, 120, 0.00854, 0.07093),  # the example: 0.9–7.1 %
        (0, 10, 0.0, 0.27753),  # upper bound z² / (n + z²)
        (10, 10, 0.72247, 1.0),
        (50, 100, 0.40383, 0.59617),
        (1, 1000, 0.00018, 0.00565),
    ],
)
def test_wilson_known_values(k, n, lo, hi):
    assert wilson(k, n, 0.95) == pytest.approx((lo, hi), abs=5e-5)


def test_wilson_bounds_are_exact_at_the_edges():
    # "lower bound > 0" must mean "at least one": no rounding residue at k = 0.
    assert wilson(0, 10_000, 0.95)[0] == 0.0
    assert wilson(7, 7, 0.95)[1] == 1.0
    assert wilson(0, 0, 0.95) == (0.0, 1.0)


# --- hodges_lehmann ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 6, 10, 31, 100, 101, 400])
@pytest.mark.parametrize("ties", [False, True])
def test_hodges_lehmann_matches_brute_force(n, ties):
    rng = np.random.default_rng(n)
    x = rng.standard_t(3, n) * 0.3
    if ties:
        x = np.round(x, 1)
    w = walsh_brute_force(x)
    cut = judge_module._signed_rank_cut(n, 0.95)
    est, lo, hi = hodges_lehmann(x, 0.95)
    assert est == pytest.approx(np.median(w), abs=1e-9)
    if cut == 0:
        assert (lo, hi) == (-math.inf, math.inf)
    else:
        assert (lo, hi) == pytest.approx((w[cut - 1], w[len(w) - cut]), abs=1e-9)


@pytest.mark.parametrize("n, cut", [(5, 0), (6, 1), (10, 9), (20, 53), (100, 1956)])
def test_signed_rank_cut_matches_tables(n, cut):
    # Critical values of the Wilcoxon signed-rank test, two-sided 5 %: cut = critical + 1.
    assert judge_module._signed_rank_cut(n, 0.95) == cut


def test_signed_rank_normal_approximation_continues_the_exact_values():
    exact_100 = judge_module._signed_rank_cut(100, 0.95)
    approx_101 = judge_module._signed_rank_cut(101, 0.95)
    assert 0 < approx_101 - exact_100 < 2 * 101  # grows by about one rank per Walsh row


def test_hodges_lehmann_ci_covers_the_centre():
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(400):
        x = 0.1 + rng.laplace(0.0, 0.2, 40)
        _, lo, hi = hodges_lehmann(x, 0.95)
        covered += lo <= 0.1 <= hi
    assert 0.92 <= covered / 400 <= 0.98


def test_hodges_lehmann_is_fast_for_large_routes():
    x = np.random.default_rng(1).normal(0.05, 0.3, 5000)
    hodges_lehmann(x, 0.95)
    start = time.perf_counter()
    est, lo, hi = hodges_lehmann(x, 0.95)
    assert time.perf_counter() - start < 0.25  # ~15 ms here; O(n²) would be seconds
    assert lo < est < hi


def test_hodges_lehmann_constant_data_and_bad_input():
    assert hodges_lehmann(np.zeros(2000), 0.95) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        hodges_lehmann(np.array([]), 0.95)
    with pytest.raises(ValueError):
        hodges_lehmann(np.array([0.1, np.nan]), 0.95)


# --- p99 bootstrap ----------------------------------------------------------------------------


def test_p99_bootstrap_equals_a_full_resampling_bootstrap(monkeypatch):
    # Drawing counts for the tail only must give the same distribution as resampling all pairs.
    monkeypatch.setattr(judge_module, "_BOOTSTRAP_RESAMPLES", 4000)
    primary, shadow = timings(400, seed=3)
    n, m = 400, judge_module._top_rank(400)
    idx = np.random.default_rng(11).integers(0, n, (4000, n))
    full = np.log(np.sort(shadow[idx], axis=1)[:, n - m] / np.sort(primary[idx], axis=1)[:, n - m])
    ratio, lo, hi = p99_ratio_bootstrap(shadow, primary, 0.95)
    assert ratio == pytest.approx(
        np.quantile(shadow, 0.99, method="inverted_cdf")
        / np.quantile(primary, 0.99, method="inverted_cdf")
    )
    assert (lo, hi) == pytest.approx(tuple(np.exp(np.quantile(full, [0.025, 0.975]))), rel=0.03)


def test_top_rank_is_the_p99_order_statistic():
    assert judge_module._top_rank(300) == 4  # 297th of 300 ascending
    assert judge_module._top_rank(100) == 2
    assert judge_module._top_rank(5000) == 51


# --- divergence_rate --------------------------------------------------------------------------


def test_no_divergence_passes():
    c = check(judge([route()]), "divergence_rate")
    assert (c.result, c.value, c.n) == ("PASS", 0.0, 200)


def test_any_real_divergence_fails_by_default():
    c = check(judge([route(divergent=1)]), "divergence_rate")
    assert c.result == "FAIL"
    assert c.value == pytest.approx(0.005)
    assert c.ci is not None and c.ci[0] > 0
    assert c.detail.startswith("1 of 200 exchanges diverge (0.5 %, 95 % CI")


def test_divergence_within_allowed_rate_passes():
    cfg = JudgeConfig(allowed_divergence_rate=0.02)
    assert check(judge([route(divergent=4)], cfg), "divergence_rate").result == "PASS"
    assert check(judge([route(divergent=30)], cfg), "divergence_rate").result == "FAIL"


def test_accepted_route_passes_and_says_so():
    cfg = JudgeConfig(accepted_routes=("GET /items",))
    c = check(judge([route(divergent=150)], cfg), "divergence_rate")
    assert c.result == "PASS"
    assert "accepted" in c.detail and c.value == 0.75


def test_divergences_at_accepted_paths_do_not_count():
    c = check(judge([route(divergent=5, accepted=5)]), "divergence_rate")
    assert (c.result, c.value) == ("PASS", 0.0)
    assert "5 more diverge only at accepted paths" in c.detail


# --- status_5xx -------------------------------------------------------------------------------


def test_ok_to_5xx_is_a_critical_fail():
    t = {("200", "200"): 196, ("200", "500"): 2, ("301", "503"): 1, ("200", "timeout"): 1}
    v = judge([route(transitions=t)])
    c = check(v, "status_5xx")
    assert (c.result, c.value, c.critical) == ("FAIL", 3.0, True)
    assert "200→500: 2" in c.detail and "301→503: 1" in c.detail
    assert v.verdict == "FAIL"


@pytest.mark.parametrize(
    "transitions",
    [
        {("200", "200"): 200},
        {("500", "500"): 5, ("200", "200"): 195},  # already failing on the primary
        {("404", "500"): 5, ("200", "200"): 195},  # 4xx -> 5xx is a status divergence only
        {("200", "timeout"): 5, ("200", "200"): 195},  # errors are the shadow_errors check's
        {("200", "500"): 0, ("200", "200"): 200},
    ],
)
def test_no_ok_to_5xx_passes(transitions):
    assert check(judge([route(transitions=transitions)]), "status_5xx").result == "PASS"


def test_status_classes_are_understood():
    assert check(judge([route(transitions={("2xx", "5xx"): 1})]), "status_5xx").result == "FAIL"


# --- shadow_errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "primary, shadow, margin, result",
    [
        (0, 0, 0.0, "PASS"),
        (0, 3, 0.0, "PASS"),  # 3 of 200 could be chance
        (0, 20, 0.0, "FAIL"),
        (10, 20, 0.0, "PASS"),  # the primary fails too: not clearly worse
        (0, 20, 0.10, "PASS"),  # within a 10-point margin
        (20, 0, 0.0, "PASS"),  # the shadow fails less
    ],
)
def test_shadow_errors(primary, shadow, margin, result):
    cfg = JudgeConfig(error_rate_margin=margin)
    c = check(judge([route(primary_errors=primary, shadow_errors=shadow)], cfg), "shadow_errors")
    assert c.result == result
    assert c.value == pytest.approx((shadow - primary) / 200)
    assert c.ci is not None and c.ci[0] <= c.value <= c.ci[1]


# --- latency ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio, result", [(1.0, "PASS"), (1.3, "FAIL"), (1.1, "INCONCLUSIVE")])
def test_latency_branches(ratio, result):
    c = check(judge([route(pairs=300, ratio=ratio)]), "latency")
    assert c.result == result
    assert c.ci is not None and c.ci[0] < c.value < c.ci[1]  # type: ignore[operator]
    assert c.threshold == pytest.approx(1.1)


def test_latency_drops_pairs_without_usable_timings():
    primary, shadow = timings(200)
    primary[:30] = np.nan
    shadow[30:40] = 0.0
    shadow[40:50] = -1.0
    c = check(judge([route(latency=(primary, shadow))]), "latency")
    assert c.n == 150 and c.result == "PASS"


def test_latency_without_enough_timings_is_inconclusive():
    primary, shadow = timings(200)
    shadow[10:] = np.nan
    c = check(judge([route(latency=(primary, shadow))]), "latency")
    assert (c.result, c.n, c.value) == ("INCONCLUSIVE", 10, None)


def test_latency_is_judged_against_the_secondary_when_there_is_one():
    # The primary is timed on the live path, much faster; shadow and secondary share the client.
    primary, secondary = timings(300, seed=1)
    _, shadow = timings(300, seed=1)
    c = check(
        judge([route(pairs=300, secondary=secondary, latency=(primary / 2, shadow))]), "latency"
    )
    assert c.result == "PASS" and "secondary" in c.detail
    without = check(judge([route(pairs=300, latency=(primary / 2, shadow))]), "latency")
    assert without.result == "FAIL" and "primary" in without.detail


def test_untrusted_latency_is_inconclusive_with_the_note():
    note = "offline replay: the primary's timings were recorded, not measured"
    v = judge([route(pairs=400, ratio=2.0)], latency_note=note)
    for check_id in ("latency", "latency_p99"):
        c = check(v, check_id)
        assert (c.result, c.detail, c.value) == ("INCONCLUSIVE", note, None)
    assert v.verdict == "INCONCLUSIVE"


# --- latency_p99 ------------------------------------------------------------------------------


def test_p99_only_on_routes_with_enough_pairs():
    assert not [c for c in judge([route(pairs=299)]).checks if c.id == "latency_p99"]
    assert check(judge([route(pairs=2000)]), "latency_p99").result == "PASS"


def test_p99_catches_a_tail_regression_the_typical_ratio_misses():
    primary, shadow = timings(2000, seed=5, outliers=0.0)
    slow = np.random.default_rng(5).random(2000) < 0.03  # 3 % of requests take a slow path
    shadow = np.where(slow, shadow * 8.0, shadow)
    v = judge([route(pairs=2000, latency=(primary, shadow))])
    assert check(v, "latency").result == "PASS"
    p99 = check(v, "latency_p99")
    assert p99.result == "FAIL" and p99.ci is not None and p99.ci[0] > 1.25


def test_p99_with_too_few_timings_is_inconclusive():
    primary, shadow = timings(400)
    shadow[:200] = np.nan
    assert check(judge([route(pairs=400, latency=(primary, shadow))]), "latency_p99").result == (
        "INCONCLUSIVE"
    )


# --- min_sample and the verdict ---------------------------------------------------------------


def test_small_route_is_inconclusive_never_pass():
    v = judge([route(pairs=20, divergent=10, shadow_errors=15)])
    assert v.verdict == "INCONCLUSIVE"
    small = check(v, "min_sample")
    assert (small.result, small.value, small.threshold) == ("INCONCLUSIVE", 20.0, 50.0)
    assert {c.result for c in v.checks} == {"INCONCLUSIVE"}
    assert "not judged" in check(v, "divergence_rate").detail


def test_critical_5xx_fails_even_on_a_small_route():
    v = judge([route(pairs=10, transitions={("200", "500"): 1, ("200", "200"): 9})])
    assert check(v, "status_5xx").result == "FAIL"
    assert v.verdict == "FAIL"


def test_no_routes_is_inconclusive():
    v = judge([])
    assert v.verdict == "INCONCLUSIVE"
    assert [(c.id, c.route, c.n) for c in v.checks] == [("min_sample", "*", 0)]


def test_verdict_is_the_worst_check():
    good, small, bad = route("GET /a"), route("GET /b", pairs=10), route("GET /c", divergent=9)
    assert judge([good]).verdict == "PASS"
    assert judge([good, small]).verdict == "INCONCLUSIVE"
    assert judge([good, small, bad]).verdict == "FAIL"


def test_no_big_route_without_its_checks():
    v = judge([route(pairs=300)])
    assert [c.id for c in v.checks] == [
        "divergence_rate",
        "status_5xx",
        "shadow_errors",
        "latency",
        "latency_p99",
    ]


# --- false alarms: A/A runs and a known slowdown ----------------------------------------------


def latency_runs(ratio: float, check_id: str = "latency") -> list[Check]:
    """The latency check of 20 runs of 300 pairs each, with the shadow `ratio` times slower."""
    return [
        check(judge([route(pairs=300, ratio=ratio, seed=1000 + i)]), check_id) for i in range(20)
    ]


def test_aa_runs_raise_no_latency_alarm():
    assert [c.result for c in latency_runs(1.0)].count("FAIL") <= 1
    assert [c.result for c in latency_runs(1.0, "latency_p99")].count("FAIL") <= 1


def test_known_slowdown_is_covered_by_the_ci():
    covered = sum(c.ci is not None and c.ci[0] <= 1.2 <= c.ci[1] for c in latency_runs(1.2))
    assert covered >= 18


def test_clear_slowdown_fails_every_run():
    assert {c.result for c in latency_runs(1.3)} == {"FAIL"}
