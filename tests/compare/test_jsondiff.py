"""The fast JSON diff: exact paths and kinds, rules, hostile inputs, and equivalence with DeepDiff.

DeepDiff is the reference: property tests check that `diff` reports real differences at the
paths DeepDiff reports for the same pair. Generated floats are never integral because DeepDiff
aligns lists of scalars with `==`, so [1] and [1.0] are equal to it and not to us (see `diff`).
"""

from __future__ import annotations

import copy
import random
import re
import time
from typing import Any

import pytest
from deepdiff import DeepDiff
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowdiff.compare.jsondiff import MAX_DEPTH, Difference, diff
from shadowdiff.jsonpath import Rules, any_index, format_path

PROPERTY = settings(
    max_examples=300,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
KIND_CLASS = {"changed": "changed", "type": "changed", "added": "added", "removed": "removed"}
DEEPDIFF_CLASS = {
    "values_changed": "changed",
    "type_changes": "changed",
    "dictionary_item_added": "added",
    "iterable_item_added": "added",
    "dictionary_item_removed": "removed",
    "iterable_item_removed": "removed",
}


# ---------------------------------------------------------------------------- helpers


def deepdiff_reports(a: Any, b: Any) -> set[tuple[str, str]]:
    """(path in our syntax, report type) for everything DeepDiff reports, per key: its default
    threshold_to_diff_deeper=0.33 would report dicts sharing few keys as one values_changed."""
    tree = DeepDiff(a, b, view="tree", threshold_to_diff_deeper=0)
    return {
        (format_path(level.path(output_format="list")), report)
        for report in tree
        for level in tree[report]
    }


def deepdiff_classes(a: Any, b: Any) -> set[tuple[str, str]]:
    """DeepDiff's reports as (path, added | removed | changed).

    DeepDiff turns a removal and an addition at the same index into values_changed, also when
    the two values are equal ("1 changed to 1"); we keep those as a removal and an addition.
    """
    tree = DeepDiff(a, b, view="tree", threshold_to_diff_deeper=0)
    out = set()
    for report in tree:
        assert report in DEEPDIFF_CLASS, report
        for level in tree[report]:
            path = format_path(level.path(output_format="list"))
            if report == "values_changed" and diff(level.t1, level.t2) == []:
                out |= {(path, "added"), (path, "removed")}
            else:
                out.add((path, DEEPDIFF_CLASS[report]))
    return out


def under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith((prefix + ".", prefix + "["))


PATH_PART = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\['((?:[^'\\]|\\.)*)'\]|\[(\d+)\]")


def parts(path: str) -> list[str | int]:
    """Our path syntax back to keys and indexes (what a reader of the report would do)."""
    assert path.startswith("$")
    out: list[str | int] = []
    pos = 1
    while pos < len(path):
        m = PATH_PART.match(path, pos)
        assert m is not None, path
        if m[3] is not None:
            out.append(int(m[3]))
        else:
            out.append(m[1] if m[1] is not None else re.sub(r"\\(.)", r"\1", m[2]))
        pos = m.end()
    return out


def nested(depth: int, leaf: Any) -> Any:
    """A document `depth` levels deep, alternating dicts and lists, built without recursion."""
    doc = leaf
    for level in range(depth):
        doc = {"a": doc} if level % 2 else [doc]
    return doc


def summary(found: list[Difference]) -> list[tuple[str, str, str | None]]:
    return [(d.path, d.kind, d.rule) for d in found]


# ---------------------------------------------------------------------------- generators

scalars = st.one_of(
    st.integers(-3, 3),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer()),
    st.text(alphabet="ab", max_size=2),
    st.text(max_size=6),
)
keys = st.one_of(st.sampled_from(["id", "a", "b", "odd key", "it's", ""]), st.text(max_size=4))
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=25,
)


def locations(doc: Any) -> list[tuple[list[Any], Any]]:
    out, todo = [], [([], doc)]
    while todo:
        path, node = todo.pop()
        out.append((path, node))
        if isinstance(node, dict):
            todo += [([*path, k], v) for k, v in node.items()]
        elif isinstance(node, list):
            todo += [([*path, i], v) for i, v in enumerate(node)]
    return out


