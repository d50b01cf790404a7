"""Judge: from per-route counts and timings to a release verdict (PASS, FAIL or INCONCLUSIVE).

Pure logic, no I/O. A verdict is a list of named checks, each with its value, threshold,
sample size and confidence interval (Kayenta/Flagger style); the verdict is the worst check,
and too little data is INCONCLUSIVE, never PASS.

Methods, and why:

- Proportions (divergence rate) use the Wilson score interval: it behaves at 0 and at small n,
  where the normal (Wald) interval collapses to zero width.
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

Every CI is two-sided at `confidence`; a FAIL needs the whole interval beyond the threshold,
so a false alarm has probability at most (1 - confidence) / 2 per check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from scipy import stats

PASS = "PASS"
FAIL = "FAIL"
INCONCLUSIVE = "INCONCLUSIVE"
_RANK = {PASS: 0, INCONCLUSIVE: 1, FAIL: 2}

_EXACT_SIGNED_RANK_MAX = 100  # above this the normal approximation is within one rank
_BOOTSTRAP_RESAMPLES = 1000
_BOOTSTRAP_SEED = 20240901
_P99 = 99  # percent


@dataclass(frozen=True)
class JudgeConfig:
    """Thresholds of the gate; mirrored by the YAML config schema."""

    allowed_divergence_rate: float = 0.0
    accepted_routes: tuple[str, ...] = ()
    min_pairs: int = 50
    latency_tolerance: float = 0.10
    p99_tolerance: float = 0.25
    p99_min_pairs: int = 300
    error_rate_margin: float = 0.0
    confidence: float = 0.95


@dataclass(frozen=True)
class RouteData:
    """What the judge needs to know about one route: counts, transitions and paired timings."""

    route: str
    pairs: int
    divergent: int
    accepted: int
    transitions: dict[tuple[str, str], int]
    primary_errors: int
    shadow_errors: int
    primary_latency: npt.NDArray[np.float64]
    shadow_latency: npt.NDArray[np.float64]
    secondary_latency: npt.NDArray[np.float64] | None


@dataclass(frozen=True)
class Check:
    """One named check on one route ("*" for the whole run), with the numbers behind it."""

    id: str
    route: str
    result: str
    value: float | None
    threshold: float | None
    n: int
    ci: tuple[float, float] | None
    critical: bool = False
    detail: str = ""


@dataclass(frozen=True)
class Verdict:
    """The worst of the checks; any failing critical check fails the run."""

    verdict: str
    checks: list[Check]


def wilson(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Two-sided Wilson score interval for k successes in n trials; (0, 1) without trials.

    The bounds are exactly 0 at k = 0 and 1 at k = n, so "lower bound > 0" means "some".
    """
    if n <= 0:
        return 0.0, 1.0
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k <= 0 else max(0.0, centre - half)
    hi = 1.0 if k >= n else min(1.0, centre + half)
    return lo, hi


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


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _status_class(outcome: str) -> str | None:
    """The class digit of a status ("200" or "2xx" give "2"); None for an error kind."""
    if outcome[:1].isdigit() and (outcome.isdigit() or outcome[1:].lower() == "xx"):
        return outcome[0]
    return None


def _divergence_check(rd: RouteData, cfg: JudgeConfig) -> Check:
    real = rd.divergent - rd.accepted
    lo, hi = wilson(real, rd.pairs, cfg.confidence)
    rate = real / rd.pairs if rd.pairs else None
    ci_text = f"{100 * cfg.confidence:g} % CI {100 * lo:.1f}–{100 * hi:.1f} %"
    detail = f"{real} of {rd.pairs} exchanges diverge ({_pct(rate or 0.0)}, {ci_text})"
    if rd.accepted:
        detail += f"; {rd.accepted} more diverge only at accepted paths"
    if rd.route in cfg.accepted_routes:
        result = PASS
        detail = f"divergences accepted on this route: {detail}"
    elif lo > cfg.allowed_divergence_rate:
        result = FAIL
        detail += f", above the allowed {_pct(cfg.allowed_divergence_rate)}"
    else:
        result = PASS
    return Check(
        "divergence_rate",
        rd.route,
        result,
        rate,
        cfg.allowed_divergence_rate,
        rd.pairs,
        (lo, hi),
        detail=detail,
    )


