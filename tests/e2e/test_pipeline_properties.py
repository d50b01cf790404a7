"""The whole pipeline under hostile input, in-process: compare → redact → store → judge → reports.

Hypothesis drives arbitrary paths, headers and bodies (every content-encoding, stacked,
truncated or lied about; JSON with NaN, a BOM, deep nesting, escaped keys, lone surrogates,
big integers; form and multipart bodies; binary) through the real `Recorder` into a real
SQLite store, then the real `document` and every report renderer, and `/metrics`. Each run
checks three promises: nothing raises, the books balance, and no planted secret (a distinctive
token under a secret key in any case, in a secret header or a secret query parameter) is in
clear anywhere: in the store's file, its WAL, any row of any table (decompressed too), any
report or the metrics. Derandomized and without an example database, so CI is reproducible;
the audit's own hostile inputs are named cases below, so a failure says which finding it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gzip
import json
import re
import sqlite3
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import brotli
import pytest
import zstandard
from factories import snapshot
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from shadowdiff.config import load_config
from shadowdiff.counts import imbalance, total
from shadowdiff.faces import Gauges, Metrics, render_html, render_json, render_markdown
from shadowdiff.judge import document, shown_examples
from shadowdiff.model import ERROR_KINDS, Exchange, Headers, Outcome
from shadowdiff.store import SQLiteStore
from shadowdiff.worker.recorder import Recorder

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI is reproducible
    database=None,  # no .hypothesis/ directory in the work tree
    # no shrinking (unbounded in time on a busy machine): a failing case is shown whole, and
    # its planted secrets say how each was carried and where it was found
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
RUN = "props"

SECRET_KEYS = ("password", "token", "access_token", "refresh_token", "secret", "api_key")
"""The keys the README promises are redacted (`redact.paths`), planted in any case."""
SECRET_HEADERS = ("Authorization", "Proxy-Authorization", "Cookie", "X-Api-Key")
"""Request headers whose values are secrets (the defaults, and the API key users expect)."""


ENCODERS = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "raw-deflate": lambda d: (
        zlib.compressobj(wbits=-zlib.MAX_WBITS).compress(d)
        + zlib.compressobj(wbits=-zlib.MAX_WBITS).flush()
    ),
    "br": brotli.compress,
    "zstd": zstandard.compress,
    "identity": lambda d: d,
}
JSON_TYPES = (
    "application/json",
    "Application/JSON; charset=utf-8",
    "application/vnd.api+json",
    "text/plain",
    "",
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)  # past 64 bits: orjson refuses them
    | st.floats()  # NaN and ±Infinity, as Python's json.dumps writes them
    | st.text(max_size=8)
    | st.sampled_from(["\ud800", "a\udfffb", "\x00\x1f"])  # lone surrogates, control bytes
)
VALUES = st.recursive(
    SCALARS,
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3)
    ),
    max_leaves=5,
)
ODDITIES = {
    "NaN/Infinity": re.compile(r"\bNaN\b|\bInfinity\b"),
    "lone surrogate": re.compile(
        r"\\ud[89ab][0-9a-f]{2}(?!\\ud[c-f])|(?<!\\ud[89ab][0-9a-f]{2})\\ud[c-f]"
    ),
    "integer past 64 bits": re.compile(r"\d{20}"),
}
"""What makes a JSON body odd, found in its text: the failure message names it."""
SEGMENTS = (
    st.text(st.characters(blacklist_characters="/?#"), max_size=10)
    | st.integers(0, 10**9).map(str)
    | st.sampled_from(["caf\udcff", "\udc80\udcfe", "%ff%00", "a" * 300, "..", "{id}"])
)


@dataclass
class Planted:
    """The secrets one example planted, and where (for the failure message)."""

    where: dict[str, str] = field(default_factory=dict)

    def token(self, draw: st.DrawFn, place: str) -> str:
        """A distinctive value, unique in the example: finding it anywhere means a leak."""
        value = f"Zq{draw(st.integers(0, 2**64 - 1)):016x}{len(self.where):02d}Xs"
        self.where[value] = place
        return value

    def describe(self, since: int, detail: str) -> None:
        """Adds how they were carried to the places of the tokens planted since `since`."""
        for token in list(self.where)[since:]:
            self.where[token] += f" ({detail})"


def _key(draw: st.DrawFn, planted: Planted, place: str) -> tuple[str, str]:
    """A secret key in some case, and a token for it."""
    name = draw(st.sampled_from(SECRET_KEYS))
    key = draw(st.sampled_from([name, name.upper(), name.title(), name[0].upper() + name[1:]]))
    return key, planted.token(draw, f"{place} key {key!r}")


def _dump(value: Any, escape_keys: bool) -> str:
    """JSON as hand-written servers write it: Python's scalars (NaN, lone surrogates as
    escapes), and keys with every other UTF-16 unit escaped (`"p\\u0061s\\u0073word"`)."""
    if isinstance(value, dict):
        items = (f"{_dump_key(k, escape_keys)}:{_dump(v, escape_keys)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dump(v, escape_keys) for v in value) + "]"
    return json.dumps(value)


def _dump_key(key: str, escape: bool) -> str:
    if not escape:
        return json.dumps(key)
    units = key.encode("utf-16-be", "surrogatepass")
    codes = [int.from_bytes(units[i : i + 2], "big") for i in range(0, len(units), 2)]
    return (
        '"'
        + "".join(f"\\u{c:04x}" if i % 2 else json.dumps(chr(c))[1:-1] for i, c in enumerate(codes))
        + '"'
    )


def _json(draw: st.DrawFn, planted: Planted, place: str) -> tuple[bytes, list[str]]:
    """A JSON body with secrets planted, and what is odd about it."""
    doc: dict[str, Any] = draw(st.dictionaries(st.text(max_size=6), VALUES, max_size=2))
    for i in range(draw(st.integers(1, 2))):
        key, token = _key(draw, planted, place)
        shape = draw(st.sampled_from(["plain", "list", "object"]))
        node: Any = {
            key: token if shape == "plain" else [token] if shape == "list" else {"v": token}
        }
        for wrap in draw(st.lists(st.sampled_from(["list", "dict"]), max_size=2)):
            node = [node] if wrap == "list" else {"in": node}
        doc[f"k{i}"] = node
    escape = draw(st.booleans())
    text = _dump([doc] if draw(st.booleans()) else doc, escape_keys=escape)
    odd = [name for name, there in ODDITIES.items() if there.search(text)]
    odd += ["escaped keys"] * escape
    depth = draw(st.sampled_from([0, 0, 0, 0, 220, 300, 1100]))
    text = "[" * depth + text + "]" * depth
    odd += [f"depth {depth}"] * bool(depth)
    bom = b"\xef\xbb\xbf" if draw(st.integers(0, 5)) == 0 else b""
    odd += ["BOM"] * bool(bom)
    tail = draw(st.sampled_from([b"", b"", b"", b"\n", b"\n\x00", b" trailing"]))
    odd += [f"then {tail!r}"] * bool(tail.strip())
    return bom + text.encode("utf-8", "surrogatepass") + tail, odd


def _form(draw: st.DrawFn, planted: Planted, place: str) -> list[tuple[str, str]]:
    pairs = draw(st.lists(st.tuples(st.text(max_size=6), st.text(max_size=8)), max_size=3))
    pairs += [_key(draw, planted, place) for _ in range(draw(st.integers(1, 2)))]
    return list(draw(st.permutations(pairs)))


def _multipart(pairs: list[tuple[str, str]], boundary: str) -> bytes:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
        for k, v in pairs
    ]
    return ("".join(parts) + f"--{boundary}--\r\n").encode("utf-8", "surrogatepass")


def _encoded(draw: st.DrawFn, data: bytes) -> tuple[list[str], bytes, str | None]:
    """A Content-Encoding chain and the body it says: stacked, truncated, lied about, unknown."""
    chain = draw(st.lists(st.sampled_from(list(ENCODERS)), max_size=3))
    encoded = data
    for step in chain:
        encoded = ENCODERS[step](encoded)
    names = ["deflate" if step == "raw-deflate" else step for step in chain]
    fault = draw(st.sampled_from([None, None, None, "truncate", "lie", "unknown"]))
    if fault == "truncate" and encoded != data:
        encoded = encoded[: max(1, len(encoded) * 2 // 3)]
    elif fault == "lie":  # says it is compressed: it is not, or not that way
        names, encoded = names or ["gzip"], data
        if draw(st.booleans()):
            encoded = ENCODERS[draw(st.sampled_from(["br", "zstd", "gzip"]))](data)
    elif fault == "unknown":
        names = [*names, draw(st.sampled_from(["compress", "x-foo", "GZIP ", ""]))]
    return names, encoded, fault


@st.composite
def bodies(draw: st.DrawFn, planted: Planted, place: str) -> tuple[Headers, bytes]:
    """Headers and body of one message; secrets planted in every carrier that has keys."""
    since, odd = len(planted.where), []
    kind = draw(st.sampled_from(["json", "json", "form", "multipart", "binary", "html", "empty"]))
    if kind == "json":
        content_type = draw(st.sampled_from(JSON_TYPES))
        data, odd = _json(draw, planted, place)
    elif kind == "form":
        content_type = "application/x-www-form-urlencoded"
        data = urlencode(_form(draw, planted, place)).encode()
    elif kind == "multipart":
        boundary = f"sdb{draw(st.integers(0, 10**6))}"
        content_type = f"multipart/form-data; boundary={boundary}"
        data = _multipart(_form(draw, planted, place), boundary)
    elif kind == "binary":
        content_type, data = "application/octet-stream", draw(st.binary(max_size=200))
    elif kind == "html":
        content_type = "text/html"
        data = draw(st.text(max_size=60)).encode("utf-8", "surrogatepass")
    else:
        content_type, data = "", b""
    names, data, fault = _encoded(draw, data) if data else ([], data, None)
    encoding = ", ".join(names)
    headers: Headers = []
    if content_type:
        headers.append((b"Content-Type", content_type.encode()))
    if names:
        headers.append((b"Content-Encoding", encoding.encode()))
    if draw(st.booleans()):
        headers.append((b"Content-Length", str(len(data) + draw(st.integers(-3, 3))).encode()))
    planted.describe(
        since,
        "; ".join(
            [
                f"{kind} {content_type!r}",
                f"encoding {encoding!r}" + (f" {fault}" if fault else ""),
                *odd,
            ]
        ),
    )
    return headers, data


EXTRA_HEADERS = st.lists(
    st.tuples(
        st.sampled_from([b"X-Request-Id", b"x-trace", b"Accept", b"X-\xff", b"X-Empty"]),
        st.binary(max_size=16),  # control bytes, latin-1, anything
    ),
    max_size=3,
)


def _request_headers(draw: st.DrawFn, planted: Planted) -> Headers:
    headers: Headers = []
    for name in draw(st.lists(st.sampled_from(SECRET_HEADERS), max_size=3, unique=True)):
        token = planted.token(draw, f"request header {name}")
        value = {
            "Authorization": draw(st.sampled_from(["Bearer", "bearer", "Basic"])) + " " + token,
            "Cookie": f"a=1; sid={token}",
        }.get(name, token)
        cased = draw(st.sampled_from([name, name.lower(), name.upper()]))
        headers.append((cased.encode(), value.encode()))
    return headers + draw(EXTRA_HEADERS)


def _path(draw: st.DrawFn, planted: Planted) -> str:
    path = "/" + "/".join(draw(st.lists(SEGMENTS, max_size=6)))
    pairs = draw(st.lists(st.tuples(st.text(max_size=5), st.text(max_size=5)), max_size=2))
    pairs += [_key(draw, planted, "query") for _ in range(draw(st.integers(0, 2)))]
    if pairs:
        path += "?" + "&".join(f"{k}={v}" for k, v in draw(st.permutations(pairs)))
    return path


def _outcome(draw: st.DrawFn, planted: Planted, side: str) -> Outcome:
    error = draw(st.sampled_from([None, None, None, None, *ERROR_KINDS]))
    latency = draw(st.none() | st.floats(1e-5, 30.0))
    if error:
        return Outcome(error=error, latency=latency)
    headers, body = draw(bodies(planted, f"{side} body"))
    if draw(st.booleans()):
        token = planted.token(draw, f"{side} Set-Cookie")
        headers.append((b"Set-Cookie", f"sid={token}; Path=/; HttpOnly".encode()))
    status = draw(st.sampled_from([200, 201, 204, 304, 400, 404, 500, 503]) | st.integers(100, 599))
    return Outcome(status, headers + draw(EXTRA_HEADERS), body, latency)


@dataclass
class Case:
    """One example: exchanges, how they come in batches, the tap's and worker's other counts."""

    exchanges: list[Exchange]
    batches: list[int]
    not_eligible: int
    not_sampled: int
    tap_dropped: int
    worker_dropped: int
    planted: Planted


@st.composite
def cases(draw: st.DrawFn) -> Case:
    planted = Planted()
    exchanges = []
    for i in range(draw(st.integers(1, 3))):
        headers = _request_headers(draw, planted)
        body_headers, body = draw(bodies(planted, "request body"))
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "PROPFIND"]))
        path = _path(draw, planted)
        request = snapshot(f"flow-{i}", method, path, headers + body_headers, body, float(i))
        primary = _outcome(draw, planted, "primary")
        how = draw(st.sampled_from(["same", "status", "other"]))
        if how == "other":
            shadow = _outcome(draw, planted, "shadow")
        else:
            status = draw(st.integers(100, 599)) if how == "status" else primary.status
            shadow = Outcome(status, list(primary.headers), primary.body, 0.01, primary.error)
        secondary = _outcome(draw, planted, "secondary") if draw(st.booleans()) else None
        exchanges.append(Exchange(request, primary, shadow, secondary, ""))
    cuts = sorted(draw(st.sets(st.integers(1, len(exchanges)), max_size=2)) | {len(exchanges)})
    counts = st.integers(0, 5)
    return Case(exchanges, cuts, *(draw(counts) for _ in range(4)), planted)


# ---------------------------------------------------------------------------- the checks


def _decoded(data: bytes) -> Iterator[bytes]:
    """What each decoder makes of `data`, however truncated."""
    for wbits in (16 + zlib.MAX_WBITS, zlib.MAX_WBITS, -zlib.MAX_WBITS):
        with contextlib.suppress(zlib.error):
            yield zlib.decompressobj(wbits).decompress(data, 1 << 20)
    with contextlib.suppress(brotli.error):
        yield brotli.Decompressor().process(data)
    with contextlib.suppress(zstandard.ZstdError):
        yield zstandard.ZstdDecompressor().decompressobj().decompress(data)


def _revealed(data: bytes) -> set[bytes]:
    """`data`, and what decoding it up to four times over reveals: what someone holding the
    store could read."""
    found, layer = {data}, {data}
    for _ in range(4):
        layer = {out for d in layer if len(d) > 1 for out in _decoded(d) if out} - found
        found |= layer
    return found


def _readable(db: Path) -> dict[str, bytes]:
    """Per table of the SQLite file at `db`, every value (decoded as far as it goes) joined."""
    readable = {}
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            values = [
                # blobs (bodies, headers) may hold what was never decoded; text is as it is
                d
                for row in conn.execute(f'SELECT * FROM "{table}"')
                for value in row
                if value is not None
                for d in (
                    _revealed(value)
                    if isinstance(value, bytes)
                    else [str(value).encode("utf-8", "surrogatepass")]
                )
            ]
            readable[table] = b"\0".join(values)
    return readable


def leaks(planted: Planted, db: Path, texts: dict[str, str]) -> list[str]:
    """Where a planted secret is in clear: the store's files, its rows (decoded), `texts`."""
    files = {p.name: p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists()}
    sources = {
        **files,
        **_readable(db),
        **{k: v.encode("utf-8", "surrogatepass") for k, v in texts.items()},
    }
    found = []
    for token, place in planted.where.items():
        where = [name for name, data in sources.items() if token.encode() in data]
        if where:
            found.append(f"{place}: {', '.join(where)}")
    return found


