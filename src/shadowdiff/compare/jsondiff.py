"""Fast structural diff of two parsed JSON documents, under rules, for shadow-traffic comparison.

Why not DeepDiff on every pair: it visits every node in Python (~90 ms for an 8 KB pair here),
while mirrored responses are mostly equal or nearly so. This module proves equality at C speed
(`==`, then orjson bytes, which also tell 1 from 1.0 and from True), descends only into unequal
subtrees, and reports the paths DeepDiff reports for the same pair; `diff` lists the deliberate
exceptions. The rules' path patterns are `shadowdiff.jsonpath`'s. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Hashable
from dataclasses import dataclass
from difflib import SequenceMatcher
from fractions import Fraction
from typing import Any, TypeAlias

import orjson

from shadowdiff.jsonpath import MAX_DEPTH, Rules, State, automaton, format_path

__all__ = ["MAX_DEPTH", "Difference", "diff"]

_DIFFLIB_CELLS = 250_000
"""Largest len(a) * len(b) given to difflib, which is quadratic at worst, to align scalar lists."""

_SORTED = orjson.OPT_SORT_KEYS
_SCALARS = frozenset({str, int, float, bool, type(None)})
_CONTAINERS = frozenset({dict, list})
_NUMBERS = frozenset({int, float})
_MISSING: Any = object()
_NO_RULES = Rules()


_Path: TypeAlias = "tuple[_Path, Any] | None"  # linked (parent, key or index): O(1) per step down
_Task: TypeAlias = "tuple[Any, Any, _Path, State, int]"
_Report: TypeAlias = tuple[int, Any, Any]  # (index, left or _MISSING, right or _MISSING)


@dataclass(frozen=True, slots=True)
class Difference:
    """One place where the shadow's document differs from the primary's.

    kind: "changed" | "added" | "removed" | "type" | "ordering"; left/right are the values as
    given (None on the side where the value is absent). rule: None for a real divergence,
    "ignore", "tolerance" or "normalize" when a rule neutralised it, so callers can count them
    apart.
    """

    path: str
    kind: str
    left: Any
    right: Any
    rule: str | None = None


# ---------------------------------------------------------------------------- equality


def _equal(a: Any, b: Any) -> bool:
    """`a == b` that never raises (odd objects, RecursionError): unsure counts as unequal."""
    try:
        return bool(a == b)
    except Exception:
        return False


def _same(a: Any, b: Any) -> bool:
    """True only if certainly equal, types included (1, 1.0, True differ); False if unsure.

    `==` (C speed) rules out nearly every unequal pair; orjson bytes then catch the few
    ==-equal ones whose types differ. The walker treats "unsure" as "look inside".
    """
    if a is b:
        return True
    kind = type(a)
    if kind is not type(b):
        return False
    try:
        if a != b:
            return False
    except Exception:  # RecursionError on deep documents, odd objects
        return False
    if kind not in _CONTAINERS:
        return True
    try:
        return orjson.dumps(a) == orjson.dumps(b) or (
            orjson.dumps(a, option=_SORTED) == orjson.dumps(b, option=_SORTED)
        )
    except orjson.JSONEncodeError:  # big ints, deep nesting, lone surrogates
        return False


def _same_deep(a: Any, b: Any) -> bool:
    """Exact `_same` without recursion, for subtrees below MAX_DEPTH.

    A pair of containers already seen counts as equal, so cyclic (non-JSON) input ends too.
    """
    stack = [(a, b)]
    seen: set[tuple[int, int]] = set()
    while stack:
        x, y = stack.pop()
        if x is y:
            continue
        kind = type(x)
        if kind is not type(y):
            return False
        if kind in _CONTAINERS:
            if (id(x), id(y)) in seen:
                continue
            seen.add((id(x), id(y)))
        if kind is dict:
            if len(x) != len(y):
                return False
            for key, value in x.items():
                other = y.get(key, _MISSING)
                if other is _MISSING:
                    return False
                stack.append((value, other))
        elif kind is list:
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y, strict=True))
        elif not _equal(x, y):
            return False
    return True


def _normalized(
    left: Any, right: Any, normalizers: tuple[tuple[re.Pattern[str], str], ...]
) -> bool:
    """Whether two strings are equal once any matching normalizer's regex is replaced."""
    if type(left) is not str or type(right) is not str:
        return False
    return any(rx.sub(rep, left) == rx.sub(rep, right) for rx, rep in normalizers)


