"""The judge's statistics against known values, the closed form and brute force: Wilson,
Hodges-Lehmann with its signed-rank interval, and the tail-only p99 bootstrap."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from factories import Array, timings
from scipy.stats import norm

from shadowdiff.judge import stats
from shadowdiff.judge.stats import hodges_lehmann, p99_ratio_bootstrap, wilson


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


def wilson_closed_form(k: int, n: int, confidence: float) -> tuple[float, float]:
    """The Wilson score interval written out (the judge's own until scipy's replaced it)."""
    z = float(norm.ppf(0.5 + confidence / 2))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (0.0 if k == 0 else centre - half), (1.0 if k == n else centre + half)


@pytest.mark.parametrize("confidence", [0.6, 0.9, 0.95, 0.99, 0.999])
@pytest.mark.parametrize(
    "k, n", [(0, 1), (1, 1), (0, 50), (3, 50), (50, 50), (3, 120), (7, 1000), (1, 10**6)]
)
def test_wilson_is_the_closed_form(k, n, confidence):
    assert wilson(k, n, confidence) == pytest.approx(
        wilson_closed_form(k, n, confidence), abs=1e-12
    )


# --- hodges_lehmann ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 6, 10, 31, 100, 101, 400])
@pytest.mark.parametrize("ties", [False, True])
def test_hodges_lehmann_matches_brute_force(n, ties):
    rng = np.random.default_rng(n)
    x = rng.standard_t(3, n) * 0.3
    if ties:
        x = np.round(x, 1)
    w = walsh_brute_force(x)
    cut = stats._signed_rank_cut(n, 0.95)
    est, lo, hi = hodges_lehmann(x, 0.95)
    assert est == pytest.approx(np.median(w), abs=1e-9)
    if cut == 0:
        assert (lo, hi) == (-math.inf, math.inf)
    else:
        assert (lo, hi) == pytest.approx((w[cut - 1], w[len(w) - cut]), abs=1e-9)


@pytest.mark.parametrize("n, cut", [(5, 0), (6, 1), (10, 9), (20, 53), (100, 1956)])
def test_signed_rank_cut_matches_tables(n, cut):
    # Critical values of the Wilcoxon signed-rank test, two-sided 5 %: cut = critical + 1.
    assert stats._signed_rank_cut(n, 0.95) == cut


def test_signed_rank_normal_approximation_continues_the_exact_values():
    exact_100 = stats._signed_rank_cut(100, 0.95)
    approx_101 = stats._signed_rank_cut(101, 0.95)
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
    monkeypatch.setattr(stats, "_BOOTSTRAP_RESAMPLES", 4000)
    primary, shadow = timings(400, seed=3)
    n, m = 400, stats._top_rank(400)
    idx = np.random.default_rng(11).integers(0, n, (4000, n))
    full = np.log(np.sort(shadow[idx], axis=1)[:, n - m] / np.sort(primary[idx], axis=1)[:, n - m])
    ratio, lo, hi = p99_ratio_bootstrap(shadow, primary, 0.95)
    assert ratio == pytest.approx(
        np.quantile(shadow, 0.99, method="inverted_cdf")
        / np.quantile(primary, 0.99, method="inverted_cdf")
    )
    assert (lo, hi) == pytest.approx(tuple(np.exp(np.quantile(full, [0.025, 0.975]))), rel=0.03)


def test_top_rank_is_the_p99_order_statistic():
    assert stats._top_rank(300) == 4  # 297th of 300 ascending
    assert stats._top_rank(100) == 2
    assert stats._top_rank(5000) == 51
