"""Noise: differences that a second instance of the old version shows too, and the examples.

Per route and divergence path: r of the route's T exchanges differ between primary and shadow
there, n of the T₂ that had a secondary (`with_secondary`) differ between primary and
secondary. The path is a real divergence only if it is both

- statistically significant: the shadow differs there more often than the secondary, by
  Fisher's exact test, one-sided, on the table [r of T, n of T₂], its p-value adjusted over
  every path where the shadow differs, on every route judged together (Benjamini–Hochberg),
  at most (1 − confidence) / 2;
- practically significant, by Diffy's thresholds on the rates s = r / T and q = n / T₂:
  s > q, (s − q) / (s + q) > `relative` and s − q > `absolute` (Diffy's rule when T₂ = T).

Fisher rather than a binomial test of r given r + n: the binomial counts differences as
events, blind to an exchange differing at most once. A path that differs on all of 5 shadow
exchanges and none of 5 secondary ones gets 1/32 from it, 1 / C(10, 5) = 1/252 from Fisher;
when differences are rare the two agree. Both sides are measured against the same primary
response, so their differences tend to come together: that only makes the test cautious.
A path that differs on every exchange and never on the secondary scores 1 / C(2k, k) after k
exchanges (3: 0.05, 4: 0.014, 6: 0.0011): real from the 4th at the default confidence when
it is the only path of the run that differs, later when many noisy paths differ too.

Why adjust: one real path fails its route, and so the release; tested one by one at 2.5 %, a
few thousand noisy paths would fail an unchanged release, and so would a hundred routes
adjusted each on its own (each keeps its own 2.5 %). When nothing changed, Benjamini–Hochberg
over the whole run keeps the chance that any noise passes for real at (1 − confidence) / 2,
the false-alarm bound of every check (`checks`); when something did, it misses fewer real
paths than Bonferroni would. A view of one route alone (`/verdict?route=`) adjusts over that
route's paths only, so it can call real a path that the whole run's verdict calls noise.

Without a secondary there is no noise model: every difference counts, and the findings say so
(`RouteFindings.noise_measured`).
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import orjson

from shadowdiff.config import Judge, Noise
from shadowdiff.store import PathRow, SignatureRow

DEFAULT_CONFIDENCE: float = Judge.model_fields["confidence"].default
"""`judge.confidence` by default, for callers that pass none."""

NO_SECONDARY = "no secondary: noise cannot be told apart, every difference counts"
"""What a report shows by a route whose noise was not measured."""


Group = tuple[Sequence[tuple[int, int]], int, int]
"""One route's (r, n) per path, its exchanges T and those with a secondary T₂."""


def noise_test(
    counts: Sequence[tuple[int, int]],
    exchanges: int,
    with_secondary: int,
    cfg: Noise,
    confidence: float = DEFAULT_CONFIDENCE,
) -> list[tuple[bool, float | None]]:
    """For each (r, n) of one route's paths, tested as the whole family: whether it is
    noise, and its adjusted p-value (None without a secondary, when every difference counts)."""
    return tested([(counts, exchanges, with_secondary)], cfg, confidence)[0]


def tested(
    groups: Sequence[Group], cfg: Noise, confidence: float = DEFAULT_CONFIDENCE
) -> list[list[tuple[bool, float | None]]]:
    """Per route of `groups`, per path: noise or not, and the p-value adjusted over every path
    of every route that had a secondary, so the false-alarm bound holds for the whole run, not
    each route (a hundred quiet routes would otherwise fail one release in ten times out of
    eleven). One vectorised scipy call; counts beyond their totals (a run still being written)
    are read as totals."""
    measured = [g for g in groups if g[2] > 0 and g[0]]
    if not measured:
        return [[(False, None)] * len(g[0]) for g in groups]
    import numpy as np
    from scipy.stats import false_discovery_control, hypergeom

    r, n = np.concatenate([np.asarray(g[0], dtype=np.int64) for g in measured]).T
    sizes = [len(g[0]) for g in measured]
    shadow_total = np.maximum(r, np.repeat([max(g[1], 1) for g in measured], sizes))
    secondary_total = np.maximum(n, np.repeat([g[2] for g in measured], sizes))
    # Fisher's one-sided p: the chance, given both margins, that the shadow row holds r or more
    tail = hypergeom.sf(r - 1, shadow_total + secondary_total, r + n, shadow_total)
    p = false_discovery_control(np.clip(tail, 0.0, 1.0))
    s, q = r / shadow_total, n / secondary_total
    gap = s - q
    real = (
        (gap > 0)
        & (gap > cfg.relative * (s + q))
        & (gap > cfg.absolute)
        & (p <= (1 - confidence) / 2)
    )
    decided = iter(zip(real.tolist(), p.tolist(), strict=True))
    return [
        [(not x, y) for x, y in itertools.islice(decided, len(g[0]))]
        if g[2] > 0 and g[0]
        else [(False, None)] * len(g[0])
        for g in groups
    ]


@dataclass(frozen=True, slots=True)
class Field:
    """One divergence path of one route: how often it differs, against what noise."""

    path: str
    kind: str
    count: int
    noise_count: int
    noise: bool
    accepted: bool = False
    p_value: float | None = None
    """Fisher's one-sided p, adjusted over the route's paths; None without a secondary."""


