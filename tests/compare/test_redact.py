"""Redaction: header values, JSON paths at any depth, divergence values; nothing else touched."""

from __future__ import annotations

import gzip

import orjson
import pytest

from shadowdiff.compare.redact import MASK, Redactor
from shadowdiff.config import Redact, load_config
from shadowdiff.errors import ConfigError
from shadowdiff.model import Divergence, Exchange, Outcome, RequestSnapshot

JSON = [(b"Content-Type", b"application/json")]


def test_headers_masked_case_insensitively():
    r = Redactor(Redact(headers=["Authorization", "x-api-key"]))
    assert r.headers([(b"authorization", b"Bearer s"), (b"X-API-Key", b"k"), (b"X-A", b"1")]) == [
        (b"authorization", MASK.encode()),
        (b"X-API-Key", MASK.encode()),
        (b"X-A", b"1"),
    ]


def test_json_paths_masked_in_a_gzipped_body():
    r = Redactor(Redact())
    doc = {"user": {"password": "hunter2", "name": "a"}, "tokens": [{"token": "t1"}]}
    headers = [*JSON, (b"Content-Encoding", b"gzip"), (b"Content-Length", b"99")]
    kept, data = r.body(headers, gzip.compress(orjson.dumps(doc)))
    assert orjson.loads(data) == {
        "user": {"password": MASK, "name": "a"},
        "tokens": [{"token": MASK}],
    }
    assert kept == JSON  # stored decoded now


def test_bodies_without_secrets_are_left_as_they_are():
    r = Redactor(Redact())
    raw = gzip.compress(b'{"name": "a"}')
    headers = [*JSON, (b"Content-Encoding", b"gzip")]
    assert r.body(headers, raw) == (headers, raw)
    assert r.body([(b"Content-Type", b"text/plain")], b"password=x") == (
        [(b"Content-Type", b"text/plain")],
        b"password=x",
    )


def test_divergence_values_hidden_at_secret_paths():
    r = Redactor(Redact())
    secret = Divergence("body:$.user.password", "changed", '"a"', '"b"')
    assert r.divergence(secret) == Divergence("body:$.user.password", "changed", MASK, MASK)
    cookie = Divergence("header:set-cookie", "changed", "sid", "other")
    assert r.divergence(cookie).left == MASK
    plain = Divergence("body:$.user.name", "changed", '"a"', '"b"')
    assert r.divergence(plain) is plain


def test_exchange_masked_in_place():
    r = Redactor(Redact())
    x = Exchange(
        RequestSnapshot(
            "f", "POST", "/login", [(b"Cookie", b"sid=1"), *JSON], b'{"password": "p"}', 0
        ),
        Outcome(200, [*JSON, (b"Set-Cookie", b"sid=2")], b'{"token": "t"}', 0.1),
        Outcome(error="timeout"),
        None,
        "POST /login",
    )
    r.exchange(x)
    assert b"sid=" not in repr(x).encode() and b'"p"' not in x.request.body
    assert orjson.loads(x.primary.body) == {"token": MASK}


def test_forms_queries_and_json_as_text_are_masked():
    r = Redactor(Redact())
    form = [(b"Content-Type", b"application/x-www-form-urlencoded")]
    assert r.body(form, b"user=a&password=hunter2")[1] == b"user=a&password=%5Bredacted%5D"
    text = [(b"Content-Type", b"text/plain")]
    assert orjson.loads(r.body(text, b'{"token": "t"}')[1]) == {"token": MASK}
    assert r.path("/login?user=a&access_token=s3") == "/login?user=a&access_token=%5Bredacted%5D"
    assert r.path("/plain?x=1") == "/plain?x=1"


def test_secrets_inside_a_changed_object_are_masked_in_the_excerpt(tmp_path):
    from shadowdiff.compare.outcomes import Comparer
    from shadowdiff.config import Compare

    r = Redactor(Redact())
    comparer = Comparer(Compare(), mask=r.json)
    a = Outcome(200, JSON, orjson.dumps({"user": {"name": "a", "password": "hunter2"}}))
    b = Outcome(200, JSON, orjson.dumps({"user": "gone", "items": [{"token": "T1"}]}))
    found = comparer.compare(a, b, "GET /x")
    assert found and "hunter2" not in repr(found) and "T1" not in repr(found)


def test_deep_secret_body_hides_whole_body():
    r = Redactor(Redact())
    deep = b'{"password": 1, "a": ' + b"[" * 600 + b"]" * 600 + b"}"
    kept, data = r.body(JSON, deep)
    assert b"password" not in data or data == MASK.encode()


def test_bad_path_is_a_config_error():
    with pytest.raises(ConfigError, match=r"redact.paths\[0\]: .*must start with"):
        load_config(None, {"shadow": "http://a:1", "redact.paths": ["password"]})
