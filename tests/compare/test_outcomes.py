"""Comparing outcomes: statuses, errors, headers, every body kind, rules, and hostile input."""

from __future__ import annotations

import gzip
import os
import random

import orjson
import pytest

from shadowdiff.compare.outcomes import MAX_DIVERGENCES, MORE, Comparer
from shadowdiff.config import Compare
from shadowdiff.model import DIVERGENT, IGNORED, MATCHED, Divergence, Outcome, result_of

JSON = [(b"Content-Type", b"application/json")]


def ok(body: bytes = b"", headers=None, status: int = 200) -> Outcome:
    return Outcome(status, list(headers if headers is not None else JSON), body, 0.01)


def js(value) -> bytes:
    return orjson.dumps(value)


def compare(a: Outcome, b: Outcome, route: str = "GET /x", **cfg):
    return Comparer(Compare(**cfg)).compare(a, b, route)


def paths(divergences) -> list[tuple[str, str, str | None]]:
    return [(d.path, d.kind, d.rule) for d in divergences]


def test_identical_is_matched():
    assert compare(ok(js({"a": 1})), ok(js({"a": 1}))) == []
    assert result_of([]) == MATCHED


def test_status_transition():
    [d] = compare(ok(status=200), ok(status=500))
    assert (d.path, d.kind, d.left, d.right) == ("status", "changed", "200", "500")


@pytest.mark.parametrize(
    "primary, shadow, expected",
    [
        (
            Outcome(200, JSON, b"{}"),
            Outcome(error="timeout"),
            [("outcome", "shadow_error:timeout", None)],
        ),
        (
            Outcome(error="connect"),
            Outcome(200, JSON, b"{}"),
            [("outcome", "primary_error:connect", None)],
        ),
        (Outcome(error="timeout"), Outcome(error="timeout"), []),
        (
            Outcome(error="timeout"),
            Outcome(error="reset"),
            [("outcome", "shadow_error:reset", None)],
        ),
    ],
)
def test_errors_are_outcomes(primary, shadow, expected):
    assert paths(compare(primary, shadow)) == expected


def test_headers_by_name_case_insensitive_values_as_sets():
    a = ok(b"", [(b"X-A", b"1"), (b"Vary", b"a"), (b"Vary", b"b"), (b"Date", b"Mon")])
    b = ok(b"", [(b"x-a", b"1"), (b"vary", b"b"), (b"vary", b"a"), (b"date", b"Tue")])
    assert compare(a, b) == []
    c = ok(b"", [(b"X-A", b"2"), (b"X-New", b"1")])
    assert paths(compare(a, c)) == [
        ("header:vary", "removed", None),
        ("header:x-a", "changed", None),
        ("header:x-new", "added", None),
    ]


def test_default_ignored_headers_and_cookie_names():
    a = ok(
        b"",
        [
            (b"Server", b"a"),
            (b"X-Request-Id", b"1"),
            (b"ETag", b"x"),
            (b"Set-Cookie", b"sid=1; Path=/"),
        ],
    )
    b = ok(
        b"",
        [
            (b"Server", b"b"),
            (b"X-Request-Id", b"2"),
            (b"ETag", b"y"),
            (b"Set-Cookie", b"sid=2; Path=/"),
        ],
    )
    assert compare(a, b) == []
    c = ok(b"", [(b"Set-Cookie", b"other=1")])
    assert paths(compare(a, c)) == [("header:set-cookie", "changed", None)]


def test_ignored_headers_override_and_extend():
    a, b = (
        ok(b"", [(b"Date", b"1"), (b"X-Build", b"1")]),
        ok(b"", [(b"Date", b"2"), (b"X-Build", b"2")]),
    )
    assert paths(compare(a, b, ignored_headers=[], ignore=["header:X-Build"])) == [
        ("header:date", "changed", None),
        ("header:x-build", "changed", "ignore"),
    ]
    assert result_of(compare(a, b, ignore=["header:x-build"])) == IGNORED


def test_json_paths_and_kinds():
    a = js({"items": [{"price": 1}, {"price": 2}], "name": "x", "n": 1})
    b = js({"items": [{"price": 1}, {"price": 3}], "full_name": "x", "n": "1"})
    assert paths(compare(ok(a), ok(b))) == [
        ("body:$.full_name", "added", None),
        ("body:$.items[1].price", "changed", None),
        ("body:$.n", "type", None),
        ("body:$.name", "removed", None),
    ]