def _within(left: Any, right: Any, tolerances: tuple[tuple[float, float], ...]) -> bool:
    """Whether two numbers (bools are not numbers here) are close under any matching tolerance."""
    if type(left) not in _NUMBERS or type(right) not in _NUMBERS:
        return False
    if (type(left) is float and not math.isfinite(left)) or (
        type(right) is float and not math.isfinite(right)
    ):
        return False
    try:
        delta, scale = abs(left - right), max(abs(left), abs(right))
        return any(delta <= a or delta <= r * scale for a, r in tolerances)
    except OverflowError:  # an int beyond float range: compare exactly
        fl, fr = Fraction(left), Fraction(right)
        exact, big = abs(fl - fr), max(abs(fl), abs(fr))
        return any(exact <= Fraction(a) or exact <= Fraction(r) * big for a, r in tolerances)


# ---------------------------------------------------------------------------- multiset keys


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _leaf_bytes(value: Any) -> bytes:
    kind = type(value)
    if kind is str:
        return b"s" + str.encode(value, "utf-8", "surrogatepass")
    if kind is int:
        return b"i" + hex(value).encode()  # hex: no digit limit for 10**5000
    if kind is float:
        return b"f" + float.hex(value).encode()
    if kind is bool or value is None:
        return b"c" + repr(value).encode()
    try:
        return b"?" + f"{kind.__qualname__}:{value!r}".encode("utf-8", "surrogatepass")
    except Exception:
        return b"?" + str(id(value)).encode()


class _Canon:
    """Content digests for multiset matching where orjson cannot serve.

    Used when orjson fails (big ints, depth > 255, lone surrogates) and, with a rule state,
    to match modulo rules: keys ignored by a pattern are left out and unordered lists are
    sorted. Iterative and memoised per (node, state): linear time at any depth.
    """

    __slots__ = ("_memo", "_open")

    def __init__(self) -> None:
        self._memo: dict[tuple[int, int], bytes] = {}
        self._open: set[tuple[int, int]] = set()  # a node met again while open is a cycle

    def __call__(self, root: Any, state: State | None) -> bytes:
        done: list[bytes] = []
        todo: list[tuple[Any, State | None, list[Any] | None]] = [(root, state, None)]
        while todo:
            node, st, children = todo.pop()
            kind = type(node)
            if kind not in _CONTAINERS:
                done.append(_digest(_leaf_bytes(node)))
                continue
            memo_key = (id(node), id(st))
            if children is not None:  # all children are digested: close this node
                self._open.discard(memo_key)
                cut = len(done) - len(children)
                parts = done[cut:]
                del done[cut:]
                if kind is dict:
                    parts = sorted(
                        _digest(_leaf_bytes(k)) + p for k, p in zip(children, parts, strict=True)
                    )
                elif st is not None and st.unordered:
                    parts.sort()
                digest = self._memo[memo_key] = _digest(
                    (b"{" if kind is dict else b"[") + b"".join(parts)
                )
                done.append(digest)
            elif memo_key in self._memo:
                done.append(self._memo[memo_key])
            elif memo_key in self._open:
                done.append(_digest(b"cycle"))
            else:
                self._open.add(memo_key)
                self._expand(node, st, todo)
        return done[0]

    @staticmethod
    def _expand(
        node: Any, st: State | None, todo: list[tuple[Any, State | None, list[Any] | None]]
    ) -> None:
        """Queue a container's closing step, then its children (first child on top)."""
        if type(node) is dict:
            keys, pending = [], []
            for key, value in node.items():
                child = None
                if st is not None:
                    child = st.key(key)
                    if child.ignored and not st.ignored:
                        continue  # an ignored key must not keep items from matching
                keys.append(key)
                pending.append((value, child, None))
            todo.append((node, st, keys))
            todo.extend(reversed(pending))
        else:
            todo.append((node, st, node))
            todo.extend(
                (node[i], st.index(i) if st is not None else None, None)
                for i in range(len(node) - 1, -1, -1)
            )


