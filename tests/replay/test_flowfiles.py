"""Reading recordings: flow files of both mitmproxy versions, HAR 1.2, damage and junk."""

from __future__ import annotations

import base64
import gzip
from pathlib import Path

import orjson
import pytest
from mitmproxy import connection, http
from mitmproxy.io import FlowWriter
from mitmproxy.test import tflow

from shadowdiff.errors import RecordingError
from shadowdiff.replay.flowfiles import read

DATA = Path(__file__).parent.parent / "data"


def make_flow(
    n: float,
    method: str = "GET",
    path: str = "/users/1",
    body: bytes = b"",
    client: str = "c1",
    response: bytes | None = b'{"id": 1}',
) -> http.HTTPFlow:
    """A small recorded flow (no certificates): request `n` seconds into the recording."""
    peer = connection.Client(peername=("127.0.0.1", 50000), sockname=("127.0.0.1", 8080), id=client)
    flow = http.HTTPFlow(peer, connection.Server(address=("127.0.0.1", 8000)))
    flow.request = http.Request.make(method, f"http://127.0.0.1:8000{path}", body, {"X-N": str(n)})
    flow.request.timestamp_start = flow.request.timestamp_end = 1000.0 + n
    if response is not None:
        flow.response = http.Response.make(200, response, {"Content-Type": "application/json"})
        flow.response.timestamp_end = flow.request.timestamp_end + 0.02
    return flow


def write_flows(path: Path, flows: list) -> Path:
    with path.open("wb") as f:
        writer = FlowWriter(f)
        for flow in flows:
            writer.add(flow)
    return path


def write_har(path: Path, entries: list, prefix: bytes = b"") -> Path:
    har = {
        "log": {"version": "1.2", "creator": {"name": "test", "version": "1"}, "entries": entries}
    }
    path.write_bytes(prefix + orjson.dumps(har))
    return path


def har_entry(
    url: str,
    method: str = "GET",
    started: str = "2026-11-27T10:00:00.000Z",
    **extra: object,
) -> dict:
    """A HAR 1.2 entry shaped like Chromium's export (HTTP/2 pseudo-headers included)."""
    entry = {
        "startedDateTime": started,
        "time": 12.5,
        "request": {
            "method": method,
            "url": url,
            "httpVersion": "http/2.0",
            "headers": [
                {"name": ":authority", "value": "shop.example"},
                {"name": ":method", "value": method},
                {"name": ":path", "value": "/"},
                {"name": ":scheme", "value": "https"},
                {"name": "accept", "value": "application/json"},
                {"name": "x-user", "value": "Zoë"},
            ],
            "queryString": [],
            "cookies": [],
            "headersSize": -1,
            "bodySize": 0,
        },
        "response": {
            "status": 200,
            "statusText": "",
            "httpVersion": "http/2.0",
            "headers": [
                {"name": "content-type", "value": "application/json"},
                {"name": "content-encoding", "value": "gzip"},
                {"name": "content-length", "value": "31"},
            ],
            "cookies": [],
            "content": {"size": 9, "mimeType": "application/json", "text": '{"id": 1}'},
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": 31,
        },
        "cache": {},
        "timings": {
            "blocked": 1.0,
            "dns": -1,
            "connect": -1,
            "send": 0.1,
            "wait": 10.0,
            "receive": 1.5,
        },
        "_priority": "High",
        "_resourceType": "fetch",
        "connection": "4242",
        "pageref": "page_1",
    }
    entry.update(extra)
    return entry


