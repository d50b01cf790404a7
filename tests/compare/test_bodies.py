"""Body decoding and kinds: every encoding, bombs stopped in bounded memory, and never an
exception on strange bytes."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import zlib

import brotli
import pytest
import zstandard

from shadowdiff.compare.bodies import (
    BINARY,
    FORM,
    HTML,
    JSON,
    MAX_DECODED,
    TEXT,
    TOO_LARGE,
    UNDECODABLE,
    XML,
    decode,
    kind_of,
    looks_json,
    parse_json,
    read,
)

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
    assert decode(encoded, encoding.lower()) == (DATA, None)


@pytest.mark.parametrize(
    "encoding, data",
    [
        ("gzip", gzip.compress(DATA)[:-20]),  # truncated
        ("gzip", os.urandom(200)),
        ("gzip", gzip.compress(DATA) + b"junk"),
        ("br", os.urandom(200)),
        ("br", brotli.compress(DATA)[:-3]),  # truncated
        ("br", brotli.compress(DATA) + b"junk"),
        ("zstd", zstandard.ZstdCompressor().compress(DATA)[:-3]),  # truncated
        ("zstd", os.urandom(200)),
        ("deflate", os.urandom(200)),
        ("compress", DATA),
        ("gzip, gzip, gzip, gzip, gzip", DATA),  # more stacked than any server sends
        ("gzip, br", gzip.compress(brotli.compress(DATA))),  # the wrong order: raw comes back
    ],
)
def test_undecodable_is_flagged_never_raised(encoding, data):
    assert decode(data, encoding) == (data, UNDECODABLE)


def test_gzip_members_back_to_back_all_decode():
    assert decode(gzip.compress(DATA) + gzip.compress(b"more"), "gzip") == (DATA + b"more", None)
    frames = zstandard.ZstdCompressor().compress(DATA) * 2
    assert decode(frames, "zstd") == (DATA * 2, None)


def _brotli_bomb(mib: int) -> bytes:
    compressor, zeros = brotli.Compressor(quality=5), b"\0" * (1 << 20)
    return b"".join([compressor.process(zeros) for _ in range(mib)] + [compressor.finish()])


def _zstd_stream(data: bytes) -> bytes:
    """A zstd frame that does not declare its size, so only the output limit can stop it."""
    compressor = zstandard.ZstdCompressor().compressobj()
    return compressor.compress(data) + compressor.flush()


ZEROS = b"\0" * (MAX_DECODED + 1)
BR_BOMB = _brotli_bomb(64)


@pytest.mark.parametrize(
    "encoding, bomb",
    [
        ("gzip", gzip.compress(ZEROS)),
        ("deflate", zlib.compress(ZEROS)),
        ("br", BR_BOMB),
        ("zstd", zstandard.ZstdCompressor().compress(ZEROS)),
        ("zstd", _zstd_stream(ZEROS)),
        ("gzip, br", BR_BOMB),  # the outer layer a bomb
        ("br, gzip", gzip.compress(BR_BOMB)),  # the inner layer a bomb
    ],
)
def test_every_decoder_stops_a_bomb_as_too_large(encoding, bomb):
    assert len(bomb) < 100_000
    assert decode(bomb, encoding) == (bomb, TOO_LARGE)
    body = read([(b"Content-Encoding", e.encode()) for e in encoding.split(", ")], bomb)
    assert (body.data, body.kind, body.failure) == (bomb, BINARY, TOO_LARGE)


def test_exactly_the_limit_still_decodes():
    data = b"\0" * MAX_DECODED
    assert decode(brotli.compress(data), "br") == (data, None)
    assert decode(gzip.compress(data), "gzip") == (data, None)


BOMB_PEAK = """
import resource, sys
import brotli
from shadowdiff.compare import bodies
compressor, zeros = brotli.Compressor(quality=5), b"\\0" * (1 << 20)
bomb = b"".join([compressor.process(zeros) for _ in range(512)] + [compressor.finish()])
del zeros
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
body = bodies.read([(b"content-encoding", b"br")], bomb)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(bomb), body.failure, (after - before) // 1024)
"""


def test_brotli_bomb_stops_past_the_limit_in_bounded_memory():
    """The audit's bomb: 809 bytes that decode to 512 MiB took the worker to a 1 GB peak."""
    done = subprocess.run(
        [sys.executable, "-c", BOMB_PEAK], capture_output=True, text=True, timeout=120
    )
    size, failure, grew_mib = done.stdout.split()
    assert int(size) < 1000 and failure == TOO_LARGE
    assert int(grew_mib) < 3 * MAX_DECODED // (1 << 20), done.stdout  # was 1,027


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


def test_json_is_recognised_and_read_past_what_orjson_refuses():
    assert looks_json(b"\xef\xbb\xbf \n [1]") and looks_json(b' {"a": 1}')
    assert not looks_json(b"a=1") and not looks_json(b"")
    for text in [b'{"n": NaN}', b"\xef\xbb\xbf{}", b'["\\ud800"]', b"[" + b"9" * 30 + b"]"]:
        assert parse_json(text)[1], text
    assert parse_json(b'{"a": 1}\n\x00') == (None, False)
    assert parse_json(b"[" * 100_000 + b"]" * 100_000) == (None, False)


def test_repeated_content_encoding_headers_stack():
    headers = [(b"Content-Encoding", b"gzip"), (b"Content-Encoding", b"br")]
    body = read(
        [*headers, (b"Content-Type", b"application/json")], brotli.compress(gzip.compress(DATA))
    )
    assert (body.data, body.kind, body.failure) == (DATA, JSON, None)


def test_read_uses_headers():
    body = read(
        [(b"Content-Encoding", b"gzip"), (b"Content-Type", b"application/json")],
        gzip.compress(DATA),
    )
    assert (body.data, body.kind, body.failure) == (DATA, JSON, None)
    broken = read([(b"Content-Encoding", b"gzip")], b"not gzip")
    assert (broken.data, broken.kind, broken.failure) == (b"not gzip", BINARY, UNDECODABLE)