def _pair_up(
    ia: list[int], ka: list[Hashable], ib: list[int], kb: list[Hashable]
) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Match equal keys first-come first-served: pairs, then unmatched on each side."""
    waiting: dict[Hashable, list[int]] = {}
    for j, key in zip(reversed(ib), reversed(kb), strict=True):
        waiting.setdefault(key, []).append(j)
    pairs, left_a = [], []
    for i, key in zip(ia, ka, strict=True):
        js = waiting.get(key)
        if js:
            pairs.append((i, js.pop()))
        else:
            left_a.append(i)
    return pairs, left_a, sorted(j for js in waiting.values() for j in js)


def _merge_same_index(reports: list[_Report]) -> list[_Report]:
    """DeepDiff's last step: a removal and an addition at the same path become one change.

    Not when the two values are equal (DeepDiff would report "1 changed to 1"): the removal
    and the addition, at the same path, say truthfully that the alignment moved there.
    """
    removed = {i: x for i, x, y in reports if y is _MISSING}
    added = {j: y for j, x, y in reports if x is _MISSING}
    both = {i for i in removed.keys() & added.keys() if not _same(removed[i], added[i])}
    if not both:
        return reports
    kept = [r for r in reports if r[0] not in both or _MISSING not in (r[1], r[2])]
    return kept + [(i, removed[i], added[i]) for i in sorted(both)]


def _scalar_reports(a: list[Any], b: list[Any], differ: list[int]) -> list[_Report]:
    """Align two lists of scalars exactly as DeepDiff does without ignore_order.

    DeepDiff runs difflib over the items, and if that yields more than one report it also
    pairs items by position and keeps whichever has fewer reports (positions on a tie).
    Items are keyed by (type, value) here, so 1, 1.0 and True stay apart.
    """
    n, m = len(a), len(b)
    positional: list[_Report] = [(i, a[i], b[i]) for i in differ]
    positional += [(i, a[i], _MISSING) for i in range(m, n)]
    positional += [(j, _MISSING, b[j]) for j in range(n, m)]
    ka, kb = [(type(x), x) for x in a], [(type(y), y) for y in b]
    lo, end_a, end_b = 0, n, m
    if n * m > _DIFFLIB_CELLS:  # long lists: align only what lies between equal ends
        while lo < min(n, m) and ka[lo] == kb[lo]:
            lo += 1
        while end_a > lo and end_b > lo and ka[end_a - 1] == kb[end_b - 1]:
            end_a, end_b = end_a - 1, end_b - 1
        if (end_a - lo) * (end_b - lo) > _DIFFLIB_CELLS:
            return positional
    aligned: list[_Report] = []
    matcher = SequenceMatcher(None, ka[lo:end_a], kb[lo:end_b], autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        i1, i2, j1, j2 = i1 + lo, i2 + lo, j1 + lo, j2 + lo
        if tag == "replace":
            for k in range(max(i2 - i1, j2 - j1)):
                i, j = i1 + k, j1 + k
                if i < i2:
                    aligned.append((i, a[i], b[j] if j < j2 else _MISSING))
                else:
                    aligned.append((j, _MISSING, b[j]))
        elif tag == "delete":
            aligned += [(i, a[i], _MISSING) for i in range(i1, i2)]
        elif tag == "insert":
            aligned += [(j, _MISSING, b[j]) for j in range(j1, j2)]
    if len(aligned) > 1 and len(aligned) >= len(positional):
        return positional
    return _merge_same_index(aligned)


# ---------------------------------------------------------------------------- the walk


def _parts(path: _Path) -> list[Any]:
    parts = []
    while path is not None:
        path, part = path
        parts.append(part)
    parts.reverse()
    return parts


def _sort_key(parts: list[Any]) -> tuple[tuple[int, Any], ...]:
    """Indexes in numeric order; mixed key types never compare directly."""
    return tuple((0, p) if type(p) is int else (1, p) if type(p) is str else (2, "") for p in parts)


class _Walker:
    """One diff: an explicit stack of unequal pairs still to look at, and what was found."""

    __slots__ = ("_todo", "_found", "_canon")

    def __init__(self) -> None:
        self._todo: list[_Task] = []
        self._found: list[tuple[tuple[tuple[int, Any], ...], Difference]] = []
        self._canon = _Canon()

    def run(self, a: Any, b: Any, root: State) -> list[Difference]:
        todo = self._todo
        todo.append((a, b, None, root, 0))
        while todo:
            a, b, path, state, depth = todo.pop()
            kind = type(a)
            if depth >= MAX_DEPTH:
                if not _same_deep(a, b):
                    self._emit(path, state, "type" if kind is not type(b) else "changed", a, b)
            elif kind is not type(b):
                self._emit(path, state, "type", a, b)
            elif kind is dict:
                self._dict(a, b, path, state, depth + 1)
            elif kind is list:
                self._list(a, b, path, state, depth + 1)
            elif not _equal(a, b):
                self._emit(path, state, "changed", a, b)
        self._found.sort(key=lambda found: found[0])
        return [difference for _, difference in self._found]

    def _emit(self, path: _Path, state: State, kind: str, left: Any, right: Any) -> None:
        if state.ignored:
            rule: str | None = "ignore"
        elif (
            state.tolerances
            and kind in ("changed", "type")
            and _within(left, right, state.tolerances)
        ):
            rule = "tolerance"
        elif (
            state.normalizers and kind == "changed" and _normalized(left, right, state.normalizers)
        ):
            rule = "normalize"
        else:
            rule = None
        parts = _parts(path)
        self._found.append(
            (_sort_key(parts), Difference(format_path(parts), kind, left, right, rule))
        )

    def _dict(
        self, a: dict[Any, Any], b: dict[Any, Any], path: _Path, state: State, depth: int
    ) -> None:
        removed = 0
        for key, left in a.items():
            right = b.get(key, _MISSING)
            if right is _MISSING:
                self._emit((path, key), state.key(key), "removed", left, None)
                removed += 1
            elif not _same(left, right):
                self._todo.append((left, right, (path, key), state.key(key), depth))
        if len(b) != len(a) - removed:
            for key, right in b.items():
                if key not in a:
                    self._emit((path, key), state.key(key), "added", None, right)

    def _list(self, a: list[Any], b: list[Any], path: _Path, state: State, depth: int) -> None:
        n, m = len(a), len(b)
        differ = [i for i in range(min(n, m)) if not _same(a[i], b[i])]
        if state.unordered:
            self._unordered(a, b, differ, path, state, depth)
        elif n == m and len(differ) > 1 and self._reordered(a, b, differ, path, state, depth):
            return
        elif all(type(x) in _SCALARS for x in a) and all(type(y) in _SCALARS for y in b):
            for i, left, right in _scalar_reports(a, b, differ):
                if right is _MISSING:
                    self._emit((path, i), state.index(i), "removed", left, None)
                elif left is _MISSING:
                    self._emit((path, i), state.index(i), "added", None, right)
                else:
                    self._todo.append((left, right, (path, i), state.index(i), depth))
        else:  # DeepDiff pairs items holding containers by position
            self._todo.extend((a[i], b[i], (path, i), state.index(i), depth) for i in differ)
            for i in range(m, n):
                self._emit((path, i), state.index(i), "removed", a[i], None)
            for j in range(n, m):
                self._emit((path, j), state.index(j), "added", None, b[j])

    def _match(
        self,
        a: list[Any],
        b: list[Any],
        ia: list[int],
        ib: list[int],
        state: State,
        modulo_rules: bool = True,
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[int], list[int]]:
        """Multiset matching of a[ia] against b[ib]: exact pairs, pairs equal modulo rules
        (ignored keys, unordered lists inside) if `modulo_rules`, and the unmatched on each side."""
        items = [a[i] for i in ia] + [b[j] for j in ib]
        try:
            keys: list[Hashable] = [
                (type(x), x) if type(x) in _SCALARS else orjson.dumps(x, option=_SORTED)
                for x in items
            ]
        except orjson.JSONEncodeError:
            keys = [(type(x), x) if type(x) in _SCALARS else self._canon(x, None) for x in items]
        exact, left_a, left_b = _pair_up(ia, keys[: len(ia)], ib, keys[len(ia) :])
        loose: list[tuple[int, int]] = []
        if modulo_rules and left_a and left_b and state.rules_below and not state.ignored:
            ka: list[Hashable] = [self._canon(a[i], state.index(i)) for i in left_a]
            kb: list[Hashable] = [self._canon(b[j], state.index(j)) for j in left_b]
            loose, left_a, left_b = _pair_up(left_a, ka, left_b, kb)
        return exact, loose, left_a, left_b

    def _reordered(
        self, a: list[Any], b: list[Any], differ: list[int], path: _Path, state: State, depth: int
    ) -> bool:
        """Report a permutation as one "ordering" difference; False if it is none. Items
        equal modulo rules pair up too, unless a rule names a position in this list: then
        positions matter, and items are not compared across them under different rules."""
        exact, loose, left_a, left_b = self._match(
            a, b, differ, differ, state, modulo_rules=not state.positional
        )
        if left_a or left_b:
            return False
        if any(i != j for i, j in exact + loose):
            self._emit(path, state, "ordering", a, b)
        self._push_pairs(a, b, loose, path, state, depth)
        return True

    def _unordered(
        self, a: list[Any], b: list[Any], differ: list[int], path: _Path, state: State, depth: int
    ) -> None:
        """Multiset comparison. Leftovers are compared pairwise when that is unambiguous (one
        on each side, or the same index), otherwise reported as removed and added."""
        common = min(len(a), len(b))
        ia, ib = differ + list(range(common, len(a))), differ + list(range(common, len(b)))
        _, pairs, left_a, left_b = self._match(a, b, ia, ib, state)
        if len(left_a) == 1 == len(left_b):
            pairs.append((left_a[0], left_b[0]))
            left_a = left_b = []
        else:
            both = set(left_a) & set(left_b)
            pairs += [(i, i) for i in sorted(both)]
            left_a = [i for i in left_a if i not in both]
            left_b = [j for j in left_b if j not in both]
        self._push_pairs(a, b, pairs, path, state, depth)
        for i in left_a:
            self._emit((path, i), state.index(i), "removed", a[i], None)
        for j in left_b:
            self._emit((path, j), state.index(j), "added", None, b[j])

    def _push_pairs(
        self,
        a: list[Any],
        b: list[Any],
        pairs: list[tuple[int, int]],
        path: _Path,
        state: State,
        depth: int,
    ) -> None:
        """Look inside matched items that are not identical, at the primary's index."""
        self._todo.extend(
            (a[i], b[j], (path, i), state.index(i), depth)
            for i, j in pairs
            if not _same(a[i], b[j])
        )