def replaced(doc: Any, path: list[Any], value: Any) -> Any:
    if not path:
        return value
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    return doc


def retyped(node: Any) -> Any:
    if isinstance(node, dict):
        return list(node.values())
    if isinstance(node, list):
        return {str(i): v for i, v in enumerate(node)}
    if isinstance(node, str):
        return len(node)
    return str(node)


def edit(data: st.DataObject, doc: Any, shuffle: bool = False) -> Any:
    """One random edit of a copy of `doc`: leaf, key, type or list element."""
    doc = copy.deepcopy(doc)
    path, node = data.draw(st.sampled_from(locations(doc)))
    ops = ["leaf", "retype"]
    if isinstance(node, dict):
        ops += ["add_key"] + (["remove_key"] if node else [])
    if isinstance(node, list):
        ops += ["append", "insert"] + (["remove_item"] if node else [])
        ops += ["swap"] * (len(node) > 1) + ["shuffle"] * (shuffle and len(node) > 1)
    op = data.draw(st.sampled_from(ops))
    if op == "leaf":
        return replaced(doc, path, data.draw(scalars))
    if op == "retype":
        return replaced(doc, path, retyped(node))
    if op == "add_key":
        node[data.draw(keys)] = data.draw(documents)
    elif op == "remove_key":
        del node[data.draw(st.sampled_from(sorted(node)))]
    elif op == "append":
        node.append(data.draw(documents))
    elif op == "insert":
        node.insert(data.draw(st.integers(0, len(node))), data.draw(documents))
    elif op == "remove_item":
        del node[data.draw(st.integers(0, len(node) - 1))]
    elif op == "swap":
        i, j = data.draw(st.lists(st.integers(0, len(node) - 1), min_size=2, max_size=2))
        node[i], node[j] = node[j], node[i]
    else:
        node[:] = data.draw(st.permutations(node))
    return doc


def edited(data: st.DataObject, doc: Any, shuffle: bool = False) -> Any:
    for _ in range(data.draw(st.integers(1, 3))):
        doc = edit(data, doc, shuffle)
    return doc


# ---------------------------------------------------------------------------- equivalence


def assert_as_deepdiff(a: Any, b: Any) -> None:
    """Our real differences are DeepDiff's, path for path and added/removed/changed alike.

    A permutation is one "ordering" here and per-index changes in DeepDiff; for those lists we
    check instead that DeepDiff reports something inside and that it calls them equal when
    ignoring order. "type" and "changed" count as one class: DeepDiff turns a removal and an
    addition at one index into values_changed even when the two types differ.
    """
    found = diff(a, b)
    assert all(d.rule is None for d in found)
    for d in found:
        assert (d.kind == "type") == (type(d.left) is not type(d.right)) or d.kind in (
            "added",
            "removed",
            "ordering",
        )
    orderings = [d for d in found if d.kind == "ordering"]
    ours = {(d.path, KIND_CLASS[d.kind]) for d in found if d.kind != "ordering"}
    theirs = deepdiff_classes(a, b)
    outside = {(p, c) for p, c in theirs if not any(under(p, o.path) for o in orderings)}
    assert ours == outside
    for o in orderings:
        assert any(under(path, o.path) for path, _ in theirs)
        assert not DeepDiff(o.left, o.right, ignore_order=True, report_repetition=True)


@PROPERTY
@given(data=st.data())
def test_edits_are_reported_where_deepdiff_reports_them(data: st.DataObject) -> None:
    a = data.draw(documents)
    assert_as_deepdiff(a, edited(data, a))


@settings(PROPERTY, max_examples=150)
@given(a=documents, b=documents)
def test_unrelated_documents_are_reported_as_deepdiff_does(a: Any, b: Any) -> None:
    assert_as_deepdiff(a, b)


list_items = st.one_of(
    st.integers(-2, 2),
    st.sampled_from(["a", "b", 0.5]),
    st.dictionaries(st.sampled_from("xy"), st.integers(0, 1), max_size=2),
)