@pytest.mark.parametrize("name", ["flows-mitmproxy11.mitm", "flows-mitmproxy12.mitm"])
def test_flow_files_of_both_mitmproxy_versions(name):
    """Written by mitmproxy 11 and by 12 (tests/data/make_flows.py); the suite runs under
    both, so each version reads the other's file."""
    recording = read([str(DATA / name)])
    assert not recording.skipped and not recording.warnings
    get, post, unanswered = recording.entries
    assert (get.request.flow_id, get.request.method, get.request.path) == (
        "flow-1",
        "GET",
        "/users/1?expand=1",
    )
    assert (b"X-N", b"1") in get.request.headers
    assert get.request.timestamp == 1_700_000_001.0
    assert get.response is not None and get.response.status == 200
    # the body as on the wire: still gzip, with its header
    assert (b"Content-Encoding", b"gzip") in get.response.headers
    assert gzip.decompress(get.response.body) == b'{"id": 1}'
    assert get.response.latency == pytest.approx(0.05, abs=1e-4)
    assert (post.request.method, post.request.body) == ("POST", b'{"n": 1}')
    assert post.response is not None and (post.response.status, post.response.body) == (
        201,
        b"created",
    )
    assert unanswered.request.path == "/search?q=tea" and unanswered.response is None
    assert get.connection == post.connection != unanswered.connection
    needing = read([str(DATA / name)], need_response=True)
    assert [e.request.flow_id for e in needing.entries] == ["flow-1", "flow-2"]
    assert needing.skipped == {"no_response": 1}


def test_flows_that_cannot_be_replayed_are_counted_by_kind(tmp_path):
    streamed = make_flow(3)
    streamed.request.stream = True
    streamed.request.raw_content = None
    path = write_flows(
        tmp_path / "mixed.mitm",
        [
            make_flow(1),
            tflow.twebsocketflow(),
            tflow.ttcpflow(),
            tflow.tudpflow(),
            tflow.tdnsflow(),
            streamed,
            make_flow(2, "POST", "/orders", b"{}"),
        ],
    )
    recording = read([str(path)])
    assert [(e.request.method, e.request.path) for e in recording.entries] == [
        ("GET", "/users/1"),
        ("POST", "/orders"),
    ]
    assert recording.skipped == {"websocket": 1, "tcp": 1, "udp": 1, "dns": 1, "streamed": 1}


