"""Judge: from per-route counts and timings to a release verdict (PASS, FAIL or INCONCLUSIVE).

Pure logic, no I/O. A verdict is a list of named checks, each with its value, threshold,
sample size and confidence interval (Kayenta/Flagger style); the verdict is the worst check,
and too little data is INCONCLUSIVE, never PASS. The methods behind the intervals, and why,
are in `shadowdiff.judge.stats`.

Every CI is two-sided at `confidence`; a FAIL needs the whole interval beyond the threshold,
so a false alarm has probability at most (1 - confidence) / 2 per check. Latency intervals
take the pairs in time order and widen for time-correlated noise (stats.py says how), so a
burst of contention makes a check INCONCLUSIVE rather than FAIL.

An INCONCLUSIVE check says what would decide it (`Needs`): how many more pairs, and how long
that takes at the route's rate so far. For an interval that straddles the threshold, its
half-width on the threshold's side shrinks as 1 / sqrt(n) (the time correlation taken as it
is), so about n * (half-width / distance)^2 pairs bring it inside the distance between the
estimate and the threshold, if the estimate holds; a route below `min_pairs` needs the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from shadowdiff.config import Latency
from shadowdiff.judge.stats import newcombe, p99_ratio_bootstrap, shift, wilson

PASS = "PASS"
FAIL = "FAIL"
INCONCLUSIVE = "INCONCLUSIVE"
_RANK = {PASS: 0, INCONCLUSIVE: 1, FAIL: 2}
_HOPELESS = 100
"""Times the pairs so far beyond which more pairs are as good as never: no count is given (the
estimate sits on the threshold, and a wait of years helps nobody)."""


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
    timestamps: npt.NDArray[np.float64] | None = None
    """When each exchange was sampled (epoch seconds), in the order of the latency arrays:
    pairs are judged in time order and the route's rate comes from them. None: the arrays
    are in time order, and no rate is known."""
    reference: str | None = None
    """What timed the baseline (`latency.reference`: secondary, primary, proxy; several joined
    by `+` when a fleet mixed them); None for runs recorded before it was counted."""
    population: int | None = None
    """The exchanges the latency arrays were drawn from: more than the arrays hold when they
    are the route's uniform sample (the store keeps a bounded one); None: they are all."""

    @property
    def sampled(self) -> bool:
        """Whether the timings are a sample of the route's, not all of them."""
        return self.population is not None and self.population > len(self.shadow_latency)


@dataclass(frozen=True)
class Needs:
    """What would decide an INCONCLUSIVE check: about `pairs` more of what its `n` counts,
    and the `seconds` that takes at the route's rate so far (None without a rate)."""

    pairs: int
    seconds: float | None


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
    needs: Needs | None = None


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