@PROPERTY
@given(a=st.lists(list_items, max_size=8), b=st.lists(list_items, max_size=8))
def test_short_lists_align_as_deepdiff(a: list[Any], b: list[Any]) -> None:
    """Few distinct values, many repeats: where difflib's alignment and DeepDiff's choice
    between it and pairing by position are easiest to get wrong."""
    assert_as_deepdiff({"l": a}, {"l": b})
    assert_as_deepdiff([a], [b])


@settings(PROPERTY, max_examples=200)
@given(data=st.data())
def test_unordered_all_agrees_with_deepdiff_ignore_order(data: st.DataObject) -> None:
    """Equal exactly when DeepDiff(ignore_order=True, report_repetition=True) says so, and
    divergent under the same lists. Below the first list index paths may differ: DeepDiff
    pairs leftover items by similarity, we only when unambiguous."""
    a = data.draw(documents)
    b = edited(data, a, shuffle=True)

    def outer(path_parts: list[Any]) -> str:
        ints = [i for i, p in enumerate(path_parts) if type(p) is int]
        return format_path(path_parts[: ints[0]] if ints else path_parts)

    ours = {outer(parts(d.path)) for d in diff(a, b, Rules(unordered_all=True))}
    tree = DeepDiff(
        a, b, ignore_order=True, report_repetition=True, threshold_to_diff_deeper=0, view="tree"
    )
    theirs = {outer(level.path(output_format="list")) for r in tree for level in tree[r]}
    assert ours == theirs


@PROPERTY
@given(doc=documents)
def test_a_document_equals_its_copy(doc: Any) -> None:
    assert diff(doc, copy.deepcopy(doc)) == []
    assert diff(doc, copy.deepcopy(doc), Rules(unordered_all=True)) == []


@settings(PROPERTY, max_examples=100)
@given(data=st.data())
def test_reported_paths_work_as_ignore_patterns(data: st.DataObject) -> None:
    a = data.draw(documents)
    b = edited(data, a)
    found = diff(a, b)
    ignored = diff(a, b, Rules(ignore=tuple(d.path for d in found)))
    assert [(d.path, d.kind) for d in ignored] == [(d.path, d.kind) for d in found]
    assert all(d.rule == "ignore" for d in ignored)


def test_ignoring_positions_infers_no_reordering_across_them() -> None:
    """Hypothesis found it: ignoring `$[1].id` let item 1 pair with itself modulo the rule,
    which made the rest a permutation: an "ordering" at `$` that the reported paths did not
    silence. A rule that names a position says positions matter."""
    a, b = [[], {"id": 0}, 0], [0, {"id": 1}, []]
    found = diff(a, b)
    assert [(d.path, d.kind) for d in found] == [
        ("$[0]", "type"),
        ("$[1].id", "changed"),
        ("$[2]", "type"),
    ]
    ignored = diff(a, b, Rules(ignore=tuple(d.path for d in found)))
    assert [(d.path, d.kind, d.rule) for d in ignored] == [
        (d.path, d.kind, "ignore") for d in found
    ]
    # a rule for every position still lets reordered items pair up modulo it
    rows = [{"id": 1, "ts": 1}, {"id": 2, "ts": 2}, {"id": 3, "ts": 3}]
    moved = [{"id": 2, "ts": 9}, {"id": 1, "ts": 8}, {"id": 3, "ts": 7}]
    kinds = [(d.path, d.kind) for d in diff(rows, moved, Rules(ignore=("$[*].ts",)))]
    assert kinds == [
        ("$", "ordering"),
        ("$[0].ts", "changed"),
        ("$[1].ts", "changed"),
        ("$[2].ts", "changed"),
    ]


# ---------------------------------------------------------------------------- kinds and paths


def test_equal_documents_give_nothing() -> None:
    doc = {"users": [{"id": 1, "tags": ["a"], "score": 1.5, "ok": True, "x": None}]}
    assert diff(doc, copy.deepcopy(doc)) == []
    assert diff(doc, doc) == []


