"""From two outcomes to a short list of divergences: outcome, status, headers, body.

Pure functions over `Outcome`s, no I/O. Nothing here raises on strange bytes: bodies that do
not decode or parse are compared as what they are and the difference says so. Every
difference a rule neutralises is still returned, marked with the rule, so an exchange is
counted as matched, ignored or divergent and nothing is hidden by a rule (GitHub Scientist).
The list stays short whatever the bodies: at most MAX_DIVERGENCES of the headers and of the
body, and one `more` divergence for the rest.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl

import orjson

from shadowdiff import jsonpath
from shadowdiff.compare import bodies, jsondiff
from shadowdiff.config import Compare, Rules
from shadowdiff.model import Divergence, Headers, Outcome

EXCERPT = 200
"""Characters of a value kept with a divergence; the stored exchange has the rest."""
MAX_TEXT_DIFF = 256 * 1024
"""Longer texts are compared by hash only: a line diff of them would cost too much."""
MAX_DIVERGENCES = 100
"""Divergences kept of one exchange's headers, and of its body; the rest become one `more`
divergence at `header:…` or `body:…` saying how many. One changed field in each of 20,000 list
items is one regression, and stored one by one it would cost 20,000 rows per exchange to
store, keep examples of and judge."""
MORE = "more"
"""The kind of the divergence that stands for those beyond MAX_DIVERGENCES."""


def excerpt(value: Any) -> str:
    """A short text for a value: JSON for parsed values, as-is for text."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = orjson.dumps(value).decode()
        except Exception:  # noqa: BLE001 - too deep, a big int, not JSON: describe, never raise
            text = f"({type(value).__name__} too deep or too odd to show)"
    return text if len(text) <= EXCERPT else text[: EXCERPT - 1] + "…"


@dataclass(frozen=True)
class _Compiled:
    """One route's rules, compiled once."""

    json: jsonpath.Rules
    ignore_headers: frozenset[str]
    ignore_status: bool
    ignore_body: bool