@dataclass(frozen=True, slots=True)
class RouteFindings:
    route: str
    exchanges: int
    with_secondary: int
    matched: int
    ignored: int
    """Exchanges that differed only where rules say to ignore."""
    noisy: int
    """Exchanges whose real differences are all at paths the secondary shows as noise."""
    divergent: int
    """Exchanges with at least one real divergence at a path that is not noise."""
    fields: list[Field]

    @property
    def noise_measured(self) -> bool:
        """Whether a secondary ran: without one, no difference can be called noise."""
        return self.with_secondary > 0

    @property
    def note(self) -> str:
        """`NO_SECONDARY`, or nothing when noise was measured."""
        return "" if self.noise_measured else NO_SECONDARY


Row = tuple[str, str, str, str, str, str | None, str, str]
"""(route, side, exchange key, path, kind, rule, left, right): a stored divergence."""


def findings(
    routes: dict[str, dict[str, int]],
    paths: Iterable[PathRow],
    signatures: Iterable[SignatureRow],
    cfg: Noise,
    accepted: Callable[[str, str], bool] = lambda route, path: False,
    confidence: float = DEFAULT_CONFIDENCE,
) -> list[RouteFindings]:
    """Per route: the fields with the noise test applied, and the divergent exchanges: those
    whose signature names a path that is real (neither noise nor accepted). Fields
    `accepted(route, path)` says a release owner accepted are listed but not counted. A
    field's kind is its most common (ties: the first by name)."""
    shadow: dict[tuple[str, str], int] = {}
    secondary: dict[tuple[str, str], int] = {}
    kinds: dict[tuple[str, str], Counter[str]] = {}
    for route, side, path, kind, n in paths:
        if side == "shadow":
            shadow[(route, path)] = shadow.get((route, path), 0) + n
            kinds.setdefault((route, path), Counter())[kind] += n
        else:
            secondary[(route, path)] = secondary.get((route, path), 0) + n
    listed: dict[str, list[tuple[str, int]]] = {}  # by route: one pass, however many
    for (route, path), n in sorted(shadow.items()):
        listed.setdefault(route, []).append((path, n))
    sets: dict[str, list[tuple[frozenset[str], int]]] = {}
    for route, named, n in signatures:
        sets.setdefault(route, []).append((frozenset(orjson.loads(named)), n))
    counted = {
        route: [(r, secondary.get((route, path), 0)) for path, r in fields]
        for route, fields in listed.items()
    }
    groups = [
        (counted.get(route, []), totals["exchanges"], totals["with_secondary"])
        for route, totals in routes.items()
    ]
    out = []
    for (route, totals), (counts, _, _), decided in zip(
        routes.items(), groups, tested(groups, cfg, confidence), strict=True
    ):
        fields, real = [], set()
        for (path, _), (r, n), (noise, p) in zip(
            listed.get(route, []), counts, decided, strict=True
        ):
            kind = kinds[(route, path)].most_common(1)[0][0]
            ok = accepted(route, path)
            fields.append(Field(path, kind, r, n, noise, ok, p))
            if not (noise or ok):
                real.add(path)
        divergent = sum(n for named, n in sets.get(route, []) if named & real)
        fields.sort(key=lambda f: (f.noise, -f.count, f.path))
        out.append(
            RouteFindings(
                route=route,
                exchanges=totals["exchanges"],
                with_secondary=totals["with_secondary"],
                matched=totals["matched"],
                ignored=totals["ignored"],
                noisy=totals["divergent"] - divergent,
                divergent=divergent,
                fields=fields,
            )
        )
    return out


GENERATED = re.compile(
    r"^\"?(?:"
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"  # timestamp
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"  # UUID
    r"|[0-9a-fA-F]{16,}"  # hex id or hash
    r"|(?=[A-Za-z0-9_+/=-]*\d)[A-Za-z0-9_+/=-]{16,}"  # opaque token
    r"|1[0-9]{9}(?:[0-9]{3})?(?:\.\d+)?"  # epoch seconds or milliseconds
    r")\"?$"
)


def looks_generated(value: str) -> bool:
    return bool(GENERATED.match(value.strip()))


def suggest_ignores(
    routes: dict[str, dict[str, int]],
    paths: Iterable[PathRow],
    rows: Iterable[Row],
    share: float = 0.9,
    minimum: int = 10,
) -> dict[str, list[str]]:
    """Route → paths where the shadow differs in nearly every exchange (by the aggregates'
    counts) with values that look generated (timestamps, UUIDs, random tokens) in every
    divergence still kept as a row: candidates for ignore rules, which shadowdiff never
    applies by default (that could hide real bugs)."""
    differing: Counter[tuple[str, str]] = Counter()
    for route, side, path, _kind, n in paths:
        if side == "shadow":
            differing[(route, path)] += n
    generated: dict[tuple[str, str], bool] = {}
    for route, side, _key, path, _kind, rule, left, right in rows:
        if side != "shadow" or rule is not None:
            continue
        both = looks_generated(left) and looks_generated(right)
        generated[(route, path)] = generated.get((route, path), True) and both
    out: dict[str, list[str]] = {}
    for (route, path), seen in sorted(differing.items()):
        total = routes.get(route, {}).get("exchanges", 0)
        if total >= minimum and seen >= share * total and generated.get((route, path), False):
            out.setdefault(route, []).append(path)
    return out