def test_each_kind() -> None:
    a = {"name": "a", "gone": 1, "n": 1, "ids": [1, 2, 3], "obj": {"x": [1]}}
    b = {"name": "b", "new": 2, "n": "1", "ids": [3, 2, 1], "obj": {"x": {"0": 1}}}
    assert diff(a, b) == [
        Difference("$.gone", "removed", 1, None),
        Difference("$.ids", "ordering", [1, 2, 3], [3, 2, 1]),
        Difference("$.n", "type", 1, "1"),
        Difference("$.name", "changed", "a", "b"),
        Difference("$.new", "added", None, 2),
        Difference("$.obj.x", "type", [1], {"0": 1}),
    ]


def test_values_are_reported_as_given() -> None:
    a, b = {"x": {"deep": [1]}}, {"x": [1]}
    (found,) = diff(a, b)
    assert found.left is a["x"] and found.right is b["x"]


def test_odd_keys_are_quoted() -> None:
    keys = ["odd key", "it's", "back\\slash", "", "0", "ключ", "a.b", "x[1]", "*", "é"]
    a = {k: 1 for k in keys}
    b = {k: 2 for k in keys}
    paths = [d.path for d in diff(a, b)]
    assert set(paths) == {
        "$['odd key']",
        "$['it\\'s']",
        "$['back\\\\slash']",
        "$['']",
        "$['0']",
        "$['ключ']",
        "$['a.b']",
        "$['x[1]']",
        "$['*']",
        "$['é']",
    }
    assert [parts(p)[0] for p in paths] == sorted(keys)


def test_paths_are_sorted_with_numeric_indexes() -> None:
    a = {"items": [{"p": i} for i in range(12)], "a": 0}
    b = {"items": [{"p": -i if i in (2, 10) else i} for i in range(12)], "a": 1}
    assert [d.path for d in diff(a, b)] == ["$.a", "$.items[2].p", "$.items[10].p"]


def test_root_differences() -> None:
    assert diff(1, 2) == [Difference("$", "changed", 1, 2)]
    assert diff({}, []) == [Difference("$", "type", {}, [])]
    assert diff("x", None) == [Difference("$", "type", "x", None)]


def test_empty_containers() -> None:
    assert diff([], [1]) == [Difference("$[0]", "added", None, 1)]
    assert diff({"a": 1}, {}) == [Difference("$.a", "removed", 1, None)]
    assert diff({}, {"a": {}}) == [Difference("$.a", "added", None, {})]
    assert diff([[]], [{}]) == [Difference("$[0]", "type", [], {})]
    assert diff({"a": []}, {"a": []}) == []


def test_int_float_and_bool_are_types_as_in_deepdiff() -> None:
    """DeepDiff's default reports 1 vs 1.0 as type_changes (ignore_numeric_type_changes is
    off), and bool vs int too; we match it."""
    for left, right in [(1, 1.0), (True, 1), (False, 0), (0, 0.0), (1.5, "1.5")]:
        a, b = {"x": left}, {"x": right}
        assert summary(diff(a, b)) == [("$.x", "type", None)]
        assert deepdiff_reports(a, b) == {("$.x", "type_changes")}


def test_int_float_in_scalar_lists_stay_types() -> None:
    """DeepDiff misses these (difflib aligns with ==, which says 1 == 1.0 == True)."""
    assert summary(diff([1, 2], [1.0, 2])) == [("$[0]", "type", None)]
    assert summary(diff({"l": [True]}, {"l": [1]})) == [("$.l[0]", "type", None)]
    assert summary(diff([1, 1.0], [1.0, 1])) == [("$", "ordering", None)]


def test_negative_zero_equals_zero() -> None:
    assert diff({"x": [-0.0, {"y": 0.0}]}, {"x": [0.0, {"y": -0.0}]}) == []


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([1, 2, 3], [1, 3]),
        ([1, 2, 3], [2, 3, 4]),
        ([1, 2, 3], [1, 2, 3, 4, 5]),
        (["a", "b", "c", "d"], ["x", "b", "c", "y", "z"]),
        ([0, 1, 2, 9, 8], [0, 5, 1, 2, 7, 6, 4]),
        ([{"a": 1}, {"a": 2}, {"a": 3}], [{"a": 1}, {"a": 3}]),
        ([{"a": 1}, 2], [{"a": 2}, 2, 3]),
        ([[1, 2], [3]], [[1], [3, 4], [5]]),
        (["a", 1, 0.5, 1], [0, 1, "a", 0.5, 1]),
    ],
)
def test_lists_of_unequal_length_as_deepdiff(a: list[Any], b: list[Any]) -> None:
    assert_as_deepdiff(a, b)


