"""The judge's statistics against known values, the closed form and brute force: Wilson,
Hodges-Lehmann with its signed-rank interval, and the tail-only p99 bootstrap."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from factories import Array, timings
from scipy.signal import lfilter
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


# --- time-correlated noise --------------------------------------------------------------------


def ar1(n: int, phi: float, sd: float, rng: np.random.Generator) -> Array:
    """A stationary AR(1) series of marginal standard deviation `sd` (200 steps burnt in)."""
    steps = rng.normal(0.0, sd * math.sqrt(1 - phi * phi), n + 200)
    return np.asarray(lfilter([1.0], [1.0, -phi], steps)[200:])


def loaded(n: int, noise: str, seed: int, ratio: float = 1.0) -> tuple[Array, Array]:
    """Paired timings on a busy machine, in time order: a per-request cost both sides share and
    each side's own noise (log sd 0.25), i.i.d. ("iid"), slowly varying ("ar": AR(1) with
    phi = 0.8, so tau = 9) or i.i.d. with contention ("bursts": about 10 stretches of 10 to 50
    pairs in which one side, either, is 1.5 to 2.5 times slower); the shadow `ratio` times
    slower."""
    rng = np.random.default_rng(seed)
    cost = rng.lognormal(math.log(0.05), 0.8, n)
    if noise == "ar":
        own = [ar1(n, 0.8, 0.25, rng) for _ in range(2)]
    else:
        own = [rng.normal(0.0, 0.25, n) for _ in range(2)]
    if noise == "bursts":
        for _ in range(rng.poisson(10)):
            start, length = rng.integers(0, n), rng.integers(10, 50)
            own[rng.integers(0, 2)][start : start + length] += math.log(rng.uniform(1.5, 2.5))
    return cost * np.exp(own[0]), ratio * cost * np.exp(own[1])


@pytest.mark.parametrize("phi", [0.5, 0.8])
def test_dependence_of_ar1_is_its_autocorrelation_time(phi):
    found = stats.dependence(ar1(20_000, phi, 1.0, np.random.default_rng(1)))
    assert found.tau == pytest.approx((1 + phi) / (1 - phi), rel=0.1)
    assert found.block > 10


def test_dependence_of_independent_values_is_next_to_none():
    found = [stats.dependence(np.random.default_rng(s).normal(size=1000)) for s in range(20)]
    assert np.median([f.tau for f in found]) < 1.05
    assert max(f.tau for f in found) < 1.3 and max(f.block for f in found) <= 3


def test_dependence_of_short_or_constant_series_is_none():
    assert stats.dependence(np.arange(19.0)) == stats.INDEPENDENT  # too short to tell
    assert stats.dependence(np.full(500, 0.3)) == stats.INDEPENDENT
    assert stats.dependence(np.arange(500.0)).tau > 10  # a trend is one long correlation


def test_hajek_projection_matches_brute_force():
    x = np.random.default_rng(4).standard_t(3, 60)
    est, _, _ = hodges_lehmann(x, 0.95)
    brute = np.sign(x[:, None] + x[None, :] - 2 * est).mean(axis=1)
    assert stats._hajek(x, est) == pytest.approx(brute, abs=1e-12)


def test_shift_on_independent_pairs_is_the_signed_rank_interval():
    widths = []
    for seed in range(40):
        primary, shadow = loaded(300, "iid", seed)
        x = np.log(shadow / primary)
        est, lo, hi = hodges_lehmann(x, 0.95)
        found = stats.shift(x, 0.95)
        assert found.estimate == est
        assert found.low <= lo + 1e-12 and found.high >= hi - 1e-12
        widths.append((found.high - found.low) / (hi - lo))
    assert np.median(widths) < 1.05 and max(widths) < 1.35


@pytest.mark.parametrize("noise", ["ar", "bursts"])
def test_shift_covers_identical_code_under_correlated_noise(noise):
    """Identical code on a busy machine: the i.i.d. interval misses a ratio of 1 in about half
    of the runs; widened for the time correlation, it covers it as promised."""
    naive = covered = false_fails = 0
    for seed in range(200):
        primary, shadow = loaded(1000, noise, 5000 + seed)
        x = np.log(shadow / primary)
        _, lo, hi = hodges_lehmann(x, 0.95)
        found = stats.shift(x, 0.95)
        naive += lo <= 0 <= hi
        covered += found.low <= 0 <= found.high
        false_fails += found.low > math.log(1.1)
    assert naive / 200 < 0.6
    assert covered / 200 >= 0.93
    assert false_fails == 0


def test_shift_still_detects_a_slowdown_under_correlated_noise():
    found = [
        stats.shift(np.log(s / p), 0.95) for p, s in (loaded(500, "ar", i, 1.3) for i in range(20))
    ]
    assert sum(f.low > math.log(1.1) for f in found) >= 19


def full_block_bootstrap(
    shadow: Array, baseline: Array, block: int, resamples: int = 4000
) -> tuple[float, float]:
    """The circular block bootstrap CI of the p99 ratio, every resample drawn in full."""
    n = len(shadow)
    blocks = round(n / block)
    size = blocks * block
    m = stats._top_rank(size)
    starts = np.random.default_rng(11).integers(0, n, (resamples, blocks))
    rows = ((starts[:, :, None] + np.arange(block)) % n).reshape(resamples, size)
    log_ratios = np.log(
        np.sort(shadow[rows], axis=1)[:, size - m] / np.sort(baseline[rows], axis=1)[:, size - m]
    )
    lo, hi = np.exp(np.quantile(log_ratios, [0.025, 0.975]))
    return float(lo), float(hi)


@pytest.mark.parametrize("block", [7, 40, 133])
def test_p99_block_bootstrap_equals_a_full_block_bootstrap(monkeypatch, block):
    monkeypatch.setattr(stats, "_BOOTSTRAP_RESAMPLES", 4000)
    primary, shadow = loaded(400, "bursts", 3)
    _, lo, hi = p99_ratio_bootstrap(shadow, primary, 0.95, block)
    assert (lo, hi) == pytest.approx(full_block_bootstrap(shadow, primary, block), rel=0.03)


def test_p99_block_bootstrap_completes_resamples_short_of_the_tail(monkeypatch):
    """The slowest pairs all in one burst: with the tail kept at its i.i.d. size, one resample
    in 25 misses the burst and holds fewer than m tail pairs; computed in full, they still give
    the full bootstrap's interval (whose lower end lies among them, hence the many resamples)."""
    monkeypatch.setattr(stats, "_BOOTSTRAP_RESAMPLES", 20_000)
    monkeypatch.setattr(stats, "_TAIL_SD", -math.inf)  # never grow the kept tail
    primary, shadow = loaded(600, "iid", 8)
    shadow[300:450] *= 20.0
    m = stats._top_rank(600)
    assert set(stats._tail(shadow, 100, 6, m)) <= set(range(300, 450))
    _, lo, hi = p99_ratio_bootstrap(shadow, primary, 0.95, 100)
    assert (lo, hi) == pytest.approx(full_block_bootstrap(shadow, primary, 100, 20_000), rel=0.03)


def test_p99_blocks_widen_the_interval_for_bursts():
    """Three stretches of 40 pairs with a 4x slower shadow, in 3,000: pairs resampled one by
    one put the p99 ratio above 1.25 for sure; resampled in blocks, it may well be noise."""
    primary, shadow = timings(3000, seed=4)
    for start in (500, 1500, 2500):
        shadow[start : start + 40] *= 4.0
    block = stats.shift(np.log(shadow / primary), 0.95).dependence.block
    _, lo1, hi1 = p99_ratio_bootstrap(shadow, primary, 0.95)
    _, lo, hi = p99_ratio_bootstrap(shadow, primary, 0.95, block)
    assert block > 20
    assert lo1 > 1.25 > lo
    assert math.log(hi / lo) > 1.3 * math.log(hi1 / lo1)