class Comparer:
    """Compares outcomes under the configured rules (global, plus per route)."""

    def __init__(self, cfg: Compare, mask: Callable[[Any], Any] = lambda value: value) -> None:
        """`mask` hides secrets inside the values a divergence shows (a changed object that
        holds a password), since those excerpts are stored and reported."""
        self.cfg = cfg
        self.mask = mask
        self.skip_headers = frozenset(h.lower() for h in cfg.ignored_headers)
        self.by_route: dict[str, _Compiled] = {}

    def rules(self, route: str) -> _Compiled:
        compiled = self.by_route.get(route)
        if compiled is None:
            extra = [r for r in self.cfg.routes if r.route == route]
            compiled = self.by_route[route] = _compile([self.cfg, *extra], self.cfg.unordered_all)
        return compiled

    def compare(
        self, primary: Outcome, other: Outcome, route: str, side: str = "shadow"
    ) -> list[Divergence]:
        """Every difference between the primary's outcome and the `side`'s, in a stable order."""
        if primary.error or other.error:
            if primary.error == other.error:
                return []
            if other.error:
                kind = f"{side}_error:{other.error}"
            else:
                kind = f"primary_error:{primary.error}"
            return [
                Divergence("outcome", kind, primary.error or "response", other.error or "response")
            ]
        rules = self.rules(route)
        out: list[Divergence] = []
        if primary.status != other.status:
            out.append(
                Divergence(
                    "status",
                    "changed",
                    str(primary.status),
                    str(other.status),
                    "ignore" if rules.ignore_status else None,
                )
            )
        out.extend(self._headers(primary.headers, other.headers, rules))
        body = self._body(primary.headers, primary.body, other.headers, other.body, rules)
        if rules.ignore_body:
            body = [Divergence(d.path, d.kind, d.left, d.right, d.rule or "ignore") for d in body]
        out.extend(body)
        return out

    # -- headers ---------------------------------------------------------------------------

    def _headers(self, left: Headers, right: Headers, rules: _Compiled) -> list[Divergence]:
        a, b = self._header_values(left), self._header_values(right)
        if a == b:
            return []
        out: list[Divergence] = []
        for name in sorted(a.keys() | b.keys()):
            va, vb = a.get(name), b.get(name)
            if va == vb:
                continue
            kind = "added" if va is None else "removed" if vb is None else "changed"
            rule = "ignore" if name in rules.ignore_headers else None
            out.append(
                Divergence(
                    f"header:{name}",
                    kind,
                    excerpt(", ".join(va or [])),
                    excerpt(", ".join(vb or [])),
                    rule,
                )
            )
        kept, more = _capped(out, "header")
        return kept + more

    def _header_values(self, headers: Headers) -> dict[str, list[str]]:
        """Name → sorted values, as a multiset; Set-Cookie by cookie name only."""
        values: dict[str, list[str]] = {}
        for raw_name, raw_value in headers:
            name = raw_name.decode("latin-1").lower()
            if name in self.skip_headers:
                continue
            value = raw_value.decode("latin-1").strip()
            if name == "set-cookie":
                value = _cookie_name(value)
            values.setdefault(name, []).append(value)
        for listed in values.values():
            listed.sort()
        return values

    # -- bodies ----------------------------------------------------------------------------

    def _body(
        self,
        left_headers: Headers,
        left: bytes,
        right_headers: Headers,
        right: bytes,
        rules: _Compiled,
    ) -> list[Divergence]:
        if left == right:
            return []
        a, b = bodies.read(left_headers, left), bodies.read(right_headers, right)
        flags = [
            Divergence("body", parsed.failure, side, "", None)
            for side, parsed in (("primary", a), ("shadow", b))
            if parsed.failure
        ]
        if a.data == b.data:
            return []  # the same content, encoded differently
        if not a.data or not b.data:
            kind = "added" if not a.data else "removed"
            return [Divergence("body", kind, _describe(a.data), _describe(b.data))]
        kind = a.kind if a.kind == b.kind else a.kind if b.kind == bodies.BINARY else b.kind
        if kind in (bodies.JSON, bodies.FORM):
            return flags + self._structured(a, b, kind, rules)
        if kind == bodies.TEXT and bodies.looks_json(a.data) and bodies.looks_json(b.data):
            left, left_ok = bodies.parse_json(a.data)
            right, right_ok = bodies.parse_json(b.data)
            if left_ok and right_ok:  # JSON served as text: still compared structurally
                return flags + self._json(left, right, rules)
        if kind in (bodies.HTML, bodies.XML, bodies.TEXT):
            return flags + _text(a.data, b.data, collapse=kind != bodies.TEXT)
        return flags + [Divergence("body", "changed", _describe(a.data), _describe(b.data))]

    def _structured(
        self, a: bodies.Body, b: bodies.Body, kind: str, rules: _Compiled
    ) -> list[Divergence]:
        parse = bodies.parse_json if kind == bodies.JSON else _parse_form
        left, left_ok = parse(a.data)
        right, right_ok = parse(b.data)
        if not (left_ok and right_ok):
            if not (left_ok or right_ok):
                return _text(a.data, b.data, collapse=False)
            return [Divergence("body", f"not_{kind}", _describe(a.data), _describe(b.data))]
        return self._json(left, right, rules)

    def _json(self, left: Any, right: Any, rules: _Compiled) -> list[Divergence]:
        kept, more = _capped(jsondiff.diff(left, right, rules.json), "body")
        return [
            Divergence(
                f"body:{d.path}",
                d.kind,
                excerpt(self.mask(d.left)),
                excerpt(self.mask(d.right)),
                d.rule,
            )
            for d in kept
        ] + more


class _Ruled(Protocol):
    @property
    def rule(self) -> str | None: ...


_D = TypeVar("_D", bound=_Ruled)