def _status_5xx_check(rd: RouteData) -> Check:
    """2xx/3xx -> 5xx is critical; error outcomes (timeout, reset...) are the errors check's."""
    broken = {
        (p, s): c
        for (p, s), c in rd.transitions.items()
        if c > 0 and _status_class(p) in ("2", "3") and _status_class(s) == "5"
    }
    total = sum(broken.values())
    if total:
        listed = ", ".join(f"{p}→{s}: {c}" for (p, s), c in sorted(broken.items()))
        detail = f"{total} exchanges went from 2xx/3xx to 5xx ({listed})"
    else:
        detail = "no exchange went from 2xx/3xx to 5xx"
    return Check(
        "status_5xx",
        rd.route,
        FAIL if total else PASS,
        float(total),
        0.0,
        rd.pairs,
        None,
        critical=True,
        detail=detail,
    )


def _errors_check(rd: RouteData, cfg: JudgeConfig) -> Check:
    if rd.pairs == 0:
        return Check(
            "shadow_errors",
            rd.route,
            INCONCLUSIVE,
            None,
            cfg.error_rate_margin,
            0,
            None,
            detail="no compared exchanges",
        )
    d, lo, hi = newcombe(rd.shadow_errors, rd.pairs, rd.primary_errors, rd.pairs, cfg.confidence)
    detail = (
        f"shadow errors {rd.shadow_errors} vs primary {rd.primary_errors} of {rd.pairs} "
        f"(difference {100 * d:+.1f} points, {100 * cfg.confidence:g} % CI "
        f"{100 * lo:+.1f} to {100 * hi:+.1f})"
    )
    result = FAIL if lo > cfg.error_rate_margin else PASS
    if result == FAIL:
        detail += f", above the margin of {100 * cfg.error_rate_margin:.1f} points"
    return Check(
        "shadow_errors",
        rd.route,
        result,
        d,
        cfg.error_rate_margin,
        rd.pairs,
        (lo, hi),
        detail=detail,
    )


