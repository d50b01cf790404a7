"""Bodies as the comparison sees them: decoded from their content-encoding, and of a kind.

Both sides of an exchange are stored as the bytes on the wire, so both are decoded here the
same way. Nothing in this module raises on strange bytes: a body that cannot be decoded is
returned raw with a flag, and its kind is then `binary`.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass

import brotli
import zstandard

MAX_DECODED = 16 * 1024 * 1024
"""A decompression bomb stops here and counts as undecodable."""

JSON, FORM, HTML, XML, TEXT, BINARY = "json", "form", "html", "xml", "text", "binary"


@dataclass(frozen=True, slots=True)
class Body:
    data: bytes
    kind: str
    undecodable: bool = False


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    """The first value of a header, lower-cased, as text; empty when absent."""
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1").strip().lower()
    return ""


def _limited(decompressor: zlib._Decompress, data: bytes) -> bytes:
    out = decompressor.decompress(data, MAX_DECODED + 1)
    if len(out) > MAX_DECODED or not decompressor.eof:
        raise ValueError("too large or truncated")
    return out


def _decode_one(data: bytes, encoding: str) -> bytes:
    if encoding in ("", "identity"):
        return data
    if encoding in ("gzip", "x-gzip"):
        return _limited(zlib.decompressobj(16 + zlib.MAX_WBITS), data)
    if encoding == "deflate":
        try:
            return _limited(zlib.decompressobj(), data)
        except zlib.error:  # raw deflate, as some servers send it
            return _limited(zlib.decompressobj(-zlib.MAX_WBITS), data)
    if encoding == "br":
        out: bytes = brotli.decompress(data)
    elif encoding == "zstd":
        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=MAX_DECODED + 1)
    else:
        raise ValueError(f"unknown content-encoding {encoding!r}")
    if len(out) > MAX_DECODED:
        raise ValueError("too large")
    return out


def decode(data: bytes, encoding: str) -> tuple[bytes, bool]:
    """The body decoded through every listed encoding; (raw, True) when that fails."""
    try:
        for step in reversed([e.strip() for e in encoding.split(",") if e.strip()]):
            data = _decode_one(data, step)
    except (
        ValueError,
        OSError,
        EOFError,
        zlib.error,
        gzip.BadGzipFile,
        brotli.error,
        zstandard.ZstdError,
        MemoryError,
    ):
        return data, True
    return data, False


def kind_of(content_type: str, data: bytes) -> str:
    """The comparison a body needs, from its content type, or its first bytes without one."""
    mime = content_type.split(";", 1)[0].strip()
    if mime == "application/json" or mime.endswith("+json"):
        return JSON
    if mime == "application/x-www-form-urlencoded":
        return FORM
    if mime in ("text/html", "application/xhtml+xml"):
        return HTML
    if mime in ("application/xml", "text/xml") or mime.endswith("+xml"):
        return XML
    if mime.startswith("text/") or mime in ("application/javascript", "application/yaml"):
        return TEXT
    if mime:
        return BINARY
    start = data.lstrip()[:1]
    if start in (b"{", b"["):
        return JSON
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return BINARY
    return TEXT


def read(headers: list[tuple[bytes, bytes]], data: bytes) -> Body:
    decoded, undecodable = decode(data, header(headers, b"content-encoding"))
    if undecodable:
        return Body(decoded, BINARY, True)
    return Body(decoded, kind_of(header(headers, b"content-type"), decoded))