def diff(a: Any, b: Any, rules: Rules = _NO_RULES) -> list[Difference]:
    """Every difference from primary `a` to shadow `b`, sorted by path (indexes numerically),
    rule-neutralised ones included and flagged by `rule`. Never raises, even on non-JSON input.

    Real differences (rule None) sit where DeepDiff(a, b, threshold_to_diff_deeper=0) reports
    values_changed, type_changes or dictionary/iterable_item_added/removed (its default 0.33
    reports a dict sharing few keys as one change), lists aligned as DeepDiff aligns them, except:
    - a permutation is one "ordering" at the list's path (none if unordered by rule), where
      DeepDiff reports changes at each displaced index;
    - 1, 1.0 and True are different types everywhere; DeepDiff aligns scalar lists with `==`,
      so [1] vs [1.0] passes there;
    - where DeepDiff merges a removal and an addition at one index into a change between two
      equal values, both are kept;
    - scalar lists beyond 250,000 len(a) * len(b) are aligned between their common ends only;
    - below MAX_DEPTH levels a differing subtree is one "changed" (or "type") at the cut;
    - unordered lists are multisets (DeepDiff's report_repetition=True): exact matches pair
      off, leftovers are compared inside only when unambiguous (DeepDiff pairs by similarity).
      Ignore rules and nested unordered lists count when matching; tolerances do not.
    """
    if _same(a, b):
        return []
    return _Walker().run(a, b, automaton(rules).root)
