"""The decision to mirror: methods, path rules, per-route overrides, rate, sticky key, rate cap.

Runs on the proxy's event loop for every request, so it is cheap: precompiled globs, no I/O,
and the header/cookie/query parsing for a sticky key only once a request is otherwise eligible.
"""

from __future__ import annotations

import fnmatch
import hashlib
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs

from shadowdiff.config import Sampling

Lookup = Callable[[str], str | None]
"""Returns a request header's value by (case-insensitive) name, or None."""


def _glob(patterns: list[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def sticky_fraction(key: str) -> float:
    """A stable number in [0, 1) for a key: the same key always gets the same decision."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def where(key: str | None) -> tuple[str, str] | None:
    """A validated `header:NAME`, `cookie:NAME` or `query:NAME` as (kind, name)."""
    if key is None:
        return None
    kind, _, name = key.partition(":")
    return kind, name


def lookup(where: tuple[str, str], query: str, header: Lookup) -> str | None:
    """A request's value of a header, a cookie or a query parameter; None: it has none."""
    kind, name = where
    if kind == "header":
        return header(name)
    if kind == "query":
        values = parse_qs(query).get(name) if query else None
        return values[0] if values else None
    raw = header("cookie")
    if not raw:
        return None
    try:
        morsel = SimpleCookie(raw).get(name)
    except CookieError:
        return None
    return morsel.value if morsel else None


@dataclass(frozen=True, slots=True)
class _Rule:
    path: re.Pattern[str]
    methods: frozenset[str] | None
    rate: float | None


class RateCap:
    """A token bucket: at most `per_second` samples a second, bursts of one second's worth."""

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = per_second
        self.capacity = max(1.0, per_second)
        self.tokens = self.capacity
        self.clock = clock
        self.last = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.per_second)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Sampler:
    """Decides per request; returns None to mirror, or the reason not to (a counter name).

    `paused` (the kill switch) stops all mirroring; `dial`, when set, replaces every
    configured rate, per-route ones included, so turning it down always turns mirroring down.
    """

    def __init__(self, cfg: Sampling, rng: random.Random | None = None) -> None:
        self.rate = cfg.rate
        self.methods = frozenset(cfg.methods)
        self.include = _glob(cfg.include)
        self.exclude = _glob(cfg.exclude)
        self.rules = [
            _Rule(
                path=re.compile(fnmatch.translate(r.path)),
                methods=frozenset(r.methods) if r.methods is not None else None,
                rate=r.rate,
            )
            for r in cfg.routes
        ]
        self.sticky = where(cfg.sticky_key)
        self.cap = RateCap(cfg.max_per_second) if cfg.max_per_second else None
        self.random = (rng or random.Random()).random
        self.paused = False
        self.dial: float | None = None

    def decide(self, method: str, path: str, header: Lookup, kept: bool = False) -> str | None:
        """`None` means mirror it; otherwise the `not_sampled` reason. `kept`: a request
        mirrored whatever the rate and the cap (a release's fallback), unless paused, dialled
        to 0 or ruled out by method or path."""
        if self.paused:
            return "paused"
        bare, _, query = path.partition("?")
        rule = next((r for r in self.rules if r.path.match(bare)), None)
        methods = rule.methods if rule and rule.methods is not None else self.methods
        if method not in methods:
            return "method"
        if self.include and not self.include.match(bare):
            return "path"
        if self.exclude and self.exclude.match(bare):
            return "path"
        rate = rule.rate if rule and rule.rate is not None else self.rate
        if self.dial is not None:
            rate = self.dial
        if kept:
            return "rate" if rate == 0 else None
        key = lookup(self.sticky, query, header) if self.sticky else None
        draw = sticky_fraction(key) if key is not None else self.random()
        if draw >= rate:
            return "rate"
        if self.cap and not self.cap.take():
            return "rate_cap"
        return None
