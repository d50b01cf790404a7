"""JSON path patterns: the rule language of the JSON diff, of redaction and of accepted paths.

`$.items[3].price`, `$['odd key']`, `$..trace_id`, `$.users[*].*`: `Rules` groups patterns by what
they do, `format_path` writes a path they accept back, `mask` replaces the values at matching paths
and `covered` tells whether a reported path lies under one. Patterns compile once per `Rules`
into a lazily built automaton whose `State` costs one dict lookup per step down a document.
A leaf: imports nothing of shadowdiff. Pure: no I/O; the only state is a small cache of
compiled rules.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeAlias

__all__ = [
    "MAX_DEPTH",
    "Rules",
    "State",
    "any_index",
    "automaton",
    "covered",
    "format_path",
    "mask",
]

MAX_DEPTH = 200
"""Subtrees below this depth are compared whole by the diff and replaced whole by `mask` where
a pattern could still match (a secret is never kept for being deep): time, paths and memory
stay bounded."""

_OTHER_KEY: Any = object()  # stands for every dict key that no pattern names literally
_OTHER_INDEX: Any = object()  # likewise for list indexes


@dataclass(frozen=True)
class Rules:
    """What not to count as a divergence. Invalid patterns raise ValueError here, not in the diff
    (`shadowdiff.compare.jsondiff.diff`).

    Patterns: `$` then `.key`, `['odd key']`, `[3]`, `.*` (any key), `[*]` (any index), and `..`
    before any of them for "at any depth" (`$..trace_id`). A reported `Difference.path` is an
    exact pattern. ignore covers the whole subtree; tolerance (pattern, absolute, relative)
    applies to numbers exactly at matching paths; unordered lists compare as multisets;
    normalize (pattern, regex, replacement) makes two strings at matching paths equal when
    they are once the regex is replaced in both (values known to vary, such as timestamps).
    """

    ignore: tuple[str, ...] = ()
    tolerance: tuple[tuple[str, float, float], ...] = ()
    unordered: tuple[str, ...] = ()
    unordered_all: bool = False
    normalize: tuple[tuple[str, str, str], ...] = ()

    def __post_init__(self) -> None:
        # Tuples whatever the caller passed (lists from YAML): Rules must hash to be cached.
        object.__setattr__(self, "ignore", tuple(self.ignore))
        object.__setattr__(
            self, "tolerance", tuple((p, float(a), float(r)) for p, a, r in self.tolerance)
        )
        object.__setattr__(self, "unordered", tuple(self.unordered))
        object.__setattr__(self, "normalize", tuple(tuple(n) for n in self.normalize))
        automaton(self)


def format_path(parts: Iterable[Any]) -> str:
    """`$.items[3].price`, `$['odd key']`: readable, and accepted back as a rule pattern."""
    out = ["$"]
    for part in parts:
        if type(part) is int:
            out.append(f"[{part}]")
        elif type(part) is not str:
            out.append(f"[{part!r}]")  # not JSON; shown, never parsed back
        elif part.isascii() and part.isidentifier():
            out.append("." + part)
        else:
            out.append("['" + part.replace("\\", "\\\\").replace("'", "\\'") + "']")
    return "".join(out)


# ---------------------------------------------------------------------------- rule patterns

_DESCEND, _KEY, _ANY_KEY, _INDEX, _ANY_INDEX = range(5)
_Segment: TypeAlias = tuple[int, Any]

_STEP = re.compile(
    r"""(?P<dots>\.\.?)?(?:
          \[(?P<index>\d+)\]
        | \[(?P<any_index>\*)\]
        | \['(?P<single>(?:[^'\\]|\\.)*)'\]
        | \["(?P<double>(?:[^"\\]|\\.)*)"\]
        | (?P<name>[^.\[\]]+)
    )""",
    re.VERBOSE | re.DOTALL,
)
_ESCAPED = re.compile(r"\\(.)", re.DOTALL)


def _parse(pattern: str) -> tuple[_Segment, ...]:
    """Segments of a path pattern, or ValueError naming the pattern."""
    if not isinstance(pattern, str) or not pattern.startswith("$"):
        raise ValueError(f"path pattern must start with '$': {pattern!r}")
    segments: list[_Segment] = []
    pos = 1
    while pos < len(pattern):
        step = _STEP.match(pattern, pos)
        dots = step["dots"] if step else None
        if (
            step is None
            or (step["name"] is not None and not dots)
            or (step["name"] is None and dots == ".")
        ):
            raise ValueError(f"bad path pattern at offset {pos}: {pattern!r}")
        if dots == "..":
            segments.append((_DESCEND, None))
        if step["index"] is not None:
            segments.append((_INDEX, int(step["index"])))
        elif step["any_index"] is not None:
            segments.append((_ANY_INDEX, None))
        elif step["name"] == "*":
            segments.append((_ANY_KEY, None))
        elif step["name"] is not None:
            segments.append((_KEY, step["name"]))
        else:
            quoted = step["single"] if step["single"] is not None else step["double"]
            segments.append((_KEY, _ESCAPED.sub(r"\1", quoted)))
        pos = step.end()
    return tuple(segments)


def _matches(segment: _Segment, token: Any) -> bool:
    kind, arg = segment
    if kind == _KEY:
        return type(token) is str and token == arg
    if kind == _ANY_KEY:
        return token is _OTHER_KEY or type(token) is str
    if kind == _INDEX:
        return type(token) is int and token == arg
    return token is _OTHER_INDEX or type(token) is int


class State:
    """Where one path stands in all patterns at once: a lazily built DFA state.

    Walking down costs one dict lookup per step, and nothing at all once no pattern can
    match any more (the state with no live pattern is its own child).
    """

    __slots__ = (
        "_automaton",
        "_nfa",
        "_literals",
        "_next",
        "ignored",
        "tolerances",
        "normalizers",
        "unordered",
        "rules_below",
        "positional",
    )

    def __init__(
        self, automaton: _Automaton, nfa: frozenset[tuple[int, int]], inherited: bool
    ) -> None:
        self._automaton = automaton
        self._nfa = nfa
        self._next: dict[Any, State] = {}
        patterns, tags = automaton.patterns, automaton.tags
        ends = [pid for pid, pos in nfa if pos == len(patterns[pid])]
        live = [(pid, pos) for pid, pos in nfa if pos < len(patterns[pid])]
        self.ignored = inherited or any(tags[pid] == "ignore" for pid in ends)
        self.tolerances = tuple(
            automaton.tolerances[pid] for pid in ends if tags[pid] == "tolerance"
        )
        self.normalizers = tuple(
            automaton.normalizers[pid] for pid in ends if tags[pid] == "normalize"
        )
        self.unordered = automaton.unordered_all or any(tags[pid] == "unordered" for pid in ends)
        self.rules_below = automaton.unordered_all or any(
            tags[pid] not in ("tolerance", "normalize") for pid, _ in live
        )
        literals = set()
        for pid, pos in live:
            kind, arg = patterns[pid][pos + (patterns[pid][pos][0] == _DESCEND)]
            if kind in (_KEY, _INDEX):
                literals.add(arg)
        self._literals = literals
        self.positional = any(type(arg) is int for arg in literals)

    def key(self, key: Any) -> State:
        """The state at `key` of a dict at this state."""
        if not self._nfa:
            return self
        token = key if type(key) is str and key in self._literals else _OTHER_KEY
        return self._next.get(token) or self._step(token)

    def index(self, index: int) -> State:
        """The state at `index` of a list at this state."""
        if not self._nfa:
            return self
        token = index if index in self._literals else _OTHER_INDEX
        return self._next.get(token) or self._step(token)

    def _step(self, token: Any) -> State:
        patterns = self._automaton.patterns
        nfa: set[tuple[int, int]] = set()
        for pid, pos in self._nfa:
            segments = patterns[pid]
            if pos == len(segments):
                continue
            if segments[pos][0] == _DESCEND:
                nfa.add((pid, pos))  # `..` swallows this step, or the next segment matches it
                if _matches(segments[pos + 1], token):
                    nfa.add((pid, pos + 2))
            elif _matches(segments[pos], token):
                nfa.add((pid, pos + 1))
        state = self._next[token] = self._automaton.state(frozenset(nfa), self.ignored)
        return state


class _Automaton:
    """All patterns of one Rules, compiled once; states are shared between calls."""

    def __init__(self, rules: Rules) -> None:
        self.patterns: list[tuple[_Segment, ...]] = []
        self.tags: list[str] = []
        self.tolerances: list[tuple[float, float]] = []
        self.normalizers: list[tuple[re.Pattern[str], str]] = []
        for pattern in rules.ignore:
            self._add(pattern, "ignore")
        for pattern, absolute, relative in rules.tolerance:
            if not (0 <= absolute < math.inf and 0 <= relative < math.inf):
                raise ValueError(f"tolerances must be finite and >= 0: {pattern!r}")
            self._add(pattern, "tolerance", tolerance=(absolute, relative))
        for pattern in rules.unordered:
            self._add(pattern, "unordered")
        for pattern, regex, replacement in rules.normalize:
            try:
                compiled = re.compile(regex)
            except re.error as e:
                raise ValueError(f"bad normalize regex {regex!r}: {e}") from None
            self._add(pattern, "normalize", normalizer=(compiled, replacement))
        self.unordered_all = rules.unordered_all
        self._states: dict[tuple[frozenset[tuple[int, int]], bool], State] = {}
        self.root = self.state(frozenset((pid, 0) for pid in range(len(self.patterns))), False)

    def _add(
        self,
        pattern: str,
        tag: str,
        tolerance: tuple[float, float] = (0.0, 0.0),
        normalizer: tuple[re.Pattern[str], str] = (re.compile(""), ""),
    ) -> None:
        self.patterns.append(_parse(pattern))
        self.tags.append(tag)
        self.tolerances.append(tolerance)
        self.normalizers.append(normalizer)

    def state(self, nfa: frozenset[tuple[int, int]], inherited: bool) -> State:
        state = self._states.get((nfa, inherited))
        if state is None:
            state = self._states[nfa, inherited] = State(self, nfa, inherited)
        return state


@lru_cache(maxsize=128)
def automaton(rules: Rules) -> _Automaton:
    """The compiled patterns of `rules` (cached): a walk starts at its `root` State."""
    return _Automaton(rules)


def mask(
    doc: Any,
    patterns: tuple[str, ...],
    replacement: Any,
    fold: Callable[[Any], Any] = lambda key: key,
) -> tuple[Any, bool]:
    """`doc` with every value at a matching path replaced, and whether anything was; the same
    patterns as `Rules.ignore` (redacting `$..password` in stored examples and reports). Dict
    keys are matched as `fold` makes them (redaction folds case, its patterns folded alike).
    Returns a copy only along changed branches; never raises; depth bounded like `diff`, a
    container at MAX_DEPTH where a pattern could still match replaced whole."""
    root = automaton(Rules(ignore=patterns)).root

    def walk(node: Any, state: State, depth: int) -> tuple[Any, bool]:
        if not state.rules_below:
            return node, False
        if depth >= MAX_DEPTH:
            return (replacement, True) if type(node) in (dict, list) else (node, False)
        if type(node) is dict:
            items = [(k, state.key(fold(k)), v) for k, v in node.items()]
        elif type(node) is list:
            items = [(i, state.index(i), v) for i, v in enumerate(node)]
        else:
            return node, False
        changed, out = False, []
        for key, child, value in items:
            if child.ignored:
                new, hit = replacement, True
            else:
                new, hit = walk(value, child, depth + 1)
            changed |= hit
            out.append((key, new))
        if not changed:
            return node, False
        return (dict(out) if type(node) is dict else [v for _, v in out]), True

    return walk(doc, root, 0)


def covered(path: str, patterns: tuple[str, ...]) -> bool:
    """Whether a reported path (`$.user.token`) lies at or under one of the patterns."""
    try:
        segments = _parse(path)
    except ValueError:
        return False
    state = automaton(Rules(ignore=patterns)).root
    for kind, arg in segments:
        if kind not in (_KEY, _INDEX):
            return False
        state = state.key(arg) if kind == _KEY else state.index(arg)
    return state.ignored


_STEPS = re.compile(r"\['(?:[^'\\]|\\.)*'\]|\[(\d+)\]")
"""A quoted key of `format_path` (left as it is) or a list index."""


def any_index(path: str) -> str:
    """`body:$.items[3].price` → `body:$.items[*].price`: the one name of a field of every item
    of a list, for what is kept per field (examples, the divergent paths of an exchange in
    the aggregates), which a long list would otherwise multiply. Quoted keys (`$['a[1]']`)
    stay as they are."""
    return _STEPS.sub(lambda step: "[*]" if step[1] else step[0], path)
