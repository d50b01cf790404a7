"""Reading recorded traffic: mitmproxy flow files and HAR 1.2 files, into request snapshots.

Reading only, no network. Flow files are read with mitmproxy's own io module, which migrates
files written by older mitmproxy versions; HAR is read here, entry by entry, so one broken
entry is skipped and counted instead of refusing the whole file. The format is told by the
content, never by the file name. What cannot be replayed is skipped and counted by reason;
a file that cannot be read at all is a `RecordingError` (one line, naming the file).
"""

from __future__ import annotations

import base64
import binascii
import io
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
from mitmproxy import dns, http, tcp, udp
from mitmproxy.io import FlowReader

from shadowdiff.errors import RecordingError
from shadowdiff.model import Headers, Outcome, RequestSnapshot

BOM = b"\xef\xbb\xbf"

UNSUPPORTED: tuple[tuple[type, str], ...] = (
    (tcp.TCPFlow, "tcp"),
    (udp.UDPFlow, "udp"),
    (dns.DNSFlow, "dns"),
)
"""Flow types that carry no HTTP request to replay, and the reason they are counted under."""

DECODED_BODY_HEADERS = frozenset({b"content-encoding", b"content-length"})
"""HAR keeps response bodies decoded: these headers no longer describe the recorded bytes."""


class BadEntry(Exception):
    """A HAR entry that lacks what a replay needs."""


@dataclass(slots=True)
class Entry:
    """One recorded request, the response it got (None: none recorded), and the client
    connection it came on (requests of one connection keep their order in a replay)."""

    request: RequestSnapshot
    response: Outcome | None
    connection: str


@dataclass(slots=True)
class Recording:
    """What a set of recorded files holds for a replay."""

    entries: list[Entry] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)
    """One line per damaged file: what was lost and why."""


def read(paths: list[str], need_response: bool = False) -> Recording:
    """Every replayable entry of the files, in recorded order (by request start; ties keep
    file order), and what was skipped by reason.

    `need_response`: the recorded response stands in for the primary, so an entry without
    one is skipped (`no_response`).
    """
    recording = Recording()
    for number, path in enumerate(paths):
        data = _load(path)
        har = data[:1024].removeprefix(BOM).lstrip().startswith(b"{")
        entries = _har(path, data, recording) if har else _flows(path, data, recording)
        for entry in entries:
            entry.connection = f"{number}:{entry.connection}"
            if need_response and entry.response is None:
                recording.skipped["no_response"] += 1
            else:
                recording.entries.append(entry)
    _unique_ids(recording.entries)
    recording.entries.sort(key=lambda e: e.request.timestamp)
    return recording


