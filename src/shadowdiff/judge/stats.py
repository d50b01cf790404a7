"""The judge's statistics: interval estimates behind the checks. Pure numbers, no I/O.

Methods, and why:

- Proportions (divergence rate) use the Wilson score interval (scipy's): it behaves at 0 and at
  small n, where the normal (Wald) interval collapses to zero width.
- Error rates compare the shadow's with the primary's by Newcombe's hybrid score interval for a
  difference of proportions (built from two Wilson intervals): it takes an absolute margin
  directly. It treats the two sides as independent samples, which is conservative for paired
  exchanges (both sides see the same requests), so it errs towards fewer false alarms.
- Latency is judged per request pair: log(shadow / baseline), so a request's own cost cancels.
  The Hodges-Lehmann estimate (median of Walsh averages) is the typical log ratio, robust to
  outliers; its confidence interval comes from the Wilcoxon signed-rank distribution (exact for
  n <= 100, normal approximation above). Walsh averages are selected exactly in O(n log n) per
  step by counting, never materialized, so n = 5000 costs milliseconds.
- The p99 check compares the p99 of both sides with a paired percentile bootstrap of the ratio.
  Only the top tail of each side can become a resample's p99, so the bootstrap draws counts for
  those pairs only (exactly as a full resample would) and stays cheap for large n. The seed is
  fixed: the same data always gives the same verdict.

Every interval is two-sided at `confidence`.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from scipy import stats

__all__ = ["hodges_lehmann", "newcombe", "p99_ratio_bootstrap", "wilson"]

_EXACT_SIGNED_RANK_MAX = 100  # above this the normal approximation is within one rank
_BOOTSTRAP_RESAMPLES = 1000
_BOOTSTRAP_SEED = 20240901
_P99 = 99  # percent


def wilson(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Two-sided Wilson score interval for k successes in n trials; (0, 1) without trials.

    The bounds are exactly 0 at k = 0 and 1 at k = n, so "lower bound > 0" means "some".
    """
    if n <= 0:
        return 0.0, 1.0
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def newcombe(k1: int, n1: int, k2: int, n2: int, confidence: float) -> tuple[float, float, float]:
    """Difference p1 - p2 with Newcombe's hybrid score interval (method 10, independent samples)."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1, confidence)
    l2, u2 = wilson(k2, n2, confidence)
    d = p1 - p2
    return d, d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)


@lru_cache(maxsize=256)
def _signed_rank_cut(n: int, confidence: float) -> int:
    """How many Walsh averages to cut from each end for the CI: the largest c, P(T+ < c) <= α/2.

    T+ is the Wilcoxon signed-rank statistic under the null; 0 means no finite interval exists.
    """
    half_alpha = (1 - confidence) / 2
    m = n * (n + 1) // 2
    if n <= _EXACT_SIGNED_RANK_MAX:
        pmf = np.zeros(m + 1)
        pmf[0] = 1.0
        for i in range(1, n + 1):
            shifted = np.zeros_like(pmf)
            shifted[i:] = pmf[: m + 1 - i]
            pmf = (pmf + shifted) / 2
        return int(np.searchsorted(np.cumsum(pmf), half_alpha * (1 + 1e-12), side="right"))
    sd = math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
    z = float(stats.norm.ppf(1 - half_alpha))
    return max(0, math.floor(m / 2 - 0.5 - z * sd) + 1)


def _walsh_order_stats(xs: npt.NDArray[np.float64], ranks: list[int]) -> list[float]:
    """Exact order statistics (0-based ranks) of the Walsh averages of sorted xs.

    Bisects on the value, counting averages <= t with one searchsorted per step, until at most
    n averages are left in the bracket; those are then listed and the rank picked among them.
    """
    n = len(xs)
    rows = np.arange(n)

    def row_ends(t: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
        # For row i, averages (x_i + x_j) / 2 <= t with j >= i are those with j in [i, end).
        ends = np.searchsorted(xs, 2.0 * t[:, None] - xs[None, :], side="right")
        return np.maximum(ends, rows)

    def count(t: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
        return np.asarray((row_ends(t) - rows).sum(axis=1))

    target = np.asarray(ranks)
    tol = 1e-12 * (1.0 + float(np.abs(xs).max()))
    lo = np.full(len(ranks), np.nextafter(xs[0], -np.inf))
    hi = np.full(len(ranks), xs[-1])
    c_lo = np.zeros(len(ranks), dtype=np.intp)
    c_hi = np.full(len(ranks), n * (n + 1) // 2, dtype=np.intp)
    while (open_ := (c_hi - c_lo > n) & (hi - lo > tol)).any():
        mid = np.where(open_, (lo + hi) / 2, hi)
        c_mid = count(mid)
        up = open_ & (c_mid > target)
        down = open_ & ~up
        hi, c_hi = np.where(up, mid, hi), np.where(up, c_mid, c_hi)
        lo, c_lo = np.where(down, mid, lo), np.where(down, c_mid, c_lo)
    out = []
    for i, r in enumerate(target):
        if c_hi[i] - c_lo[i] > n:  # ties: every average left in the bracket is hi, within tol
            out.append(float(hi[i]))
            continue
        a, b = row_ends(lo[i : i + 1])[0], row_ends(hi[i : i + 1])[0]
        lengths = b - a
        row = np.repeat(rows, lengths)
        col = a[row] + np.arange(len(row)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        values = (xs[row] + xs[col]) / 2
        out.append(float(np.partition(values, r - c_lo[i])[r - c_lo[i]]))
    return out


def hodges_lehmann(
    log_ratios: npt.NDArray[np.float64], confidence: float
) -> tuple[float, float, float]:
    """Hodges-Lehmann estimate of the typical log ratio and its signed-rank CI, on the log scale.

    The estimate is the median of the Walsh averages (x_i + x_j) / 2, i <= j; the CI is
    [W_(c), W_(M+1-c)] with c from the signed-rank distribution; (-inf, inf) when n is too
    small for any interval at this confidence. Needs at least one finite value.
    """
    xs = np.sort(np.asarray(log_ratios, dtype=np.float64))
    if len(xs) == 0 or not np.isfinite(xs).all():
        raise ValueError("hodges_lehmann needs at least one value, all finite")
    n = len(xs)
    m = n * (n + 1) // 2
    cut = _signed_rank_cut(n, confidence)
    ranks = [(m - 1) // 2, m // 2] + ([cut - 1, m - cut] if cut > 0 else [])
    stats_ = _walsh_order_stats(xs, ranks)
    estimate = (stats_[0] + stats_[1]) / 2
    if cut == 0:
        return estimate, -math.inf, math.inf
    return estimate, stats_[2], stats_[3]


def _top_rank(n: int) -> int:
    """Rank from the top of the p99: the smallest value with at least 99 % of values at or below."""
    return n - (-(-_P99 * n // 100)) + 1


def p99_ratio_bootstrap(
    shadow: npt.NDArray[np.float64], baseline: npt.NDArray[np.float64], confidence: float
) -> tuple[float, float, float]:
    """Ratio of p99s (shadow / baseline) and its paired percentile-bootstrap CI.

    A resample's p99 is its m-th largest value (m = _top_rank(n)); it comes from the original
    top tail except with negligible probability (the tail holds 3m + 100 values, > 12 sd above
    m), so only the counts of the pairs in either side's tail are drawn: how many of the n
    draws land in the tail (binomial), then where (uniform), exactly as a full resample.
    """
    n = len(shadow)
    m = _top_rank(n)
    tail = min(n, 3 * m + 100)
    keep = np.union1d(np.argsort(-shadow)[:tail], np.argsort(-baseline)[:tail])
    rng = np.random.default_rng(_BOOTSTRAP_SEED)
    hits = rng.binomial(n, len(keep) / n, size=_BOOTSTRAP_RESAMPLES)
    which = rng.integers(0, len(keep), size=int(hits.sum()))
    resample = np.repeat(np.arange(_BOOTSTRAP_RESAMPLES), hits)
    counts = np.bincount(
        resample * len(keep) + which, minlength=_BOOTSTRAP_RESAMPLES * len(keep)
    ).reshape(_BOOTSTRAP_RESAMPLES, len(keep))

    def resampled_p99(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        order = np.argsort(-values[keep])
        reached = np.cumsum(counts[:, order], axis=1) >= m
        position = np.minimum((~reached).sum(axis=1), len(keep) - 1)
        return np.asarray(values[keep][order][position])

    log_ratios = np.log(resampled_p99(shadow) / resampled_p99(baseline))
    lo, hi = np.quantile(log_ratios, [(1 - confidence) / 2, (1 + confidence) / 2])
    ratio = np.sort(shadow)[n - m] / np.sort(baseline)[n - m]
    return float(ratio), float(math.exp(lo)), float(math.exp(hi))