def run_pipeline(case: Case, directory: Path, plots: bool = False) -> None:
    """Records the case through the real recorder into a real store, judges and renders it,
    and asserts the three promises."""
    db = directory / "p.db"
    cfg = load_config(
        None, {"shadow": "http://127.0.0.1:9", "store": str(db), "run": RUN, "compare.examples": 3}
    )
    store = SQLiteStore(db)
    recorder = Recorder(cfg, "props:1", store)
    # wired as the worker's composition root wires them
    metrics = Metrics(
        RUN, lambda: dict(recorder.books), lambda: Gauges(1.0, False, 0), cfg.routes.max
    )
    recorder.on_written = metrics.observe
    recorder.routes.on_merge = metrics.forget
    sent = len(case.exchanges)
    sampled = sent + case.tap_dropped + case.worker_dropped
    counts = {
        "tap": {
            "seen": sampled + case.not_eligible + case.not_sampled,
            "not_eligible.loop": case.not_eligible,
            "not_sampled.rate": case.not_sampled,
            "sampled": sampled,
            "dropped.backlog": case.tap_dropped,
        },
        "worker": {"dropped.circuit_open": case.worker_dropped},
    }
    exchanges = copy.deepcopy(case.exchanges)  # the recorder redacts them in place
    start = 0
    for cut in case.batches:
        recorder.record(exchanges[start:cut], counts)
        start = cut
    recorder.record([], counts)  # the final flush

    books = store.counts(RUN)
    assert imbalance(books) == [], books
    assert books.get("dropped.compare", 0) == 0, "the comparison raised (promise 3)"
    written = books["recorded"] + books.get("dropped.store", 0)
    assert written == sent, books  # what the recorder was given, all accounted for
    assert books.get("dropped.store", 0) == 0, "a healthy store refused exchanges"
    assert total(books, "dropped") + books["recorded"] == sampled, books
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT count(*) FROM exchanges WHERE run = ?", (RUN,)).fetchone()[0]
    assert rows == books["recorded"], (rows, books)

    doc, extras, _ = document(store, RUN, cfg)
    assert doc["accounting"] == [], doc["accounting"]
    if not plots:  # the plots show only timings; drawing them costs most of the time
        extras = {**extras, "latencies": {}}
    texts = {
        "report.md": render_markdown(doc),
        "report.json": render_json(doc),
        "report.html": render_html(doc, extras),
        "/metrics": asyncio.run(metrics.scrape()).decode("utf-8", "surrogatepass"),
        "/api/examples": json.dumps(
            [
                shown_examples(store, RUN, route["route"], f["path"], recorder.redactor)
                for route in doc["routes"]
                for f in route["fields"]
            ]
        ),
        "recent divergences": repr(store.recent_divergences(RUN, 100)),
    }
    found = leaks(case.planted, db, texts)
    assert not found, "secrets in clear:\n" + "\n".join(found)
    store.close()  # the WAL goes back into the file: scan that too
    found = leaks(case.planted, db, {})
    assert not found, "secrets in clear after closing:\n" + "\n".join(found)


