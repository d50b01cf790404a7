"""Bodies as the comparison sees them: decoded from their content-encoding, and of a kind.

Both sides of an exchange are stored as the bytes on the wire, so both are decoded here the
same way. Nothing in this module raises on strange bytes: a body that cannot be decoded is
returned raw with the reason (`undecodable`, or `too_large` for a decompression bomb), and its
kind is then `binary`. Every decoder is fed in steps and stops once its output passes
MAX_DECODED, so memory stays bounded whatever a body claims to expand to.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import brotlicffi
import orjson
import zstandard

MAX_DECODED = 16 * 1024 * 1024
"""Bytes a body may decode to (every encoding step alike); past it decoding stops and the body
is `too_large`: a decompression bomb costs at most this plus one step's output."""
MAX_ENCODINGS = 4
"""Stacked content-encodings decoded at most; more is `undecodable` (servers stack two)."""
_ZSTD_STEP = 128
"""Input bytes fed to zstd at once: a zstd block (3-byte header, 1 byte RLE) yields at most
128 KiB, so one step yields at most 4 MiB."""
_BROTLI_STEP = 1024 * 1024
"""Output bytes brotlicffi is asked for at once (and returns at most)."""

JSON, FORM, HTML, XML, TEXT, BINARY = "json", "form", "html", "xml", "text", "binary"
UNDECODABLE, TOO_LARGE = "undecodable", "too_large"
"""Why a body was not decoded; the comparison reports it as a divergence of that kind."""

_BOM = b"\xef\xbb\xbf"


class _TooLarge(ValueError):
    """Decoded output passed MAX_DECODED."""


@dataclass(frozen=True, slots=True)
class Body:
    data: bytes
    kind: str
    failure: str | None = None
    """UNDECODABLE or TOO_LARGE when `data` is the raw body because decoding failed."""


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    """The first value of a header, lower-cased, as text; empty when absent."""
    return header_value(headers, name).strip().lower()


def header_value(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    """The first value of a header as sent (a multipart boundary is case-sensitive)."""
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def encodings(headers: list[tuple[bytes, bytes]]) -> str:
    """Every Content-Encoding header's value, lower-cased, joined: a repeated header stacks
    like a comma-separated one. Empty when absent."""
    return ", ".join(
        value.decode("latin-1").strip().lower()
        for key, value in headers
        if key.lower() == b"content-encoding"
    )


def _steps(encoding: str) -> list[str]:
    """The encodings of a Content-Encoding value in the order applied, `identity` left out."""
    listed = [step.strip() for step in encoding.lower().split(",")]
    return [step for step in listed if step not in ("", "identity")]


def _check(out: bytearray) -> None:
    if len(out) > MAX_DECODED:
        raise _TooLarge


def _zlib(data: bytes, wbits: int, members: bool) -> bytes:
    """gzip (`members`: one or more gzip members back to back) or deflate, output bounded
    by zlib's own max_length."""
    out = bytearray()
    while True:
        decompressor = zlib.decompressobj(wbits)
        out += decompressor.decompress(data, MAX_DECODED + 1 - len(out))
        _check(out)
        if not decompressor.eof:
            raise ValueError("truncated")
        data = decompressor.unused_data
        if not (members and data):
            return bytes(out)


def _deflate(data: bytes) -> bytes:
    try:
        return _zlib(data, zlib.MAX_WBITS, members=False)
    except zlib.error:  # raw deflate, as some servers send it
        return _zlib(data, -zlib.MAX_WBITS, members=False)


def _zstd(data: bytes) -> bytes:
    """One or more zstd frames, fed _ZSTD_STEP bytes at a time (zstandard's decompressobj has
    no output limit); windows larger than MAX_DECODED are refused, not allocated."""
    out = bytearray()
    while data:
        decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_DECODED).decompressobj()
        for start in range(0, len(data), _ZSTD_STEP):
            out += decompressor.decompress(data[start : start + _ZSTD_STEP])
            _check(out)
            if decompressor.eof:
                data = decompressor.unused_data + data[start + _ZSTD_STEP :]
                break
        else:
            raise ValueError("truncated")
    return bytes(out)


def _brotli(data: bytes) -> bytes:
    """Brotli, stopped past MAX_DECODED: brotlicffi 1.2 limits each call's output, which the
    Brotli module mitmproxy 11 pins (1.1) cannot."""
    decompressor = brotlicffi.Decompressor()
    out = bytearray(decompressor.process(data, output_buffer_limit=_BROTLI_STEP))
    while not decompressor.is_finished():
        _check(out)
        step = decompressor.process(b"", output_buffer_limit=_BROTLI_STEP)
        if not step:
            raise ValueError("truncated")  # it waits for input that will never come
        out += step
    _check(out)
    return bytes(out)


_DECODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda data: _zlib(data, 16 + zlib.MAX_WBITS, members=True),
    "x-gzip": lambda data: _zlib(data, 16 + zlib.MAX_WBITS, members=True),
    "deflate": _deflate,
    "br": _brotli,
    "zstd": _zstd,
}


def decode(data: bytes, encoding: str) -> tuple[bytes, str | None]:
    """The body decoded through every encoding a Content-Encoding value lists, last applied
    first: (decoded, None), or (raw, UNDECODABLE | TOO_LARGE)."""
    steps = _steps(encoding)
    if len(steps) > MAX_ENCODINGS or any(step not in _DECODERS for step in steps):
        return data, UNDECODABLE
    decoded = data
    try:
        for step in reversed(steps):
            decoded = _DECODERS[step](decoded)
    except _TooLarge:
        return data, TOO_LARGE
    except (ValueError, OSError, EOFError, zlib.error, brotlicffi.error, zstandard.ZstdError):
        return data, UNDECODABLE
    except MemoryError:
        return data, TOO_LARGE
    return decoded, None


def mime(content_type: str) -> str:
    """`application/json` from `Application/JSON; charset=utf-8`."""
    return content_type.split(";", 1)[0].strip().lower()


def kind_of(content_type: str, data: bytes) -> str:
    """The comparison a body needs, from its content type, or its first bytes without one."""
    mime_type = mime(content_type)
    if mime_type == "application/json" or mime_type.endswith("+json"):
        return JSON
    if mime_type == "application/x-www-form-urlencoded":
        return FORM
    if mime_type in ("text/html", "application/xhtml+xml"):
        return HTML
    if mime_type in ("application/xml", "text/xml") or mime_type.endswith("+xml"):
        return XML
    if mime_type.startswith("text/") or mime_type in ("application/javascript", "application/yaml"):
        return TEXT
    if mime_type:
        return BINARY
    start = data.lstrip()[:1]
    if start in (b"{", b"["):
        return JSON
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return BINARY
    return TEXT


def looks_json(data: bytes) -> bool:
    """Starts like a JSON object or array, after whitespace and a UTF-8 byte order mark."""
    return data.lstrip().removeprefix(_BOM).lstrip()[:1] in (b"{", b"[")


def parse_json(data: bytes) -> tuple[Any, bool]:
    """The document and True, or (None, False). orjson first; what it refuses (NaN and
    Infinity, a BOM, lone surrogates, big integers, more than 1,024 levels) Python's json
    reads within its own limits."""
    try:
        return orjson.loads(data), True
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data), True
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None, False


def read(headers: list[tuple[bytes, bytes]], data: bytes) -> Body:
    decoded, failure = decode(data, encodings(headers))
    if failure:
        return Body(decoded, BINARY, failure)
    return Body(decoded, kind_of(header(headers, b"content-type"), decoded))