def test_truncated_flow_file_keeps_the_flows_before_the_damage(tmp_path):
    flows = [make_flow(n, path=f"/p/{n}") for n in range(5)]
    data = write_flows(tmp_path / "whole.mitm", flows).read_bytes()
    three, four = (len(write_flows(tmp_path / "part", flows[:n]).read_bytes()) for n in (3, 4))
    cut = tmp_path / "cut.mitm"
    cut.write_bytes(data[: (three + four) // 2])  # in the middle of the 4th flow
    recording = read([str(cut)])
    assert [e.request.path for e in recording.entries] == ["/p/0", "/p/1", "/p/2"]
    assert recording.skipped == {"corrupt": 1}
    [warning] = recording.warnings
    assert str(cut) in warning and "after flow 3" in warning
    garbage = tmp_path / "garbage.mitm"
    garbage.write_bytes(data + b"7:garbage!")  # junk after the last flow
    assert len(read([str(garbage)]).entries) == 5


def test_har_entries_as_chromium_exports_them(tmp_path):
    gzipped = base64.b64encode(b"\x1f\x8b binary \x00\xff").decode()
    entries = [
        har_entry(
            "https://shop.example/orders?src=app#frag",
            "POST",
            "2026-11-27T10:00:02.000Z",
            pageref="page_1",
        ),
        har_entry("https://shop.example/users/7?expand=1", started="2026-11-27T10:00:01.000+00:00"),
    ]
    entries[0]["request"]["postData"] = {
        "mimeType": "application/octet-stream",
        "text": base64.b64encode(b'{"n": 1}\x00\xfe').decode(),
        "encoding": "base64",
    }
    entries[0]["response"]["content"] = {
        "size": 12,
        "mimeType": "application/octet-stream",
        "text": gzipped,
        "encoding": "base64",
    }
    del entries[1]["connection"]
    path = write_har(tmp_path / "export.har", entries, prefix=b"\xef\xbb\xbf\n")
    recording = read([str(path)])
    assert not recording.skipped
    get, post = recording.entries  # recorded order: by start time, not by file order
    assert (get.request.method, get.request.path) == ("GET", "/users/7?expand=1")
    assert (post.request.method, post.request.path) == ("POST", "/orders?src=app")
    assert post.request.body == b'{"n": 1}\x00\xfe'
    assert get.request.headers == [(b"accept", b"application/json"), (b"x-user", b"Zo\xeb")]
    assert get.request.timestamp + 1 == post.request.timestamp
    assert post.response is not None and post.response.body == b"\x1f\x8b binary \x00\xff"
    # HAR bodies are decoded: the encoding and length headers no longer describe them
    assert get.response is not None and get.response.headers == [
        (b"content-type", b"application/json")
    ]
    assert (get.response.status, get.response.body) == (200, b'{"id": 1}')
    assert get.response.latency == pytest.approx(0.0115)
    assert post.connection.endswith(":4242") and get.connection.endswith(":page_1")


def test_har_entries_with_missing_or_bad_fields_are_skipped(tmp_path):
    no_url = har_entry("https://shop.example/a")
    del no_url["request"]["url"]
    bad_base64 = har_entry("https://shop.example/b", "POST")
    bad_base64["request"]["postData"] = {"mimeType": "x", "text": "%%%", "encoding": "base64"}
    multipart = har_entry("https://shop.example/c", "POST")
    multipart["request"]["postData"] = {
        "mimeType": "multipart/form-data",
        "params": [{"name": "f", "fileName": "a.txt"}],
    }
    relative = har_entry("/d")
    headers_not_list = har_entry("https://shop.example/e")
    headers_not_list["request"]["headers"] = {"accept": "*/*"}
    form = har_entry("https://shop.example/login", "POST")
    form["request"]["postData"] = {
        "mimeType": "application/x-www-form-urlencoded",
        "params": [{"name": "user", "value": "ada"}, {"name": "next", "value": "/a b"}],
    }
    failed = har_entry("https://shop.example/blocked")
    failed["response"]["status"] = 0
    no_body = har_entry("https://shop.example/img")
    del no_body["response"]["content"]["text"]
    path = write_har(
        tmp_path / "bad.har",
        [no_url, bad_base64, multipart, relative, headers_not_list, "junk", form, failed, no_body],
    )
    recording = read([str(path)])
    assert recording.skipped == {"bad_entry": 6}
    assert [e.request.path for e in recording.entries] == ["/login", "/blocked", "/img"]
    assert recording.entries[0].request.body == b"user=ada&next=%2Fa+b"
    assert [e.response is None for e in recording.entries] == [False, True, True]
    assert read([str(path)], need_response=True).skipped == {"bad_entry": 6, "no_response": 2}


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "cannot read"),
        (b"", "empty file"),
        (b" \n\t", "empty file"),
        (b"hello, this is not a recording\n", "not a mitmproxy flow file or HAR"),
        (b"\x00\x01\x02\xff" * 100, "not a mitmproxy flow file or HAR"),
        (b'{"not": "har"}', "not a HAR file"),
        (b'{"log": {"entries": {}}}', "not a HAR file"),
        (b'{"log": {"entries": [', "not a HAR file"),
        (b'{"log": {"entries": []}}', "HAR without entries"),
    ],
)
def test_unreadable_recordings_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "input.rec"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(RecordingError) as raised:
        read([str(write_flows(tmp_path / "good.mitm", [make_flow(1)])), str(path)])
    text = str(raised.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_the_same_file_twice_keeps_every_entry_apart(tmp_path):
    path = str(write_flows(tmp_path / "f.mitm", [make_flow(1), make_flow(2, client="c2")]))
    recording = read([path, path])
    ids = [e.request.flow_id for e in recording.entries]
    assert len(ids) == len(set(ids)) == 4
    assert len({e.connection for e in recording.entries}) == 4  # per file and client