@PROPERTY
@given(case=cases())
def test_hostile_traffic_never_raises_unbalances_or_leaks(case: Case) -> None:
    with tempfile.TemporaryDirectory(prefix="shadowdiff-props-") as directory:
        run_pipeline(case, Path(directory))


# ---------------------------------------------------------------------------- the audit's inputs

SECRET = "Zq00000000decafbadXs"
JSON_CT: Headers = [(b"Content-Type", b"application/json")]


def _named(request_headers: Headers = (), path: str = "/u/1", body: bytes = b"") -> Case:
    """One exchange carrying `SECRET`, whose primary and shadow differ (so it is an example)."""
    planted = Planted({SECRET: "the audit's input"})
    primary = Outcome(200, list(JSON_CT), b'{"by": "primary"}', 0.01)
    shadow = Outcome(200, list(JSON_CT), b'{"by": "shadow"}', 0.012)
    request = snapshot("flow-0", "GET", path, list(request_headers), body)
    return Case([Exchange(request, primary, shadow, None, "")], [1], 0, 0, 0, 0, planted)


def _responses(body: bytes, headers: Headers = JSON_CT) -> Case:
    """Primary and shadow both answering `body`, with a changed status so it is an example."""
    case = _named()
    x = case.exchanges[0]
    x.primary = Outcome(200, list(headers), body, 0.01)
    x.shadow = Outcome(201, list(headers), body, 0.012)
    return case


