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


def test_deep_secret_body_hides_what_is_too_deep_to_walk():
    r = Redactor(Redact())
    deep = b'{"password": 1, "a": ' + b"[" * 600 + b'{"token": "t0p"}' + b"]" * 600 + b"}"
    kept, data = r.body(JSON, deep)
    assert b"t0p" not in data and orjson.loads(data)["password"] == MASK


SECRET = "hunter2"


@pytest.mark.parametrize(
    "body",
    [
        b'{"password": "hunter2", "n": NaN}',  # Python's json.dumps default
        b'{"password": "hunter2", "n": Infinity, "m": -Infinity}',
        b'{"password": "hunter2", "x": "\\ud800"}',  # a lone surrogate
        b'\xef\xbb\xbf{"password": "hunter2"}',  # a UTF-8 BOM
        b'{"password": "hunter2", "n": ' + b"9" * 30 + b"}",  # beyond 64 bits
        b'{"p\\u0061ssword": "hunter2"}',  # an escaped key
        b'{"PASSWORD": "hunter2", "n": 1}',  # any case
        '{"to\u212aen": "hunter2"}'.encode(),  # the Kelvin sign lower-cases to k
        b'{"to\\u212Aen": "hunter2"}',
        b'{"d": ' + b"[" * 250 + b'{"password": "hunter2"}' + b"]" * 250 + b"}",
        b'{"password": "hunter2", "d": ' + b"[" * 1100 + b"]" * 1100 + b"}",  # beyond orjson
        '{"password": "hunter2"}'.encode("utf-16"),  # Python's json reads UTF-16 too
    ],
)
def test_json_orjson_refuses_is_parsed_as_the_comparison_does_and_masked(body):
    """Audit finding 4: each of these went to the store and the HTML report in clear."""
    kept, data = Redactor(Redact()).body(JSON, body)
    assert SECRET.encode() not in data and MASK[:-1].encode() in data


def test_masked_json_keeps_what_orjson_cannot_write():
    body = b'{"password": "hunter2", "n": NaN, "big": ' + b"9" * 30 + b', "s": "\\ud800"}'
    data = Redactor(Redact()).body(JSON, body)[1]
    assert data == b'{"password":"[redacted]","n":NaN,"big":' + b"9" * 30 + b',"s":"\\ud800"}'


@pytest.mark.parametrize(
    "headers, body, why",
    [
        (JSON, b'{"password": "hunter2"}\n\x00', "JSON that does not parse"),  # trailing bytes
        (JSON, b'{"password": "hunter2", "d": ' + b"[" * 10**5 + b"]" * 10**5 + b"}", "JSON"),
        (JSON, b'{"password": "hunter2", ', "JSON that does not parse"),  # cut short
        ([(b"Content-Type", b"text/plain")], b'{"password" "hunter2"}', "JSON"),
        ([], b'[{"password": "hunter2"},', "JSON"),  # no content type: sniffed
        (
            [*JSON, (b"Content-Encoding", b"gzip")],
            gzip.compress(b'{"password": "hunter2"}')[:-8],
            "body that does not decode",
        ),
        (
            [*JSON, (b"Content-Encoding", b"gzip")],
            gzip.compress(b'{"password": "hunter2", "pad": "' + b" " * 17_000_000 + b'"}'),
            "body too large to read",
        ),
        (
            [(b"Content-Type", b"multipart/form-data")],  # no boundary
            b'--x\r\nContent-Disposition: form-data; name="password"\r\n\r\nhunter2\r\n--x--',
            "multipart body that does not parse",
        ),
    ],
)
def test_a_body_that_cannot_be_read_is_stored_as_a_placeholder_never_in_clear(headers, body, why):
    r = Redactor(Redact())
    kept, data = r.body([*headers, (b"Content-Length", b"99")], body)
    assert data.startswith(f"[redacted: {why}".encode()) and data.endswith(b" bytes]")
    assert f", {len(body)} bytes]".encode() in data
    assert all(n.lower() not in (b"content-encoding", b"content-length") for n, _ in kept)
    assert r.body(kept, data) == (kept, data)  # the reports redact again: it stays as it is


def test_unparsable_json_without_a_secret_name_is_kept_as_it_came():
    r = Redactor(Redact())
    for body in (b'{"name": "a"} }', b'{"n": NaN, "s": '):
        assert r.body(JSON, body) == (JSON, body)