def test_json_served_as_text_is_still_structural():
    text = [(b"Content-Type", b"text/plain")]
    assert paths(compare(ok(js({"a": 1}), text), ok(js({"a": 2}), text))) == [
        ("body:$.a", "changed", None)
    ]


def test_gzip_vs_identity_same_json():
    doc = js({"a": list(range(50))})
    gz = ok(gzip.compress(doc), [*JSON, (b"Content-Encoding", b"gzip")])
    assert compare(ok(doc), gz) == []


def test_reordered_array_is_ordering_unless_unordered():
    a, b = ok(js({"tags": ["a", "b", "c"]})), ok(js({"tags": ["c", "a", "b"]}))
    assert paths(compare(a, b)) == [("body:$.tags", "ordering", None)]
    assert compare(a, b, unordered=["body:$.tags"]) == []
    assert compare(a, b, unordered_all=True) == []


def test_float_tolerance():
    a, b = ok(js({"price": 10.0})), ok(js({"price": 10.004}))
    rules = {"tolerance": [{"path": "body:$.price", "absolute": 0.01}]}
    assert result_of(compare(a, b, **rules)) == IGNORED
    assert result_of(compare(a, ok(js({"price": 10.5})), **rules)) == DIVERGENT


def test_ignore_paths_and_per_route_rules():
    a = ok(js({"meta": {"generated_at": "1", "trace_id": "a"}, "deep": {"trace_id": "b"}}))
    b = ok(js({"meta": {"generated_at": "2", "trace_id": "c"}, "deep": {"trace_id": "d"}}))
    cfg = {"ignore": ["body:$.meta.generated_at", "body:$..trace_id"]}
    assert result_of(compare(a, b, **cfg)) == IGNORED
    per_route = {"routes": [{"route": "GET /x", **cfg}]}
    assert result_of(compare(a, b, **per_route)) == IGNORED
    assert result_of(compare(a, b, "GET /y", **per_route)) == DIVERGENT


def test_a_long_list_changed_everywhere_is_capped_with_one_more():
    """Audit finding 7: one changed value in each of 20,000 items is MAX_DIVERGENCES
    divergences and one `more` that says how many were left, not 20,000 stored rows."""
    n = 20_000
    found = compare(ok(js(list(range(n)))), ok(js([i + 1 for i in range(n)])))
    assert len(found) == MAX_DIVERGENCES + 1
    assert paths(found[:2]) == [("body:$[0]", "changed", None), ("body:$[1]", "changed", None)]
    left = n - MAX_DIVERGENCES
    assert found[-1] == Divergence(
        "body:…", MORE, f"{left} more divergences", f"{left} of them real", None
    )
    assert result_of(found) == DIVERGENT


def test_the_cap_keeps_real_divergences_first_and_the_exchange_result():
    """Neutralised differences beyond the cap stay neutralised (the exchange is `ignored`
    as before), and a real one among many neutralised ones is kept, not summarised."""
    items = [{"ts": i, "x": 0} for i in range(300)]
    moved = [{"ts": -1 - i, "x": 0} for i in range(300)]
    rules = {"ignore": ["body:$[*].ts"]}
    ignored = compare(ok(js(items)), ok(js(moved)), **rules)
    assert result_of(ignored) == IGNORED and len(ignored) == MAX_DIVERGENCES + 1
    assert paths(ignored[-1:]) == [("body:…", MORE, "ignore")]
    moved[250]["x"] = 1
    real = compare(ok(js(items)), ok(js(moved)), **rules)
    assert result_of(real) == DIVERGENT and ("body:$[250].x", "changed", None) in paths(real)
    assert (real[-1].left, real[-1].rule) == ("201 more divergences", "ignore")


def test_headers_beyond_the_cap_are_one_more():
    def headers(value: bytes) -> list[tuple[bytes, bytes]]:
        return JSON + [(f"x-h{i}".encode(), value) for i in range(MAX_DIVERGENCES + 50)]

    found = compare(ok(js(1), headers(b"a")), ok(js(1), headers(b"b")))
    assert len(found) == MAX_DIVERGENCES + 1
    assert paths(found[-1:]) == [("header:…", MORE, None)]
    assert found[-1].left == "50 more divergences"


def test_normalizer_for_values_known_to_vary():
    a = ok(js({"msg": "order 12 created at 2026-01-01T10:00:00Z"}))
    b = ok(js({"msg": "order 12 created at 2026-03-04T11:12:13Z"}))
    cfg = {"normalize": [{"pattern": r"\d{4}-\d\d-\d\dT[\d:]+Z", "replace": "<time>"}]}
    assert paths(compare(a, b, **cfg)) == [("body:$.msg", "changed", "normalize")]
    c = ok(js({"msg": "order 13 created at 2026-03-04T11:12:13Z"}))
    assert result_of(compare(a, c, **cfg)) == DIVERGENT