def _shadow_page(primary: bytes) -> Case:
    """The primary answers JSON; the shadow an error page (a plausible regression)."""
    case = _responses(primary)
    case.exchanges[0].shadow = Outcome(
        502, [(b"Content-Type", b"text/html")], b"<h1>502</h1>", 0.01
    )
    return case


def _shadow_form(primary: bytes) -> Case:
    """The primary answers JSON; the shadow a form."""
    case = _responses(primary)
    form = [(b"Content-Type", b"application/x-www-form-urlencoded")]
    case.exchanges[0].shadow = Outcome(200, form, b"password=x", 0.01)
    return case


def _collapsing(path: str, count: int = 60) -> Case:
    """`count` exchanges, one batch each, whose paths differ in one segment: past
    `routes.collapse_after` the route table merges them, also in rows already written."""
    case = _named()
    x = case.exchanges[0]
    case.exchanges = [
        Exchange(snapshot(f"flow-{i}", path=path.format(i)), x.primary, x.shadow, None, "")
        for i in range(count)
    ]
    case.batches = list(range(1, count + 1))
    return case


def _json_body(text: str, headers: Headers = JSON_CT) -> Case:
    """A request body from `text`, with `S` standing for the secret."""
    return _named(headers, body=text.replace("S", SECRET).encode("utf-8", "surrogatepass"))