def test_list_alignment_examples() -> None:
    assert summary(diff([1, 2, 3], [1, 3])) == [("$[1]", "removed", None)]
    assert summary(diff([1, 2, 3], [2, 3, 4])) == [
        ("$[0]", "removed", None),
        ("$[2]", "added", None),
    ]
    # difflib inserts b[0:2] and deletes a[1]: DeepDiff says "$[1]: 1 changed to 1"
    assert summary(diff(["a", 1, 0.5, 1], [0, 1, "a", 0.5, 1])) == [
        ("$[0]", "added", None),
        ("$[1]", "added", None),
        ("$[1]", "removed", None),
    ]
    assert summary(diff([{"a": 1}, {"a": 2}], [{"a": 2}])) == [
        ("$[0].a", "changed", None),
        ("$[1]", "removed", None),
    ]


def test_ordering_is_one_difference() -> None:
    a = {"orders": [{"id": i, "items": [i, i + 1]} for i in range(5)]}
    b = {"orders": list(reversed(a["orders"]))}
    assert summary(diff(a, b)) == [("$.orders", "ordering", None)]
    assert diff(a, b, Rules(unordered=("$.orders",))) == []
    assert diff(a, b, Rules(unordered_all=True)) == []
    assert summary(diff(a, b, Rules(ignore=("$.orders",)))) == [("$.orders", "ordering", "ignore")]


def test_reordered_and_changed_is_not_an_ordering() -> None:
    found = diff({"l": [1, 2, 3]}, {"l": [3, 2, 4]})
    assert all(d.kind != "ordering" for d in found)
    assert_as_deepdiff({"l": [1, 2, 3]}, {"l": [3, 2, 4]})


# ---------------------------------------------------------------------------- rules


def test_tolerance_absolute_and_relative() -> None:
    rules = Rules(tolerance=(("$.price", 0.01, 0.0), ("$..latency", 0.0, 0.1)))
    a = {"price": 10.0, "stats": {"latency": 100, "other": 1.0}}
    within = {"price": 10.005, "stats": {"latency": 109, "other": 1.0}}
    beyond = {"price": 10.02, "stats": {"latency": 120, "other": 1.5}}
    assert summary(diff(a, within, rules)) == [
        ("$.price", "changed", "tolerance"),
        ("$.stats.latency", "changed", "tolerance"),
    ]
    assert summary(diff(a, beyond, rules)) == [
        ("$.price", "changed", None),
        ("$.stats.latency", "changed", None),
        ("$.stats.other", "changed", None),
    ]


def test_tolerance_is_for_numbers_only() -> None:
    rules = Rules(tolerance=(("$.*", 1.0, 1.0),))
    assert summary(diff({"x": True, "y": "1"}, {"x": False, "y": "2"}, rules)) == [
        ("$.x", "changed", None),
        ("$.y", "changed", None),
    ]
    assert summary(diff({"x": 1}, {"x": 1.0}, rules)) == [("$.x", "type", "tolerance")]
    assert summary(diff({"x": 1}, {"x": True}, rules)) == [("$.x", "type", None)]


def test_tolerance_applies_at_the_pattern_only() -> None:
    rules = Rules(tolerance=(("$.m", 5.0, 0.0), ("$.l[*]", 5.0, 0.0)))
    a, b = {"m": {"x": 1}, "l": [1, 2]}, {"m": {"x": 2}, "l": [2, 3]}
    assert summary(diff(a, b, rules)) == [
        ("$.l[0]", "changed", "tolerance"),
        ("$.l[1]", "changed", "tolerance"),
        ("$.m.x", "changed", None),
    ]


def test_unordered_per_path() -> None:
    a = {"tags": ["a", "b", "c"], "ids": [1, 2, 3]}
    b = {"tags": ["c", "a", "b"], "ids": [3, 2, 1]}
    assert summary(diff(a, b, Rules(unordered=("$.tags",)))) == [("$.ids", "ordering", None)]


