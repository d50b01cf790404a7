"""JSON path patterns: parsing and validation, what `$..`, `*`, `[*]` and quoted keys match
(seen through the diff that uses them), and the paths `format_path` writes, `covered` reads
back and `mask` replaces."""

from __future__ import annotations

import pytest

from shadowdiff.compare.jsondiff import Difference, diff
from shadowdiff.jsonpath import Rules, covered, format_path, mask


def summary(found: list[Difference]) -> list[tuple[str, str, str | None]]:
    return [(d.path, d.kind, d.rule) for d in found]


def test_ignore_recursive_descent_and_wildcards() -> None:
    a = {
        "trace_id": "t1",
        "items": [{"id": 1, "price": 5, "meta": {"trace_id": "x"}}, {"id": 2, "price": 6}],
        "deep": [[{"trace_id": 1}]],
    }
    b = {
        "trace_id": "t2",
        "items": [{"id": 10, "price": 5, "meta": {"trace_id": "y"}}, {"id": 20, "price": 7}],
        "deep": [[{}]],
    }
    rules = Rules(ignore=("$..trace_id", "$.items[*].id"))
    assert summary(diff(a, b, rules)) == [
        ("$.deep[0][0].trace_id", "removed", "ignore"),
        ("$.items[0].id", "changed", "ignore"),
        ("$.items[0].meta.trace_id", "changed", "ignore"),
        ("$.items[1].id", "changed", "ignore"),
        ("$.items[1].price", "changed", None),
        ("$.trace_id", "changed", "ignore"),
    ]


def test_ignore_covers_the_subtree_and_any_key() -> None:
    a = {"meta": {"at": 1, "by": {"host": "a"}}, "x": {"k1": 1, "k2": [1]}}
    b = {"meta": {"at": 2, "by": {"host": "b"}, "new": 1}, "x": {"k1": 2, "k2": [2]}}
    rules = Rules(ignore=("$.meta", "$.x.*"))
    assert summary(diff(a, b, rules)) == [
        ("$.meta.at", "changed", "ignore"),
        ("$.meta.by.host", "changed", "ignore"),
        ("$.meta.new", "added", "ignore"),
        ("$.x.k1", "changed", "ignore"),
        ("$.x.k2[0]", "changed", "ignore"),
    ]


def test_quoted_and_indexed_patterns() -> None:
    a = {"odd key": [1, 2, 3], "it's": 1}
    b = {"odd key": [1, 9, 9], "it's": 2}
    rules = Rules(ignore=("$['odd key'][1]", '$["it\'s"]'))
    assert summary(diff(a, b, rules)) == [
        ("$['it\\'s']", "changed", "ignore"),
        ("$['odd key'][1]", "changed", "ignore"),
        ("$['odd key'][2]", "changed", None),
    ]


def test_rules_are_validated_and_normalised() -> None:
    for bad in ["items", "$.", "$..", "$.a[", "$[x]", "$.[0]", "$a", "$[-1]", "$...a"]:
        with pytest.raises(ValueError):
            Rules(ignore=(bad,))
    with pytest.raises(ValueError):
        Rules(tolerance=(("$.x", -1.0, 0.0),))
    with pytest.raises(ValueError):
        Rules(tolerance=(("$.x", 0.0, float("nan")),))
    rules = Rules(ignore=["$.a"], tolerance=[["$.b", 1, 0]], unordered=["$.c"])  # type: ignore[arg-type]
    assert rules == Rules(ignore=("$.a",), tolerance=(("$.b", 1.0, 0.0),), unordered=("$.c",))
    assert hash(rules) == hash(
        Rules(ignore=("$.a",), tolerance=(("$.b", 1, 0),), unordered=("$.c",))
    )


def test_formatted_paths_are_read_back_as_patterns() -> None:
    for key in ["plain", "odd key", "it's", "back\\slash", "", "0", "ключ", "a.b", "*", "x[1]"]:
        path = format_path(["items", 3, key])
        assert covered(path, (path,))
        assert covered(path + "[0]", (path,))  # under it
        assert not covered(format_path(["items", 4, key]), (path,))
    assert format_path([]) == "$"
    assert format_path(["a", 0, "b c"]) == "$.a[0]['b c']"


def test_covered_reads_reported_paths_only() -> None:
    assert covered("$.user.token", ("$..token",))
    assert covered("$.users[2].token", ("$.users[*].*",))
    assert not covered("$.user", ("$.user.token",))
    assert not covered("$..token", ("$..token",))  # a pattern, not a reported path
    assert not covered("user.token", ("$..token",))
    assert not covered("$.user.token", ())


def test_mask_copies_only_the_changed_branches() -> None:
    doc = {"user": {"password": "p", "name": "a"}, "other": {"x": [1]}, "list": [{"token": 1}, 2]}
    masked, hit = mask(doc, ("$..password", "$.list[*].token"), "***")
    assert hit
    assert masked == {
        "user": {"password": "***", "name": "a"},
        "other": {"x": [1]},
        "list": [{"token": "***"}, 2],
    }
    assert masked["other"] is doc["other"] and doc["user"]["password"] == "p"
    unchanged, hit = mask(doc, ("$..secret",), "***")
    assert unchanged is doc and not hit
