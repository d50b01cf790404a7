"""Noise: differences that a second instance of the old version shows too, and the examples.

Diffy's rule, per route and per divergence path: with r the exchanges where primary and
shadow differ there, n those where primary and secondary differ there, and T the route's
exchanges, the path is a real divergence only if r > n, (r − n) / (r + n) > relative and
(r − n) / T > absolute. Without a secondary there is no noise model: every difference counts.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from shadowdiff.config import Noise


def is_noise(r: int, n: int, total: int, cfg: Noise, has_secondary: bool = True) -> bool:
    if not has_secondary:
        return False
    if r <= n or total <= 0:
        return True
    gap = r - n
    return not (gap / (r + n) > cfg.relative and gap / total > cfg.absolute)


@dataclass(frozen=True, slots=True)
class Field:
    """One divergence path of one route: how often it differs, against what noise."""

    path: str
    kind: str
    count: int
    noise_count: int
    noise: bool
    accepted: bool = False


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


Row = tuple[str, str, str, str, str, str | None, str, str]
"""(route, side, exchange key, path, kind, rule, left, right), as the store lists them."""


def findings(
    routes: dict[str, dict[str, int]],
    rows: Iterable[Row],
    cfg: Noise,
    accepted: Callable[[str, str], bool] = lambda route, path: False,
) -> list[RouteFindings]:
    """Per route: the fields with Diffy's noise rule applied, and the divergent exchanges.
    Fields `accepted(route, path)` says a release owner accepted are listed but not counted."""
    shadow: dict[tuple[str, str], set[str]] = {}
    secondary: dict[tuple[str, str], set[str]] = {}
    kinds: dict[tuple[str, str], Counter[str]] = {}
    for route, side, key, path, kind, rule, *_ in rows:
        if rule is not None:
            continue
        target = shadow if side == "shadow" else secondary
        target.setdefault((route, path), set()).add(key)
        if side == "shadow":
            kinds.setdefault((route, path), Counter())[kind] += 1
    paths: dict[str, list[tuple[str, set[str]]]] = {}  # by route: one pass, however many
    for (route, path), keys in sorted(shadow.items()):
        paths.setdefault(route, []).append((path, keys))
    out = []
    for route, totals in routes.items():
        fields, divergent = [], set()
        for path, keys in paths.get(route, []):
            n = len(secondary.get((route, path), ()))
            noise = is_noise(len(keys), n, totals["exchanges"], cfg, totals["with_secondary"] > 0)
            kind = kinds[(route, path)].most_common(1)[0][0]
            ok = accepted(route, path)
            fields.append(Field(path, kind, len(keys), n, noise, ok))
            if not (noise or ok):
                divergent |= keys
        fields.sort(key=lambda f: (f.noise, -f.count, f.path))
        out.append(
            RouteFindings(
                route=route,
                exchanges=totals["exchanges"],
                with_secondary=totals["with_secondary"],
                matched=totals["matched"],
                ignored=totals["ignored"],
                noisy=totals["divergent"] - len(divergent),
                divergent=len(divergent),
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
    routes: dict[str, dict[str, int]], rows: Iterable[Row], share: float = 0.9, minimum: int = 10
) -> dict[str, list[str]]:
    """Route → paths where the shadow differs in nearly every exchange with values that look
    generated (timestamps, UUIDs, random tokens): candidates for ignore rules, which shadowdiff
    never applies by default (that could hide real bugs)."""
    keys: dict[tuple[str, str], set[str]] = {}
    generated: dict[tuple[str, str], bool] = {}
    for route, side, key, path, _kind, rule, left, right in rows:
        if side != "shadow" or rule is not None:
            continue
        keys.setdefault((route, path), set()).add(key)
        both = looks_generated(left) and looks_generated(right)
        generated[(route, path)] = generated.get((route, path), True) and both
    out: dict[str, list[str]] = {}
    for (route, path), seen in sorted(keys.items()):
        total = routes.get(route, {}).get("exchanges", 0)
        if total >= minimum and len(seen) >= share * total and generated[(route, path)]:
            out.setdefault(route, []).append(path)
    return out
