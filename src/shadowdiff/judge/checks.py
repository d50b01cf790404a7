"""Judge: from per-route counts and timings to a release verdict (PASS, FAIL or INCONCLUSIVE).

Pure logic, no I/O. A verdict is a list of named checks, each with its value, threshold,
sample size and confidence interval (Kayenta/Flagger style); the verdict is the worst check,
and too little data is INCONCLUSIVE, never PASS. The methods behind the intervals, and why,
are in `shadowdiff.judge.stats`.

Every CI is two-sided at `confidence`; a FAIL needs the whole interval beyond the threshold,
so a false alarm has probability at most (1 - confidence) / 2 per check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from shadowdiff.judge.stats import hodges_lehmann, newcombe, p99_ratio_bootstrap, wilson

PASS = "PASS"
FAIL = "FAIL"
INCONCLUSIVE = "INCONCLUSIVE"
_RANK = {PASS: 0, INCONCLUSIVE: 1, FAIL: 2}


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