def test_timestamps_not_ignored_by_default():
    a, b = ok(js({"at": "2026-01-01T10:00:00Z"})), ok(js({"at": "2026-01-01T10:00:01Z"}))
    assert result_of(compare(a, b)) == DIVERGENT


def test_form_bodies_as_multisets():
    form = [(b"Content-Type", b"application/x-www-form-urlencoded")]
    a, b = ok(b"a=1&b=2&b=3", form), ok(b"b=3&a=1&b=2", form)
    assert compare(a, b) == []
    assert paths(compare(a, ok(b"a=1&b=2", form))) == [("body:$.b[1]", "removed", None)]


def test_markup_whitespace_and_text_lines():
    html = [(b"Content-Type", b"text/html")]
    assert compare(ok(b"<p>\n  hi  </p>", html), ok(b"<p> hi </p>", html)) == []
    [d] = compare(ok(b"<p>hi</p>", html), ok(b"<p>ho</p>", html))
    assert (d.path, d.kind) == ("body", "changed") and "-<p>hi</p>" in d.left
    text = [(b"Content-Type", b"text/plain")]
    [d] = compare(ok(b"a\nb\nc", text), ok(b"a\nB\nc", text))
    assert "-b" in d.left and "+B" in d.left


def test_binary_as_length_and_hash():
    png = [(b"Content-Type", b"image/png")]
    [d] = compare(ok(b"\x89PNG1", png), ok(b"\x89PNG22", png))
    assert d.kind == "changed" and d.left.startswith("5 bytes sha256:")


def test_json_type_but_not_json_and_empty_bodies():
    [d] = compare(ok(js({"a": 1})), ok(b"<html>oops</html>"))
    assert (d.path, d.kind) == ("body", "not_json")
    [d] = compare(ok(js({"a": 1})), ok(b""))
    assert (d.path, d.kind, d.right) == ("body", "removed", "empty")
    [d] = compare(ok(b""), ok(js({"a": 1})))
    assert (d.path, d.kind, d.left) == ("body", "added", "empty")


def test_invalid_utf8_reported_as_such():
    text = [(b"Content-Type", b"text/plain")]
    [d] = compare(ok(b"caf\xc3\xa9", text), ok(b"caf\xe9", text))
    assert d.kind == "invalid_utf8"


def test_undecodable_body_is_flagged():
    gz = [*JSON, (b"Content-Encoding", b"gzip")]
    found = compare(ok(js({"a": 1})), ok(b"\x1f\x8b broken", gz))
    assert ("body", "undecodable", None) in paths(found)


def test_a_decompression_bomb_is_a_too_large_divergence():
    gz = [*JSON, (b"Content-Encoding", b"gzip")]
    found = compare(ok(js({"a": 1})), ok(gzip.compress(b"\0" * (17 << 20), 1), gz))
    assert ("body", "too_large", None) in paths(found)


HOSTILE = [
    os.urandom(1000),
    gzip.compress(js({"a": list(range(1000))}))[:-30],
    b"[" * 10_000 + b"]" * 10_000,
    b'{"a": ' * 10_000 + b"1" + b"}" * 10_000,
    b'{"n": 1' + b"0" * 5000 + b"}",
    b'{"n": 1e999999}',
    b'{"a": "\xff\xfe"}',
    b"\x00" * 100,
    b'{"a": NaN}',
]


@pytest.mark.parametrize("index", range(len(HOSTILE)))
@pytest.mark.parametrize("encoding", [b"", b"gzip", b"br"])
def test_hostile_bodies_never_raise(index, encoding):
    headers = [*JSON, (b"Content-Encoding", encoding)] if encoding else JSON
    body = HOSTILE[index]
    for left, right in [(js({"a": 1}), body), (body, js({"a": 1})), (body, body + b" ")]:
        found = compare(ok(left, headers), ok(right, headers))
        assert isinstance(found, list)


def test_random_bytes_fuzz():
    rng = random.Random(5)
    kinds = [
        b"application/json",
        b"text/html",
        b"text/plain",
        b"application/x-www-form-urlencoded",
        b"",
    ]
    for _ in range(300):
        headers = [
            (b"Content-Type", rng.choice(kinds)),
            (b"Content-Encoding", rng.choice([b"", b"gzip", b"deflate", b"zstd"])),
        ]
        a = bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
        b = bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
        compare(ok(a, headers), ok(b, headers))