def _latency_pairs(rd: RouteData) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], str]:
    """Shadow and baseline timings of the usable pairs; the secondary is the baseline if any.

    The secondary is timed by the same client as the shadow, the primary by another path, so
    shadow vs secondary is the fairer comparison.
    """
    if rd.secondary_latency is not None:
        base, name = np.asarray(rd.secondary_latency, dtype=np.float64), "secondary"
    else:
        base, name = np.asarray(rd.primary_latency, dtype=np.float64), "primary"
    shadow = np.asarray(rd.shadow_latency, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(shadow) & np.isfinite(base) & (shadow > 0) & (base > 0)
    return shadow[ok], base[ok], name


def _decide(lo: float, hi: float, limit: float) -> str:
    """FAIL when the interval lies beyond the limit, PASS when within, else INCONCLUSIVE."""
    if lo > limit:
        return FAIL
    return PASS if hi < limit else INCONCLUSIVE


def _latency_checks(rd: RouteData, cfg: JudgeConfig, latency_note: str) -> list[Check]:
    shadow, base, name = _latency_pairs(rd)
    n = len(shadow)
    limit, p99_limit = 1 + cfg.latency_tolerance, 1 + cfg.p99_tolerance
    with_p99 = rd.pairs >= cfg.p99_min_pairs
    if latency_note:
        checks = [
            Check("latency", rd.route, INCONCLUSIVE, None, limit, n, None, detail=latency_note)
        ]
        if with_p99:
            checks.append(
                Check(
                    "latency_p99",
                    rd.route,
                    INCONCLUSIVE,
                    None,
                    p99_limit,
                    n,
                    None,
                    detail=latency_note,
                )
            )
        return checks
    if n < max(cfg.min_pairs, 1):
        detail = f"only {n} pairs with both timings; {cfg.min_pairs} needed"
        checks = [Check("latency", rd.route, INCONCLUSIVE, None, limit, n, None, detail=detail)]
    else:
        est, lo, hi = hodges_lehmann(np.log(shadow / base), cfg.confidence)
        ratio, ci = math.exp(est), (math.exp(lo), math.exp(hi))
        result = _decide(lo, hi, math.log(limit))
        detail = (
            f"shadow typically {ratio:.3f}× the {name}'s latency ({100 * cfg.confidence:g} % CI "
            f"{ci[0]:.3f}–{ci[1]:.3f}×, {n} pairs), tolerance {limit:.2f}×"
        )
        checks = [Check("latency", rd.route, result, ratio, limit, n, ci, detail=detail)]
    if with_p99:
        if n < cfg.p99_min_pairs:
            detail = f"only {n} pairs with both timings; {cfg.p99_min_pairs} needed for p99"
            checks.append(
                Check(
                    "latency_p99", rd.route, INCONCLUSIVE, None, p99_limit, n, None, detail=detail
                )
            )
        else:
            ratio, lo, hi = p99_ratio_bootstrap(shadow, base, cfg.confidence)
            detail = (
                f"shadow p99 {ratio:.3f}× the {name}'s ({100 * cfg.confidence:g} % bootstrap CI "
                f"{lo:.3f}–{hi:.3f}×, {n} pairs), tolerance {p99_limit:.2f}×"
            )
            checks.append(
                Check(
                    "latency_p99",
                    rd.route,
                    _decide(lo, hi, p99_limit),
                    ratio,
                    p99_limit,
                    n,
                    (lo, hi),
                    detail=detail,
                )
            )
    return checks


def _route_checks(rd: RouteData, cfg: JudgeConfig, latency_note: str) -> list[Check]:
    """All checks of one route; on a small sample only a critical FAIL keeps its result."""
    checks = [
        _divergence_check(rd, cfg),
        _status_5xx_check(rd),
        _errors_check(rd, cfg),
        *_latency_checks(rd, cfg, latency_note),
    ]
    if rd.pairs >= cfg.min_pairs:
        return checks
    small = Check(
        "min_sample",
        rd.route,
        INCONCLUSIVE,
        float(rd.pairs),
        float(cfg.min_pairs),
        rd.pairs,
        None,
        detail=f"only {rd.pairs} compared pairs; at least {cfg.min_pairs} needed to judge",
    )
    note = f" (not judged: {rd.pairs} pairs < {cfg.min_pairs})"
    capped = [
        c
        if c.result == INCONCLUSIVE or (c.critical and c.result == FAIL)
        else replace(c, result=INCONCLUSIVE, detail=c.detail + note)
        for c in checks
    ]
    return [small, *capped]


def judge(
    routes: list[RouteData], cfg: JudgeConfig = JudgeConfig(), latency_note: str = ""
) -> Verdict:
    """Judges every route; the verdict is the worst check, a failing critical check fails.

    `latency_note`, when set, says why timings cannot be trusted (e.g. offline replay against
    a recorded primary): latency checks are then INCONCLUSIVE with that note.
    """
    if not routes:
        nothing = Check(
            "min_sample",
            "*",
            INCONCLUSIVE,
            0.0,
            float(cfg.min_pairs),
            0,
            None,
            detail="no compared exchanges at all",
        )
        return Verdict(INCONCLUSIVE, [nothing])
    checks = [c for rd in routes for c in _route_checks(rd, cfg, latency_note)]
    if any(c.critical and c.result == FAIL for c in checks):
        return Verdict(FAIL, checks)
    return Verdict(max((c.result for c in checks), key=_RANK.__getitem__), checks)