def test_unordered_is_a_multiset() -> None:
    rules = Rules(unordered_all=True)
    assert summary(diff([1, 1, 2], [1, 2, 2], rules)) == [("$[1]", "changed", None)]
    assert summary(diff([1, 1, 2], [2, 1], rules)) == [("$[0]", "removed", None)]
    assert summary(diff(["a", "b"], ["b", "c", "a", "d"], rules)) == [
        ("$[1]", "added", None),
        ("$[3]", "added", None),
    ]


def test_unordered_single_leftover_is_compared_inside() -> None:
    a = [{"id": 1, "v": 1}, {"id": 2, "v": 2}, {"id": 3, "v": 3}]
    b = [{"id": 2, "v": 2}, {"id": 3, "v": 3}, {"id": 1, "v": 9}]
    assert summary(diff(a, b, Rules(unordered=("$",)))) == [("$[0].v", "changed", None)]


def test_unordered_nested_lists_and_ignored_keys_count_when_matching() -> None:
    rules = Rules(unordered_all=True)
    assert diff([[1, 2], [3, 4]], [[4, 3], [2, 1]], rules) == []
    spans_a = {"spans": [{"n": "a", "trace_id": 1}, {"n": "b", "trace_id": 2}]}
    spans_b = {"spans": [{"n": "b", "trace_id": 3}, {"n": "a", "trace_id": 4}]}
    rules = Rules(unordered=("$.spans",), ignore=("$..trace_id",))
    assert summary(diff(spans_a, spans_b, rules)) == [
        ("$.spans[0].trace_id", "changed", "ignore"),
        ("$.spans[1].trace_id", "changed", "ignore"),
    ]
    rules = Rules(ignore=("$..trace_id",))
    assert summary(diff(spans_a, spans_b, rules)) == [
        ("$.spans", "ordering", None),
        ("$.spans[0].trace_id", "changed", "ignore"),
        ("$.spans[1].trace_id", "changed", "ignore"),
    ]


# ---------------------------------------------------------------------------- hostile inputs


def test_ten_thousand_levels() -> None:
    start = time.perf_counter()
    assert diff(nested(10_000, 1), nested(10_000, 1)) == []
    (found,) = diff(nested(10_000, 1), nested(10_000, 2))
    assert found.kind == "changed" and found.rule is None
    assert len(parts(found.path)) == MAX_DEPTH
    assert diff(nested(10_000, 1), nested(10_000, 1), Rules(unordered_all=True)) == []
    (typed,) = diff(nested(10_000, 1), nested(9_999, 1))
    assert typed.path == "$" and typed.kind == "type"
    assert time.perf_counter() - start < 5


def test_deep_items_in_unordered_lists() -> None:
    a = [nested(1_000, 1), nested(1_000, 2)]
    b = [nested(1_000, 2), nested(1_000, 1)]
    assert diff(a, b, Rules(unordered_all=True)) == []
    assert summary(diff(a, b)) == [("$", "ordering", None)]


def test_huge_numbers() -> None:
    big = int("1" + "0" * 400)
    huger = 10**5000
    assert diff({"n": big, "m": huger}, {"n": int("1" + "0" * 400), "m": 10**5000}) == []
    assert summary(diff({"n": big}, {"n": big + 1})) == [("$.n", "changed", None)]
    assert summary(diff({"n": big}, {"n": 1.5})) == [("$.n", "type", None)]
    rules = Rules(tolerance=(("$.n", 1.0, 0.0),))
    assert summary(diff({"n": big}, {"n": big + 1}, rules)) == [("$.n", "changed", "tolerance")]
    rules = Rules(tolerance=(("$.n", 0.0, 1e-9),))
    assert summary(diff({"n": huger}, {"n": huger + 10**4000}, rules)) == [
        ("$.n", "changed", "tolerance")
    ]
    assert summary(diff({"n": huger}, {"n": 1e308}, rules)) == [("$.n", "type", None)]
    assert diff([[big], [1]], [[1], [big]], Rules(unordered_all=True)) == []
    assert summary(diff([[big], [1]], [[1], [big]])) == [("$", "ordering", None)]


