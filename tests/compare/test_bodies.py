"""Body decoding and kinds: every encoding, and never an exception on strange bytes."""

from __future__ import annotations

import gzip
import os
import zlib

import brotli
import pytest
import zstandard

from shadowdiff.compare.bodies import BINARY, FORM, HTML, JSON, TEXT, XML, decode, kind_of, read

DATA = b'{"a": [1, 2, 3], "b": "text"}' * 20


@pytest.mark.parametrize(
    "encoding, encoded",
    [
        ("gzip", gzip.compress(DATA)),
        ("x-gzip", gzip.compress(DATA)),
        ("deflate", zlib.compress(DATA)),
        ("deflate", zlib.compress(DATA)[2:-4]),  # raw deflate, as some servers send it
        ("br", brotli.compress(DATA)),
        ("zstd", zstandard.ZstdCompressor().compress(DATA)),
        ("identity", DATA),
        ("", DATA),
        ("gzip, br", brotli.compress(gzip.compress(DATA))),
        ("GZIP", gzip.compress(DATA)),
    ],
)
def test_decodes(encoding, encoded):
    assert decode(encoded, encoding.lower()) == (DATA, False)


@pytest.mark.parametrize(
    "encoding, data",
    [
        ("gzip", gzip.compress(DATA)[:-20]),  # truncated
        ("gzip", os.urandom(200)),
        ("br", os.urandom(200)),
        ("zstd", os.urandom(200)),
        ("deflate", os.urandom(200)),
        ("compress", DATA),
    ],
)
def test_undecodable_is_flagged_never_raised(encoding, data):
    assert decode(data, encoding) == (data, True)


def test_bomb_is_undecodable():
    bomb = gzip.compress(b"\0" * (20 * 1024 * 1024))
    _, failed = decode(bomb, "gzip")
    assert failed


@pytest.mark.parametrize(
    "content_type, data, kind",
    [
        ("application/json; charset=utf-8", b"{}", JSON),
        ("application/problem+json", b"{}", JSON),
        ("application/x-www-form-urlencoded", b"a=1", FORM),
        ("text/html", b"<p>", HTML),
        ("application/xml", b"<a/>", XML),
        ("application/atom+xml", b"<a/>", XML),
        ("text/plain", b"hi", TEXT),
        ("image/png", b"\x89PNG", BINARY),
        ("", b"  [1, 2]", JSON),
        ("", b"plain words", TEXT),
        ("", b"\xff\xfe\x00", BINARY),
    ],
)
def test_kinds(content_type, data, kind):
    assert kind_of(content_type, data) == kind


def test_read_uses_headers():
    body = read(
        [(b"Content-Encoding", b"gzip"), (b"Content-Type", b"application/json")],
        gzip.compress(DATA),
    )
    assert (body.data, body.kind, body.undecodable) == (DATA, JSON, False)
    broken = read([(b"Content-Encoding", b"gzip")], b"not gzip")
    assert (broken.data, broken.kind, broken.undecodable) == (b"not gzip", BINARY, True)