def _capped(found: list[_D], part: str) -> tuple[list[_D], list[Divergence]]:
    """At most MAX_DIVERGENCES of `found`, in their order, real ones (no rule) first; and the
    `more` divergence standing for the rest, real if any of them is (so the exchange is
    matched, ignored or divergent as it would be uncapped), else under their rules."""
    if len(found) <= MAX_DIVERGENCES:
        return found, []
    real_room = min(MAX_DIVERGENCES, sum(d.rule is None for d in found))
    ruled_room = MAX_DIVERGENCES - real_room
    kept: list[_D] = []
    rules: set[str] = set()
    real = 0
    for d in found:
        if d.rule is None and real_room:
            real_room -= 1
        elif d.rule is not None and ruled_room:
            ruled_room -= 1
        elif d.rule is None:
            real += 1
            continue
        else:
            rules.add(d.rule)
            continue
        kept.append(d)
    omitted = len(found) - len(kept)
    more = Divergence(
        f"{part}:…",
        MORE,
        f"{omitted} more divergences",
        f"{real} of them real",
        None if real else ",".join(sorted(rules)),
    )
    return kept, [more]


def _json_path(path: str) -> str | None:
    """`body:$.a` → `$.a`; None for rule paths that are not about the JSON body."""
    return path.removeprefix("body:") if path.startswith("body:$") else None


def _compile(sets: list[Rules], unordered_all: bool) -> _Compiled:
    """The global rules and a route's own, merged and compiled once."""
    ignore = [p for rules in sets for p in rules.ignore]
    tolerance = [t for rules in sets for t in rules.tolerance]
    unordered = [p for rules in sets for p in rules.unordered]
    normalize = [n for rules in sets for n in rules.normalize]
    json_rules = jsonpath.Rules(
        ignore=tuple(j for p in ignore if (j := _json_path(p))),
        tolerance=tuple(
            (j, t.absolute, t.relative) for t in tolerance if (j := _json_path(t.path))
        ),
        unordered=tuple(j for p in unordered if (j := _json_path(p))),
        unordered_all=unordered_all,
        normalize=tuple((j, n.pattern, n.replace) for n in normalize if (j := _json_path(n.path))),
    )
    headers = frozenset(p.removeprefix("header:") for p in ignore if p.startswith("header:"))
    return _Compiled(
        json=json_rules,
        ignore_headers=headers,
        ignore_status="status" in ignore,
        ignore_body="body" in ignore,
    )


def _cookie_name(value: str) -> str:
    try:
        cookie = SimpleCookie(value)
    except CookieError:
        return value.split("=", 1)[0].strip()
    return ",".join(sorted(cookie.keys())) or value.split("=", 1)[0].strip()


def _parse_form(data: bytes) -> tuple[Any, bool]:
    """A form body as {key: sorted values}: a multiset, compared like JSON."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, False
    form: dict[str, list[str]] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        form.setdefault(key, []).append(value)
    for values in form.values():
        values.sort()
    return form, True


def _describe(data: bytes) -> str:
    if not data:
        return "empty"
    return f"{len(data)} bytes sha256:{hashlib.sha256(data).hexdigest()[:16]}"


def _text(left: bytes, right: bytes, collapse: bool) -> list[Divergence]:
    """Text compared by lines (markup first with its whitespace collapsed), with an excerpt."""
    try:
        a, b = left.decode("utf-8"), right.decode("utf-8")
    except UnicodeDecodeError:
        valid = [_utf8(left), _utf8(right)]
        if valid == [False, False]:
            return [Divergence("body", "changed", _describe(left), _describe(right))]
        return [Divergence("body", "invalid_utf8", _describe(left), _describe(right))]
    if collapse:
        a, b = _collapse(a), _collapse(b)
    if a == b:
        return []
    if len(a) + len(b) > MAX_TEXT_DIFF:
        return [Divergence("body", "changed", _describe(left), _describe(right))]
    lines = list(
        difflib.unified_diff(a.splitlines(), b.splitlines(), "primary", "shadow", n=1, lineterm="")
    )
    shown = "\n".join(lines[2:12])
    return [Divergence("body", "changed", excerpt(shown), f"{len(lines) - 2} diff lines")]


def _collapse(markup: str) -> str:
    """Whitespace folded, one tag a line, so a line diff of markup reads well."""
    folded = re.sub(r"\s+", " ", markup).strip()
    return re.sub(r">\s*<", ">\n<", folded)


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