def _difference(d: float, lo: float, hi: float, cfg: JudgeConfig) -> str:
    """A difference of two failure rates and its interval, in percentage points."""
    return (
        f"difference {100 * d:+.1f} points, {100 * cfg.confidence:g} % CI"
        f" {100 * lo:+.1f} to {100 * hi:+.1f}"
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
        f"({_difference(d, lo, hi, cfg)})"
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


_BASELINES = {
    "secondary": "the secondary's latency",
    "primary": "the primary's latency (a timed copy, same client)",
    "proxy": (
        "the primary's latency as mitmproxy timed it (its own queueing included: biased low "
        "under load)"
    ),
}
"""How a latency check names its baseline, by `latency.reference`."""


def baseline(rd: RouteData) -> str:
    """The words for what the shadow's latency was compared with, and on which clock."""
    if rd.reference in _BASELINES:
        return _BASELINES[rd.reference]
    if rd.reference:  # a fleet that mixed references
        return f"the baseline's latency ({rd.reference.replace('+', ' and ')} clocks mixed)"
    return (
        "the secondary's latency" if rd.secondary_latency is not None else "the primary's latency"
    )


def _no_pair(rd: RouteData, n: int, needed: int, what: str = "") -> str:
    """Why a route has too few latency pairs: a method the primary's timed copy never takes."""
    if n == 0 and rd.reference == "primary" and not Latency.copied(rd.route.split(" ", 1)[0]):
        return (
            "no latency pair: only GET, HEAD and OPTIONS get a timed copy to the primary; "
            "configure a secondary"
        )
    return f"only {n} pairs with both timings; {needed} needed{what}"


def _latency_pairs(rd: RouteData) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], str]:
    """Shadow and baseline timings of the usable pairs, in time order; the secondary is the
    baseline if any (then also the reference: the config refuses another with one)."""
    if rd.secondary_latency is not None:
        base, name = np.asarray(rd.secondary_latency, dtype=np.float64), "secondary"
    else:
        base, name = np.asarray(rd.primary_latency, dtype=np.float64), "primary"
    shadow = np.asarray(rd.shadow_latency, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        ok = (shadow > 0) & (base > 0) & np.isfinite(np.log(shadow / base))
    rows = np.flatnonzero(ok)
    if rd.timestamps is not None:
        rows = rows[np.argsort(np.asarray(rd.timestamps)[rows], kind="stable")]
    return shadow[rows], base[rows], name


def _decide(lo: float, hi: float, limit: float) -> str:
    """FAIL when the interval lies beyond the limit, PASS when within, else INCONCLUSIVE."""
    if lo > limit:
        return FAIL
    return PASS if hi < limit else INCONCLUSIVE


def _rate(rd: RouteData) -> float | None:
    """The route's exchanges per second so far, from their timestamps; None without a span."""
    if rd.timestamps is None or len(rd.timestamps) < 2:
        return None
    span = float(np.max(rd.timestamps) - np.min(rd.timestamps))
    exchanges = rd.population if rd.population is not None else len(rd.timestamps)
    return (exchanges - 1) / span if span > 0 else None


def _needs(rd: RouteData, more: int, n: int) -> Needs:
    """`more` of what a check's `n` counts, and how long they take: the route's rate, scaled
    by the share of its exchanges that count (n of them)."""
    rate = _rate(rd)
    counted = len(rd.timestamps) if rd.timestamps is not None else 0  # n is a share of these
    if rate is None or n <= 0 or counted <= 0:
        return Needs(more, None)
    return Needs(more, more / (rate * min(1.0, n / counted)))


def _of_sample(rd: RouteData) -> str:
    """What a latency check's pairs are, when they are a sample of the route's (more
    exchanges would not add to it: no `Needs`)."""
    if not rd.sampled:
        return ""
    return f", a uniform sample of the route's {rd.population:,} exchanges"


def _to_decide(
    rd: RouteData, n: int, estimate: float, lo: float, hi: float, limit: float
) -> Needs | None:
    """More pairs until the half-width facing `limit`, shrinking as 1 / sqrt(n), fits between
    the estimate and the limit; None when no count would (infinite width, estimate on it)."""
    half, gap = (
        (hi - estimate, limit - estimate) if estimate < limit else (estimate - lo, estimate - limit)
    )
    if gap <= 0 or not math.isfinite(half) or rd.sampled:
        return None  # a full sample stays as wide: more exchanges would not narrow it
    needed = n * (half / gap) ** 2
    return _needs(rd, max(1, math.ceil(needed) - n), n) if needed <= _HOPELESS * n else None


def _independent(n: int, tau: float) -> str:
    """How many pairs a time-correlated sample is worth, when that widens the interval by more
    than a fifth (below, tau is mostly the noise of its own estimate)."""
    return f", worth about {max(1, round(n / tau))} independent ones" if tau > 1.5 else ""


def _undecided(
    check: str, rd: RouteData, limit: float, n: int, detail: str, needs: Needs | None = None
) -> Check:
    """A latency check that could not be judged (too few pairs, timings not comparable)."""
    return Check(check, rd.route, INCONCLUSIVE, None, limit, n, None, detail=detail, needs=needs)


def _latency_checks(rd: RouteData, cfg: JudgeConfig, latency_note: str) -> list[Check]:
    shadow, base, name = _latency_pairs(rd)
    n = len(shadow)
    limit, p99_limit = 1 + cfg.latency_tolerance, 1 + cfg.p99_tolerance
    with_p99 = rd.pairs >= cfg.p99_min_pairs
    if latency_note:
        checks = [_undecided("latency", rd, limit, n, latency_note)]
        if with_p99:
            checks.append(_undecided("latency_p99", rd, p99_limit, n, latency_note))
        return checks
    measured = shift(np.log(shadow / base), cfg.confidence) if n else None
    if measured is None or n < max(cfg.min_pairs, 1):
        detail = _no_pair(rd, n, cfg.min_pairs) + _of_sample(rd)
        needs = None if rd.sampled else _needs(rd, max(cfg.min_pairs, 1) - n, n)
        checks = [_undecided("latency", rd, limit, n, detail, needs)]
    else:
        est, lo, hi = measured.estimate, measured.low, measured.high
        ratio, ci = math.exp(est), (math.exp(lo), math.exp(hi))
        result = _decide(lo, hi, math.log(limit))
        detail = (
            f"shadow typically {ratio:.3f}× {baseline(rd)} ({100 * cfg.confidence:g} % CI "
            f"{ci[0]:.3f}–{ci[1]:.3f}×, {n} pairs{_of_sample(rd)}"
            f"{_independent(n, measured.dependence.tau)}), "
            f"tolerance {limit:.2f}×"
        )
        needs = _to_decide(rd, n, est, lo, hi, math.log(limit)) if result == INCONCLUSIVE else None
        checks = [
            Check("latency", rd.route, result, ratio, limit, n, ci, detail=detail, needs=needs)
        ]
    if with_p99:
        if measured is None or n < cfg.p99_min_pairs:
            detail = _no_pair(rd, n, cfg.p99_min_pairs, " for p99") + _of_sample(rd)
            needs = None if rd.sampled else _needs(rd, cfg.p99_min_pairs - n, n)
            checks.append(_undecided("latency_p99", rd, p99_limit, n, detail, needs))
        else:
            block = measured.dependence.block
            ratio, lo, hi = p99_ratio_bootstrap(shadow, base, cfg.confidence, block)
            blocks = f" in blocks of {block}" if block > 1 else ""
            detail = (
                f"shadow p99 {ratio:.3f}× the {name}'s ({100 * cfg.confidence:g} % bootstrap CI "
                f"{lo:.3f}–{hi:.3f}×, {n} pairs{_of_sample(rd)}{blocks}), "
                f"tolerance {p99_limit:.2f}×"
            )
            result = _decide(lo, hi, p99_limit)
            logs = (math.log(x) for x in (ratio, lo, hi, p99_limit))
            needs = _to_decide(rd, n, *logs) if result == INCONCLUSIVE else None
            checks.append(
                Check(
                    "latency_p99",
                    rd.route,
                    result,
                    ratio,
                    p99_limit,
                    n,
                    (lo, hi),
                    detail=detail,
                    needs=needs,
                )
            )
    return checks


def _longer(a: Needs | None, b: Needs) -> Needs | None:
    """The later of two needs; None (more pairs decide nothing) stays None."""
    if a is None:
        return None
    if a.seconds is not None and b.seconds is not None:
        return a if a.seconds >= b.seconds else b
    return a if a.pairs >= b.pairs else b


def duration(seconds: float) -> str:
    """A wait as people say it: "40 s", "7 min", "3.5 h", "2.0 days"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _needs_text(needs: Needs) -> str:
    """What would decide a check, as the end of its detail: "about 420 more pairs (~7 min
    at the current 1.2 pairs/s) should decide it" (about an even chance, if the estimate holds
    at that count: it is where the interval would just fit)."""
    text = f"about {needs.pairs:,} more pairs"
    if needs.seconds is not None:
        rate = needs.pairs / needs.seconds if needs.seconds > 0 else 0.0
        text += f" (~{duration(needs.seconds)} at the current {rate:.2g} pairs/s)"
    return f"{text} should decide it"


def _said(c: Check) -> Check:
    """The check with what would decide it at the end of its detail, if it is INCONCLUSIVE."""
    if c.result != INCONCLUSIVE or c.needs is None:
        return c
    return replace(c, detail=f"{c.detail}; {_needs_text(c.needs)}")


def _route_checks(rd: RouteData, cfg: JudgeConfig, latency_note: str) -> list[Check]:
    """All checks of one route; on a small sample only a critical FAIL keeps its result."""
    checks = [
        _divergence_check(rd, cfg),
        _status_5xx_check(rd),
        _errors_check(rd, cfg),
        *_latency_checks(rd, cfg, latency_note),
    ]
    if rd.pairs >= cfg.min_pairs:
        return [_said(c) for c in checks]
    rest = _needs(rd, cfg.min_pairs - rd.pairs, rd.pairs)
    small = Check(
        "min_sample",
        rd.route,
        INCONCLUSIVE,
        float(rd.pairs),
        float(cfg.min_pairs),
        rd.pairs,
        None,
        detail=f"only {rd.pairs} compared pairs; at least {cfg.min_pairs} needed to judge",
        needs=rest,
    )
    note = f" (not judged: {rd.pairs} pairs < {cfg.min_pairs})"
    capped = [
        c
        if c.critical and c.result == FAIL
        else replace(c, needs=_longer(c.needs, rest))
        if c.result == INCONCLUSIVE
        else replace(c, result=INCONCLUSIVE, detail=c.detail + note, needs=rest)
        for c in checks
    ]
    # A check that only waits for min_pairs says so in its note; min_sample says how long.
    return [_said(small), *(c if c.needs == rest else _said(c) for c in capped)]


@dataclass(frozen=True)
class Writes:
    """The writes a release served, by side (the tap's `writes.<side>.failed|ok` counts):
    the candidate's are never copied to the primary, so only their failure rates compare."""

    candidate_failed: int
    candidate: int
    primary_failed: int
    primary: int


def writes_check(w: Writes, cfg: JudgeConfig) -> Check:
    """The candidate's served writes fail (a 5xx, an error) no more often than the
    primary's, by the errors check's margin and interval; than none, while the primary
    served no write to compare with (a 100 % stage). A FAIL needs no minimum (a write is
    never retried: every failure reached a user); a PASS needs `min_pairs` writes."""
    if w.primary:
        d, lo, hi = newcombe(
            w.candidate_failed, w.candidate, w.primary_failed, w.primary, cfg.confidence
        )
        against = f"primary {w.primary_failed} of {w.primary}"
    else:
        d = w.candidate_failed / w.candidate
        lo, hi = wilson(w.candidate_failed, w.candidate, cfg.confidence)
        against = "the primary served none to compare with"
    detail = (
        f"writes failed: candidate {w.candidate_failed} of {w.candidate}, {against}"
        f" ({_difference(d, lo, hi, cfg)})"
    )
    result, needs = FAIL if lo > cfg.error_rate_margin else PASS, None
    if result == PASS and w.candidate < cfg.min_pairs:
        result, needs = INCONCLUSIVE, Needs(cfg.min_pairs - w.candidate, None)
        detail += f"; {cfg.min_pairs} writes needed"
    return Check(
        "served_writes",
        "*",
        result,
        d,
        cfg.error_rate_margin,
        w.candidate,
        (lo, hi),
        critical=True,
        detail=detail,
        needs=needs,
    )


def judge(
    routes: list[RouteData],
    cfg: JudgeConfig = JudgeConfig(),
    latency_note: str = "",
    writes: Writes | None = None,
) -> Verdict:
    """Judges every route; the verdict is the worst check, a failing critical check fails.

    `latency_note`, when set, says why timings cannot be trusted (e.g. offline replay against
    a recorded primary): latency checks are then INCONCLUSIVE with that note, and no count of
    pairs would decide them.
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
            needs=Needs(cfg.min_pairs, None),
        )
        checks = [_said(nothing)] + ([_said(writes_check(writes, cfg))] if writes else [])
        failed = any(c.result == FAIL for c in checks)
        return Verdict(FAIL if failed else INCONCLUSIVE, checks)
    checks = [c for rd in routes for c in _route_checks(rd, cfg, latency_note)]
    if writes is not None:
        checks.append(_said(writes_check(writes, cfg)))
    if any(c.critical and c.result == FAIL for c in checks):
        return Verdict(FAIL, checks)
    return Verdict(max((c.result for c in checks), key=_RANK.__getitem__), checks)