def _load(path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise RecordingError(f"{path}: cannot read: {e.strerror or e}") from None
    if not data or data.isspace():
        raise RecordingError(f"{path}: empty file, nothing to replay")
    return data


def _unique_ids(entries: list[Entry]) -> None:
    """Flow ids are unique within a file; the same file given twice must not collide."""
    seen: set[str] = set()
    for n, entry in enumerate(entries):
        if entry.request.flow_id in seen:
            entry.request.flow_id = f"{entry.request.flow_id}~{n}"
        seen.add(entry.request.flow_id)


# -- mitmproxy flow files -----------------------------------------------------------------


def _flows(path: str, data: bytes, recording: Recording) -> Iterator[Entry]:
    flows = iter(FlowReader(io.BytesIO(data)).stream())
    count = 0
    while True:
        try:
            flow = next(flows)
        except StopIteration:
            return
        except Exception as e:  # a damaged file can raise anything; keep what came before
            if not count:
                raise RecordingError(f"{path}: not a mitmproxy flow file or HAR ({e})") from None
            recording.skipped["corrupt"] += 1
            recording.warnings.append(f"{path}: damaged after flow {count}, the rest is lost: {e}")
            return
        count += 1
        entry = _flow_entry(flow, recording)
        if entry is not None:
            yield entry


def _flow_entry(flow: Any, recording: Recording) -> Entry | None:
    """The entry of one flow, or None once the reason it cannot be replayed is counted."""
    if not isinstance(flow, http.HTTPFlow):
        reason = next((r for kind, r in UNSUPPORTED if isinstance(flow, kind)), flow.type)
        recording.skipped[reason] += 1
        return None
    if flow.websocket is not None:
        recording.skipped["websocket"] += 1
        return None
    request = flow.request
    if request.raw_content is None:  # streamed through, never recorded
        recording.skipped["streamed"] += 1
        return None
    snapshot = RequestSnapshot(
        flow_id=flow.id,
        method=request.method,
        path=request.path,
        headers=list(request.headers.fields),
        body=request.raw_content,
        timestamp=request.timestamp_start,
    )
    return Entry(snapshot, _flow_response(flow), flow.client_conn.id)


def _flow_response(flow: http.HTTPFlow) -> Outcome | None:
    response = flow.response
    if response is None or response.raw_content is None:
        return None
    latency = None
    if response.timestamp_end and flow.request.timestamp_end:
        latency = response.timestamp_end - flow.request.timestamp_end
    return Outcome(
        status=response.status_code,
        headers=list(response.headers.fields),
        body=response.raw_content,
        latency=latency,
    )


# -- HAR 1.2 ------------------------------------------------------------------------------


def _har(path: str, data: bytes, recording: Recording) -> Iterator[Entry]:
    try:
        log = orjson.loads(data.removeprefix(BOM))["log"]
        entries = log["entries"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as e:
        raise RecordingError(f"{path}: not a HAR file (JSON without log.entries: {e})") from None
    if not isinstance(entries, list):
        raise RecordingError(f"{path}: not a HAR file (log.entries is not a list)")
    if not entries:
        raise RecordingError(f"{path}: HAR without entries, nothing to replay")
    for number, raw in enumerate(entries):
        try:
            yield _har_entry(raw, f"{Path(path).name}#{number}")
        except (BadEntry, KeyError, TypeError, ValueError, AttributeError, binascii.Error):
            recording.skipped["bad_entry"] += 1


def _har_entry(raw: dict[str, Any], flow_id: str) -> Entry:
    request = raw["request"]
    url = urlsplit(request["url"])
    if url.scheme not in ("http", "https") or not url.netloc:
        raise BadEntry(f"not an absolute http(s) URL: {request['url']!r}")
    method = request["method"]
    if not isinstance(method, str) or not method:
        raise BadEntry("no method")
    snapshot = RequestSnapshot(
        flow_id=flow_id,
        method=method.upper(),
        path=(url.path or "/") + (f"?{url.query}" if url.query else ""),
        headers=_har_headers(request["headers"]),
        body=_har_request_body(request.get("postData")),
        timestamp=datetime.fromisoformat(raw["startedDateTime"]).timestamp(),
    )
    connection = raw.get("connection") or raw.get("pageref") or flow_id
    return Entry(snapshot, _har_response(raw), str(connection))


def _har_headers(listed: list[dict[str, str]], drop: frozenset[bytes] = frozenset()) -> Headers:
    """Raw header pairs; HTTP/2 pseudo-headers (`:authority`, ...) are no headers to send."""
    out = []
    for header in listed:
        name, value = _bytes(header["name"]), _bytes(header["value"])
        if name.startswith(b":") or name.lower() in drop:
            continue
        out.append((name, value))
    return out


def _bytes(text: str) -> bytes:
    """Header text as sent: latin-1 when it fits (HTTP's own charset), else UTF-8."""
    if not isinstance(text, str):
        raise BadEntry(f"header is not text: {text!r}")
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def _har_request_body(post: dict[str, Any] | None) -> bytes:
    if not post:
        return b""
    if "text" in post:
        return _text(post["text"], post.get("encoding"))
    params = post.get("params")
    if params and "x-www-form-urlencoded" in str(post.get("mimeType", "")):
        return urlencode([(p["name"], p.get("value", "")) for p in params]).encode()
    if params:
        raise BadEntry("postData with params but no text (multipart cannot be rebuilt)")
    return b""


def _text(text: str, encoding: str | None) -> bytes:
    if not isinstance(text, str):
        raise BadEntry("body text is not a string")
    if encoding == "base64":
        return base64.b64decode(text, validate=True)
    return text.encode("utf-8", "surrogateescape")


def _har_response(raw: dict[str, Any]) -> Outcome | None:
    """The recorded response, or None: none (status 0, as browsers record failed requests)
    or its body not kept in the HAR."""
    response = raw.get("response")
    if not isinstance(response, dict) or not response.get("status"):
        return None
    content = response.get("content") or {}
    if "text" not in content and content.get("size", 0) > 0:
        return None
    timings = raw.get("timings") or {}
    wait, receive = timings.get("wait", -1), timings.get("receive", -1)
    return Outcome(
        status=int(response["status"]),
        headers=_har_headers(response.get("headers", []), DECODED_BODY_HEADERS),
        body=_text(content.get("text", ""), content.get("encoding")),
        latency=(wait + receive) / 1000 if wait >= 0 and receive >= 0 else None,
    )