def test_strange_unicode() -> None:
    strings = ["\x00", "\ud800", "e\u0301", "\u202eabc", "😀", "\ufeff", "a\nb", "\U0010ffff"]
    a = {"s": strings, "objs": [{"v": s} for s in strings]}
    assert diff(a, copy.deepcopy(a)) == []
    b = copy.deepcopy(a)
    b["s"][1] = "\udfff"
    b["objs"].reverse()
    assert summary(diff(a, b)) == [("$.objs", "ordering", None), ("$.s[1]", "changed", None)]
    assert summary(diff(a, b, Rules(unordered_all=True))) == [("$.s[1]", "changed", None)]
    keyed = {s: 1 for s in strings}
    assert len(diff(keyed, {s: 2 for s in strings})) == len(strings)


def test_nan_is_never_equal_and_never_raises() -> None:
    nan = float("nan")
    assert summary(diff({"x": nan}, {"x": float("nan")})) == [("$.x", "changed", None)]
    assert diff({"x": nan}, {"x": nan}) == []


def test_long_lists_stay_fast() -> None:
    rng = random.Random(7)
    cases = [
        (list(range(5_000)), [*range(2_500), -1, *range(2_500, 5_000)]),
        ([rng.randint(0, 3) for _ in range(3_000)], [rng.randint(0, 3) for _ in range(3_000)]),
        (list(range(3_000)), [*reversed(range(1, 3_000)), -1]),
        ([{"i": i} for i in range(3_000)], [{"i": i} for i in reversed(range(3_000))]),
    ]
    start = time.perf_counter()
    inserted = diff(*cases[0])
    assert summary(inserted) == [("$[2500]", "added", None)]
    for a, b in cases[1:]:
        assert diff(a, b)
        diff(a, b, Rules(unordered_all=True))
    assert time.perf_counter() - start < 5


class Awkward:
    """Not JSON: equality and repr raise."""

    def __eq__(self, other: object) -> bool:
        raise ValueError("no equality")

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_non_json_input_neither_raises_nor_hangs() -> None:
    loop_a: list[Any] = [1]
    loop_a.append(loop_a)
    loop_b: list[Any] = [1]
    loop_b.append(loop_b)
    loop_c: list[Any] = [2]
    loop_c.append(loop_c)
    cases: list[tuple[Any, Any]] = [
        (loop_a, loop_b),
        (loop_a, loop_c),
        ([loop_a, loop_c], [loop_c, loop_a]),
        ({"x": Awkward()}, {"x": Awkward()}),
        ([[Awkward()], [1]], [[1], [Awkward()]]),
        ({1: "a", (1, 2): 1}, {1: "b", (1, 2): 1}),
        ({1, 2}, {2, 3}),
        ((1, 2), (1, 3)),
        ([b"x"], [b"y"]),
        ([float("nan")], [None]),
    ]
    start = time.perf_counter()
    for a, b in cases:
        for rules in [Rules(), Rules(unordered_all=True), Rules(tolerance=(("$..*", 1, 1),))]:
            assert isinstance(diff(a, b, rules), list)
    assert diff(loop_a, loop_b) == []
    assert summary(diff({"x": Awkward()}, {"x": Awkward()})) == [("$.x", "changed", None)]
    assert time.perf_counter() - start < 5


path_parts = st.lists(st.one_of(st.integers(0, 10**6), keys, st.text(alphabet="[]'\\0.*")))


@PROPERTY
@given(parts=path_parts, other=st.integers(0, 10**6))
def test_any_index_names_every_item_alike_and_keys_as_they_are(parts: list[Any], other: int):
    """A list's items share one path (`[*]`) whatever their index; keys, even ones that read
    like indexes (`$['[1]']`), are never changed."""
    moved = [other if type(p) is int else p for p in parts]
    assert any_index(format_path(parts)) == any_index(format_path(moved))
    keys_only = [p for p in parts if type(p) is str]
    assert any_index(format_path(keys_only)) == format_path(keys_only)
    assert any_index(format_path([*keys_only, 3, "a"])) == format_path(keys_only) + "[*].a"