def test_bodies_redaction_never_reads_are_not_decoded():
    r = Redactor(Redact())
    bomb = gzip.compress(b"\0" * (20 * 1024 * 1024))
    for kind in (b"image/png", b"application/octet-stream", b"text/html"):
        headers = [(b"Content-Type", kind), (b"Content-Encoding", b"gzip")]
        assert r.body(headers, bomb) == (headers, bomb)
    # but bytes that look like JSON are read, whatever the type says
    binary = [(b"Content-Type", b"application/octet-stream")]
    assert orjson.loads(r.body(binary, b' {"token": "t"}')[1]) == {"token": MASK}


def test_secret_names_match_whatever_the_case():
    r = Redactor(Redact())
    doc = {"Password": "a", "PASSWD": "b", "apiKey": "c", "Api-Key": "d", "user": {"Pwd": "e"}}
    masked = orjson.loads(r.body(JSON, orjson.dumps(doc))[1])
    assert masked == {k: MASK for k in doc if k != "user"} | {"user": {"Pwd": MASK}}
    assert r.path("/x?Password=1&passwd=2&apikey=3&auth=4&q=5") == (
        "/x?Password=%5Bredacted%5D&passwd=%5Bredacted%5D&apikey=%5Bredacted%5D"
        "&auth=%5Bredacted%5D&q=5"
    )
    form = [(b"Content-Type", b"application/x-www-form-urlencoded")]
    assert r.body(form, b"TOKEN=s&p%61ssword=s2&user=a")[1] == (
        b"TOKEN=%5Bredacted%5D&password=%5Bredacted%5D&user=a"
    )
    assert r.body(form, b"[a]=1&p%61ssword=s2")[1] == b"%5Ba%5D=1&password=%5Bredacted%5D"
    lower = Redactor(Redact(names=[], paths=["$.User.Secret"]))
    assert orjson.loads(lower.body(JSON, b'{"user": {"SECRET": 1}}')[1]) == {
        "user": {"SECRET": MASK}
    }


def test_default_names_cover_the_usual_spellings():
    names = set(Redact().names)
    assert {"password", "passwd", "pwd", "secret", "token", "apikey", "api_key", "api-key"} <= names
    assert {"access_token", "refresh_token", "authorization", "auth"} <= names


def test_multipart_fields_named_like_secrets_are_masked():
    r = Redactor(Redact())
    parts = [
        b'Content-Disposition: form-data; name="user"\r\n\r\nalice',
        b'Content-Disposition: form-data; name="Password"\r\n\r\nhunter2',
        b"Content-Disposition: form-data; name*=utf-8''api%5Fkey\r\n\r\nk3y",
        b'Content-Disposition: form-data; name="meta"\r\nContent-Type: application/json'
        b'\r\n\r\n{"auth": {"token": "t0k"}}',
        b'Content-Disposition: form-data; name="file"; filename="token.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n\x00\x01",
    ]
    body = b"".join(b"--Bound4ry\r\n" + p + b"\r\n" for p in parts) + b"--Bound4ry--\r\n"
    headers = [(b"Content-Type", b"multipart/form-data; boundary=Bound4ry")]
    kept, data = r.body(headers, body)
    for secret in (b"hunter2", b"k3y", b"t0k"):
        assert secret not in data
    assert b"\r\n\r\nalice\r\n" in data and b"\x00\x01\r\n--Bound4ry--" in data
    assert data.count(b"--Bound4ry") == 6 and kept == headers


def test_headers_named_like_secrets_are_masked():
    r = Redactor(Redact())
    secret = [b"X-Api-Key", b"X-Auth-Token", b"x_api_key", b"Token", b"Proxy-Authorization"]
    plain = [b"X-Request-Id", b"X-Tokens-Used", b"Accept"]
    got = r.headers([(name, b"value") for name in secret + plain])
    assert [v for _, v in got] == [MASK.encode()] * len(secret) + [b"value"] * len(plain)
    assert r.divergence(Divergence("header:x-api-key", "changed", "a", "b")).left == MASK


def test_text_excerpts_that_may_show_a_secret_are_hidden():
    r = Redactor(Redact())
    excerpt = Divergence("body", "changed", '-{"password": "a", NaN', "1 diff lines")
    assert r.divergence(excerpt).left == MASK
    plain = Divergence("body", "changed", "-hello\n+world", "2 diff lines")
    assert r.divergence(plain) is plain
    assert r.divergence(Divergence("body:$.User.Password", "changed", "a", "b")).left == MASK


def test_bad_path_is_a_config_error():
    with pytest.raises(ConfigError, match=r"redact.paths\[0\]: .*must start with"):
        load_config(None, {"shadow": "http://a:1", "redact.paths": ["password"]})