AUDIT: dict[str, Callable[[], Case]] = {
    "4: NaN": lambda: _json_body('{"password": "S", "n": NaN}'),
    "4: Infinity": lambda: _json_body('{"token": "S", "n": -Infinity}'),
    "4: lone surrogate": lambda: _json_body('{"password": "S", "x": "\\ud800"}'),
    "4: depth 1100": lambda: _json_body("[" * 1100 + '{"password": "S"}' + "]" * 1100),
    "4: depth 220 (past the mask's depth bound)": lambda: _json_body(
        "[" * 220 + '{"password": "S"}' + "]" * 220
    ),
    "4: escaped key": lambda: _json_body('{"p\\u0061ssword": "S"}'),
    "4: BOM": lambda: _json_body('\ufeff{"password": "S"}'),
    "4: trailing bytes": lambda: _json_body('{"password": "S"}\n\x00'),
    "4: lying Content-Encoding": lambda: _json_body(
        '{"password": "S"}', [*JSON_CT, (b"Content-Encoding", b"gzip")]
    ),
    "4: truncated gzip": lambda: _named(
        [*JSON_CT, (b"Content-Encoding", b"gzip")],
        body=gzip.compress(f'{{"password": "{SECRET}", "pad": "{"x" * 64}"}}'.encode())[:-12],
    ),
    "4: NaN in both responses": lambda: _responses(
        f'{{"password": "{SECRET}", "score": NaN, "n": 0}}'.encode()
    ),
    "new (near 4): a JSON primary against an HTML shadow, in the text diff's excerpt": (
        lambda: _shadow_page(f'{{"token": "{SECRET}"}}'.encode())
    ),
    "new (near 4): a JSON primary against a form shadow, the JSON text as a divergence path": (
        lambda: _shadow_form(f'{{"k0": {{"password": "{SECRET}"}}}}'.encode())
    ),
    "5: responses 300 deep": lambda: _responses(b"[" * 300 + b'"0"' + b"]" * 300),
    "5: request body 300 deep": lambda: _named(JSON_CT, body=b"[" * 300 + b"]" * 300),
    "11: non-UTF-8 byte in the path": lambda: _named(path="/caf\udcff/x"),
    "11: a route collapse under a non-UTF-8 path segment (the store's merge)": (
        lambda: _collapsing("/caf\udcff/w{}x/y")
    ),
    "19: multipart password": lambda: _named(
        [(b"Content-Type", b"multipart/form-data; boundary=b")],
        body=_multipart([("password", SECRET)], "b"),
    ),
    "19: query key Password": lambda: _named(path=f"/u/1?Password={SECRET}"),
    "19: X-Api-Key header": lambda: _named([(b"X-Api-Key", SECRET.encode())]),
}


@pytest.mark.parametrize("name", list(AUDIT))
def test_the_audits_inputs(name: str, tmp_path: Path) -> None:
    """The audit's hostile inputs by finding number, with the HTML report's plots drawn."""
    run_pipeline(AUDIT[name](), tmp_path, plots=True)
