"""Redaction as a property: a secret planted under a secret name, however the body spells it,
never comes out of `Redactor` (JSON-ish bodies, forms, multipart, query strings, headers)."""

from __future__ import annotations

import gzip
import json
from urllib.parse import quote, urlencode

import brotli
import zstandard
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from shadowdiff.compare.redact import Redactor
from shadowdiff.config import Redact

REDACTOR = Redactor(Redact())
NAMES = Redact().names
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

secrets = st.from_regex(r"\AZq[0-9A-Za-z]{8,16}\Z")
"""Secret values: nothing else in a body, a mask or a placeholder spells them."""


@st.composite
def spelled(draw: st.DrawFn, escape: bool = False) -> tuple[str, str]:
    """A secret name in any case: (the name, how the body writes it, JSON-escaped if `escape`)."""
    name = "".join(c.upper() if draw(st.booleans()) else c for c in draw(st.sampled_from(NAMES)))
    if not escape:
        return name, name
    return name, "".join(f"\\u{ord(c):04x}" if draw(st.booleans()) else c for c in name)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),  # beyond 64 bits too
    st.floats(allow_nan=True, allow_infinity=True),  # NaN and Infinity, as json.dumps writes
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\\\"'"), max_size=8),
    st.sampled_from(["\ud800", "a\udfff"]),  # lone surrogates, which orjson refuses
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(alphabet="abcxyz_", min_size=1, max_size=5), inner, max_size=4),
    ),
    max_leaves=12,
)
KEY = "\0KEY\0"
"""Stands for the secret key while the document is written, then replaced by its spelling."""


@st.composite
def json_bodies(draw: st.DrawFn) -> tuple[list[tuple[bytes, bytes]], bytes, str]:
    secret = draw(secrets)
    _, key = draw(spelled(escape=True))
    value = draw(st.sampled_from([secret, [secret], {"x": secret}]))
    holder = draw(st.dictionaries(st.sampled_from(["a", "b", "c"]), documents, max_size=3))
    holder[KEY] = value
    doc: object = holder
    for step in draw(st.lists(st.sampled_from(["list", "dict"]), max_size=6)):
        doc = [draw(documents), doc] if step == "list" else {"k": draw(documents), "in": doc}
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()))
    assume(text.count(secret) == 1)  # nothing else happens to spell it
    text = text.replace(json.dumps(KEY), f'"{key}"')
    nesting = draw(st.one_of(st.integers(0, 3), st.integers(195, 260), st.just(1100)))
    text = "[" * nesting + text + "]" * nesting
    data = text.encode("utf-8", "surrogatepass")
    data = draw(st.sampled_from([b"", b"\xef\xbb\xbf", b" \n\t"])) + data
    data += draw(st.sampled_from([b"", b"\n", b"\n\x00", b" }", b"garbage", b"[1]"]))
    content_type = draw(
        st.sampled_from(
            [b"application/json", b"application/problem+json", b"text/plain", None]
            + [b"application/octet-stream"]  # not read, unless the bytes look like JSON
        )
    )
    headers = [] if content_type is None else [(b"Content-Type", content_type)]
    if content_type != b"application/octet-stream":
        data, headers = draw(encoded(data, headers))
    return headers, data, secret


@st.composite
def encoded(
    draw: st.DrawFn, data: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The body as sent with none, one or two content-encodings, in one header or two."""
    coders = {"gzip": gzip.compress, "br": brotli.compress}
    coders["zstd"] = zstandard.ZstdCompressor().compress
    steps = draw(st.lists(st.sampled_from(sorted(coders)), max_size=2))
    for step in steps:
        data = coders[step](data)
    if steps and draw(st.booleans()):
        headers = [*headers, *((b"Content-Encoding", s.encode()) for s in steps)]
    elif steps:
        headers = [*headers, (b"Content-Encoding", ", ".join(steps).encode())]
    return data, headers


@SETTINGS
@given(json_bodies())
def test_no_secret_leaves_a_json_ish_body(body):
    headers, data, secret = body
    kept, out = REDACTOR.body(headers, data)
    assert secret.encode() not in out
    assert secret.encode() not in REDACTOR.body(kept, out)[1]  # as the reports redact again


fields = st.lists(
    st.tuples(st.text(alphabet="abcxyz", min_size=1, max_size=5), st.text(max_size=6)),
    max_size=4,
)


@st.composite
def forms(draw: st.DrawFn) -> tuple[str, str]:
    """A query string or form body with a secret field among others; the key may be
    percent-encoded."""
    secret = draw(secrets)
    name, _ = draw(spelled())
    key = "".join(f"%{ord(c):02X}" if draw(st.booleans()) else c for c in name)
    pairs = [urlencode(draw(fields)), f"{key}={quote(secret)}", urlencode(draw(fields))]
    return "&".join(p for p in pairs if p), secret


@SETTINGS
@given(forms())
def test_no_secret_leaves_a_form_or_a_query_string(form):
    text, secret = form
    assert secret not in REDACTOR.path("/login?" + text)
    headers = [(b"Content-Type", b"application/x-www-form-urlencoded")]
    assert secret.encode() not in REDACTOR.body(headers, text.encode())[1]


@st.composite
def multiparts(draw: st.DrawFn) -> tuple[list[tuple[bytes, bytes]], bytes, str]:
    secret = draw(secrets)
    name, _ = draw(spelled())
    boundary = draw(st.from_regex(r"\A[0-9A-Za-z'()+_,-]{1,30}\Z"))
    disposition = draw(
        st.sampled_from(
            [
                f'form-data; name="{name}"',
                f"form-data; name={name}",
                f"form-data; name*=utf-8''{quote(name, safe='')}",
                f'form-data; filename="a.txt"; name="{name}"',
            ]
        )
    )
    parts = [
        f'Content-Disposition: form-data; name="{k}"\r\n\r\n{v}'.encode() for k, v in draw(fields)
    ]
    parts.insert(
        draw(st.integers(0, len(parts))),
        f"Content-Disposition: {disposition}\r\n\r\n{secret}".encode(),
    )
    newline = draw(st.sampled_from([b"\r\n", b"\n"]))
    delimiter = b"--" + boundary.encode()
    body = b"".join(delimiter + newline + p.replace(b"\r\n", newline) + newline for p in parts)
    body += delimiter + b"--" + newline
    content_type = f'multipart/form-data; boundary="{boundary}"'.encode()
    return [(b"Content-Type", content_type)], body, secret


@SETTINGS
@given(multiparts())
def test_no_secret_leaves_a_multipart_body(body):
    headers, data, secret = body
    assert secret.encode() not in REDACTOR.body(headers, data)[1]


@SETTINGS
@given(
    spelled(),
    st.sampled_from(["", "X-", "x_", "X-Upstream-"]),
    secrets,
    st.lists(st.tuples(st.sampled_from([b"Accept", b"X-Id"]), st.binary(max_size=8))),
)
def test_no_secret_leaves_a_header(name, prefix, secret, others):
    headers = [*others, ((prefix + name[0]).encode(), secret.encode())]
    assert all(secret.encode() not in value for _, value in REDACTOR.headers(headers))
