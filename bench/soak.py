"""A bounded soak of the real `shadowdiff proxy`: 20,000 requests, all mirrored, a fifth hostile.

Run: `.venv/bin/python bench/soak.py [--requests 20000] [--concurrency 16]` (a few minutes on
2 cores; loopback only; it stops by itself and exits 1 if a check fails).

Real aiohttp primary and shadow services (processes of their own, never decompressing what
they are sent), the real proxy process, and clients: ordinary API calls, mixed with about 20 %
hostile traffic (crafted paths: thousands of distinct segments, very long, non-UTF-8 bytes and
control bytes in header values over raw sockets; hostile bodies: brotli, gzip and zstd bombs
under `mirror.max_body`, JSON 300 and 1,100 deep, 20,000-element lists, NaN; responses that
are 20,000-element lists the shadow changes everywhere), while two scrapers poll `/metrics` and
`/verdict` (for routes that exist and routes that do not). The proxy's and the worker's RSS are
sampled from /proc. At the end it checks what the issue promises: every live response
byte-identical to the primary's (the primary answers a digest of what it was sent, so the
client knows the answer; raw-socket requests are sent to the primary directly too), the books
balanced in the store, both RSS peaks within their bounds, `shadowdiff gate` and `report`
still answering, and it prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import hashlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import aiohttp
import brotli
import orjson
import zstandard
from yarl import URL

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
# the foundation benchmark's helpers: ports, processes in their own session, /proc children
from live_overhead import (  # noqa: E402
    BIN,
    HOST,
    children,
    count,
    free_port,
    running,
    wait_port,
)

RUN = "soak"
HOSTILE_SHARE = 0.2
WORDS = [f"w{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(50)]
"""Path segments no route table takes for ids: many distinct routes (findings 6 and 13)."""
LIST_LENGTH = 20_000
DEEP = (300, 1100)
SCRAPE_PAUSE = 0.1
"""Seconds between two scrapes of one scraper."""
RSS_EVERY = 0.2
"""Seconds between two RSS samples."""
PROXY_RSS_BOUND = 256
"""MB the proxy's RSS must stay under: mitmproxy's own ~90 MB plus the channel's 16 MiB
backlog, with room for its flows in progress."""
WORKER_RSS_BOUND = 640
"""MB the worker's RSS must stay under: ~150 MB of libraries, `max_unwritten` (256 MiB) of
exchanges held for the store, the examples and the copies in flight with their bodies."""


# ---------------------------------------------------------------------------- the services


def answer(side: str, key: str, method: str, body: bytes) -> bytes:
    """What a service answers: a digest of what it was sent, so the client knows the primary's
    answer byte for byte. The shadow differs on every tenth key (a regression to find)."""
    doc = {
        "key": key,
        "method": method,
        "length": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "pad": hashlib.sha256(key.encode()).hexdigest() * 8,
    }
    if side == "shadow" and key.endswith("0"):
        doc["extra"] = True
    return orjson.dumps(doc)


def long_list(side: str) -> bytes:
    """A 20,000-element list; the shadow's differs in every element (finding 7)."""
    return orjson.dumps([i + (side == "shadow") for i in range(LIST_LENGTH)])


def deep(side: str, depth: int) -> bytes:
    """JSON `depth` levels deep (finding 5)."""
    return b"[" * depth + orjson.dumps(side == "shadow") + b"]" * depth


def serve(port: int, side: str) -> None:
    """Runs the primary or the shadow until killed."""
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        if request.path == "/list":
            return web.Response(body=long_list(side), content_type="application/json")
        if request.path == "/deep":
            depth = int(request.query.get("d", "300"))
            return web.Response(body=deep(side, depth), content_type="application/json")
        key = request.headers.get("X-Soak-Key", "raw")
        return web.Response(
            body=answer(side, key, request.method, body), content_type="application/json"
        )

    async def main() -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", handle)
        # the bombs are for the worker; a service that decompressed them would only test itself
        runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await runner.setup()
        await web.TCPSite(runner, HOST, port).start()
        await asyncio.Event().wait()

    asyncio.run(main())


# ---------------------------------------------------------------------------- the traffic


@dataclass(frozen=True)
class Shot:
    """One request: over aiohttp (`raw` None), or raw bytes over a socket."""

    kind: str
    method: str = "GET"
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    raw: bytes | None = None


def bombs() -> dict[str, tuple[str, bytes]]:
    """Content-Encoding and body of each decompression bomb, all well under mirror.max_body."""
    compressor = brotli.Compressor(quality=5)
    zeros = b"\0" * (1 << 20)
    br = b"".join([compressor.process(zeros) for _ in range(256)] + [compressor.finish()])
    zstd = zstandard.ZstdCompressor(level=3).compress(b"\0" * (64 << 20))
    return {
        "brotli bomb (256 MiB)": ("br", br),
        "gzip bomb (64 MiB)": ("gzip", gzip.compress(b"\0" * (64 << 20), 9)),
        "zstd bomb (64 MiB)": ("zstd", zstd),
        "stacked bomb (gzip, br)": ("gzip, br", gzip.compress(br)),
    }


def raw_request(path: bytes, headers: bytes = b"") -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: soak\r\n" + headers + b"Connection: close\r\n\r\n"


def hostile(i: int, rng: random.Random, bomb: dict[str, tuple[str, bytes]]) -> Shot:
    """One hostile request of a kind drawn from every kind the audit names. Bodies ride on GET,
    as the audit's did: POST is not mirrored by default."""
    json_type = ("Content-Type", "application/json")
    kinds = [
        "distinct segments",
        "very long path",
        "non-UTF-8 path (raw)",
        "control byte in a header (raw)",
        *bomb,
        "JSON 1,100 deep",
        "JSON 300 deep",
        "20,000-element list body",
        "NaN JSON",
        "20,000-element list responses",
        "deep JSON responses",
    ]
    kind = rng.choice(kinds)
    if kind == "distinct segments":
        return Shot(kind, path="/" + "/".join(rng.choice(WORDS) for _ in range(rng.randint(3, 6))))
    if kind == "very long path":
        return Shot(kind, path=f"/long/{i}/" + "a" * rng.randint(2_000, 6_000))
    if kind == "non-UTF-8 path (raw)":
        return Shot(kind, raw=raw_request(b"/caf\xff/%d/\xc3\x28" % i))
    if kind == "control byte in a header (raw)":
        return Shot(kind, raw=raw_request(b"/odd/%d" % i, b"X-A: a\x01b\x7f\r\n"))
    if kind in bomb:
        encoding, data = bomb[kind]
        headers = (json_type, ("Content-Encoding", encoding))
        return Shot(kind, "GET", f"/bomb/{i}", headers, data)
    if kind.startswith("JSON"):
        depth = 1100 if "1,100" in kind else 300
        return Shot(kind, "GET", f"/deep-body/{i}", (json_type,), b"[" * depth + b"]" * depth)
    if kind == "20,000-element list body":
        return Shot(kind, "GET", f"/list-body/{i}", (json_type,), orjson.dumps(list(range(20_000))))
    if kind == "NaN JSON":
        return Shot(kind, "GET", f"/nan/{i}", (json_type,), b'{"password": "x", "n": NaN}')
    if kind == "20,000-element list responses":
        return Shot(kind, path="/list")
    return Shot(kind, path=f"/deep?d={rng.choice(DEEP)}")


def ordinary(i: int, rng: random.Random) -> Shot:
    """An API call like the routes of a small service (its POSTs are not mirrored by default:
    they show in the books as not sampled)."""
    pick = rng.random()
    if pick < 0.4:
        return Shot("ordinary", path=f"/users/{i % 500}")
    if pick < 0.7:
        return Shot("ordinary", path=f"/search?q={quote(rng.choice(WORDS))}&page={i % 7}")
    if pick < 0.95:
        return Shot("ordinary", path=f"/orders/{i}")
    body = orjson.dumps({"order": i, "items": [rng.randint(1, 99) for _ in range(5)]})
    return Shot("ordinary", "POST", "/orders", (("Content-Type", "application/json"),), body)


def traffic(count: int, seed: int) -> list[Shot]:
    rng = random.Random(seed)
    bomb = bombs()
    return [
        hostile(i, rng, bomb) if rng.random() < HOSTILE_SHARE else ordinary(i, rng)
        for i in range(count)
    ]


def expected(shot: Shot, key: str) -> bytes:
    if shot.path == "/list":
        return long_list("primary")
    if shot.path.startswith("/deep?"):
        return deep("primary", int(shot.path.rsplit("=", 1)[1]))
    return answer("primary", key, shot.method, shot.body)


# ---------------------------------------------------------------------------- the client


@dataclass
class Tally:
    """What the clients saw."""

    sent: Counter[str] = field(default_factory=Counter)
    bad: Counter[str] = field(default_factory=Counter)
    first_bad: dict[str, str] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    scrapes: Counter[str] = field(default_factory=Counter)
    slowest: dict[str, float] = field(default_factory=dict)
    """Per endpoint, the longest a scrape took (seconds)."""

    def wrong(self, kind: str, why: str) -> None:
        self.bad[kind] += 1
        self.first_bad.setdefault(kind, why)


async def raw_exchange(port: int, data: bytes, timeout: float) -> tuple[int, bytes]:
    """Status and body of one raw HTTP/1.1 request (Connection: close)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    try:
        writer.write(data)
        response = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(b":") for h in lines[1:])}
    if fields.get(b"transfer-encoding") == b"chunked":
        chunks, rest = [], body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if not size:
                break
            chunks.append(rest[:size])
            rest = rest[size + 2 :]
        body = b"".join(chunks)
    return status, body


async def one(
    session: aiohttp.ClientSession, ports: dict[str, int], shot: Shot, i: int, tally: Tally
) -> None:
    """Sends one shot through the proxy and checks the answer is the primary's."""
    tally.sent[shot.kind] += 1
    start = time.perf_counter()
    try:
        if shot.raw is not None:
            got = await raw_exchange(ports["proxy"], shot.raw, 60)
            direct = await raw_exchange(ports["primary"], shot.raw, 60)
            if got != direct:
                tally.wrong(shot.kind, f"{got[0]} {got[1][:80]!r} != primary's {direct[0]}")
            return
        key = f"k{i}"
        headers = {**dict(shot.headers), "X-Soak-Key": key}
        url = URL(f"http://{HOST}:{ports['proxy']}{shot.path}", encoded=True)
        async with session.request(shot.method, url, headers=headers, data=shot.body) as r:
            body = await r.read()
        want = expected(shot, key)
        if r.status != 200 or body != want:
            tally.wrong(shot.kind, f"{r.status} {body[:80]!r}")
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError, IndexError) as e:
        tally.wrong(shot.kind, f"{type(e).__name__}: {e}")
    finally:
        if shot.kind == "ordinary":
            tally.latencies.append(time.perf_counter() - start)


async def scraper(
    session: aiohttp.ClientSession, control: str, done: asyncio.Event, tally: Tally, n: int
) -> None:
    """Polls /metrics and /verdict (of the run, a route that exists, routes that do not)."""
    turn = 0
    while not done.is_set():
        turn += 1
        path = ["/metrics", "/verdict", "/verdict?route=GET%20/users/{id}"][turn % 3]
        if turn % 4 == 0:
            path = f"/verdict?route=GET%20/nowhere{n}x{turn}"
        start = time.perf_counter()
        try:
            async with session.get(control + path) as r:
                await r.read()
                tally.scrapes[f"{path.split('?')[0]} {r.status}"] += 1
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            tally.scrapes[f"{path.split('?')[0]} {type(e).__name__}"] += 1
        endpoint = path.split("?")[0]
        took = time.perf_counter() - start
        tally.slowest[endpoint] = max(tally.slowest.get(endpoint, 0.0), took)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), SCRAPE_PAUSE)


async def drive(shots: list[Shot], ports: dict[str, int], concurrency: int) -> Tally:
    tally = Tally()
    control = f"http://{HOST}:{ports['control']}"
    done = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    async with aiohttp.ClientSession(
        timeout=timeout, auto_decompress=False, connector=connector
    ) as session:
        scrapers = [asyncio.create_task(scraper(session, control, done, tally, n)) for n in (1, 2)]
        queue = iter(enumerate(shots))

        async def client() -> None:
            for i, shot in queue:
                await one(session, ports, shot, i, tally)

        await asyncio.gather(*(client() for _ in range(concurrency)))
        done.set()
        await asyncio.gather(*scrapers)
    return tally


# ---------------------------------------------------------------------------- memory


class Peaks(threading.Thread):
    """Samples the RSS of the proxy and of its children (the worker, restarted or not)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.proxy = self.worker = 0
        self.stop = threading.Event()

    @staticmethod
    def rss_mb(pid: int) -> int:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024
        return 0

    def run(self) -> None:
        while not self.stop.wait(RSS_EVERY):
            self.proxy = max(self.proxy, self.rss_mb(self.pid))
            for kid in children(self.pid):
                self.worker = max(self.worker, self.rss_mb(kid))


# ---------------------------------------------------------------------------- the run


def shadowdiff(*args: str, timeout: float = 300) -> tuple[int, str, float]:
    """Exit status, output and seconds of one command (-1 if it did not finish in time)."""
    start = time.monotonic()
    try:
        done = subprocess.run(
            [str(BIN / "shadowdiff"), *args], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return -1, f"did not finish in {timeout:.0f} s", time.monotonic() - start
    return done.returncode, done.stdout + done.stderr, time.monotonic() - start


def soak(args: argparse.Namespace, tmp: Path) -> bool:
    """Runs the soak; prints the table; whether every check held."""
    shots = traffic(args.requests, args.seed)
    ports = {name: free_port() for name in ("primary", "shadow", "proxy", "control")}
    store = tmp / "soak.db"
    cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    serve_cmd = [sys.executable, str(Path(__file__).resolve()), "--serve"]
    proxy_cmd = [
        *(str(BIN / "shadowdiff"), "proxy", f"--primary=http://{HOST}:{ports['primary']}"),
        *(f"--shadow=http://{HOST}:{ports['shadow']}", f"--listen={HOST}:{ports['proxy']}"),
        *(f"--control={HOST}:{ports['control']}", "--sample=1", f"--store={store}"),
        f"--run={RUN}",
    ]
    with (
        running([*serve_cmd, str(ports["primary"]), "primary"], cpus, tmp / "primary.log") as p,
        running([*serve_cmd, str(ports["shadow"]), "shadow"], cpus, tmp / "shadow.log") as s,
    ):
        wait_port(ports["primary"], p)
        wait_port(ports["shadow"], s)
        with running(proxy_cmd, cpus, tmp / "proxy.log") as proxy:
            wait_port(ports["proxy"], proxy)
            wait_port(ports["control"], proxy)
            peaks = Peaks(proxy.pid)
            peaks.start()
            start = time.monotonic()
            tally = asyncio.run(drive(shots, ports, args.concurrency))
            duration = time.monotonic() - start
        shutdown = time.monotonic() - start - duration  # the worker writing what it still held
        peaks.stop.set()
    return report(args, tally, (duration, shutdown), peaks, store, tmp)


def report(
    args: argparse.Namespace,
    tally: Tally,
    times: tuple[float, float],
    peaks: Peaks,
    store: Path,
    tmp: Path,
) -> bool:
    """Prints the table; whether every check held."""
    duration, shutdown = times
    from shadowdiff.counts import by_reason, imbalance
    from shadowdiff.store import SQLiteStore

    with SQLiteStore(store, create=False) as s:
        counts = s.counts(RUN)
        problems = imbalance(counts) + [
            f"instance {name}: {p}"
            for name, named in s.instance_counts(RUN).items()
            for p in imbalance(named)
        ]
    gate_status, gate_out, gate_time = shadowdiff("gate", f"--store={store}", "--json")
    report_status, report_out, report_time = shadowdiff(
        "report", f"--store={store}", "--format=html", f"--output={tmp / 'r.html'}"
    )
    _, summary, _ = shadowdiff("summary", f"--store={store}")
    lat = sorted(tally.latencies) or [0.0]
    p99 = lat[max(0, int(len(lat) * 0.99) - 1)]
    bad = sum(tally.bad.values())
    gate_ok = gate_status in (0, 1, 3) and "Traceback" not in gate_out
    report_ok = report_status == 0 and "Traceback" not in report_out
    rss_ok = (peaks.proxy <= PROXY_RSS_BOUND, peaks.worker <= WORKER_RSS_BOUND)
    hostile = sum(v for k, v in tally.sent.items() if k != "ordinary")
    scrapes = ", ".join(f"{k} x{v}" for k, v in sorted(tally.scrapes.items()))
    slowest = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(tally.slowest.items()))
    rows = [
        ("requests", f"{args.requests:,} ({hostile:,} hostile), concurrency {args.concurrency}"),
        ("duration", f"{duration:.1f} s ({args.requests / duration:.0f} req/s)"),
        ("proxy shutdown (worker catching up)", f"{shutdown:.1f} s"),
        ("live p50 / p99 (ordinary)", f"{1000 * statistics.median(lat):.1f} / {1000 * p99:.1f} ms"),
        ("proxy RSS peak", f"{peaks.proxy} MB (bound {PROXY_RSS_BOUND})" + over(rss_ok[0])),
        ("worker RSS peak", f"{peaks.worker} MB (bound {WORKER_RSS_BOUND})" + over(rss_ok[1])),
        ("bad live responses", f"{bad}" + (f" ({_listed(tally.bad)})" if bad else "")),
        ("books balanced", "yes" if not problems else "NO: " + "; ".join(problems)),
        ("seen / sampled", f"{counts.get('seen', 0):,} / {counts.get('sampled', 0):,}"),
        ("not eligible", _listed(by_reason(counts, "not_eligible")) or "none"),
        ("not sampled", _listed(by_reason(counts, "not_sampled")) or "none"),
        ("recorded", f"{counts.get('recorded', 0):,}"),
        ("dropped by reason", _listed(by_reason(counts, "dropped")) or "none"),
        ("shadow errors", _listed(by_reason(counts, "shadow_error")) or "none"),
        ("scrapes", scrapes),
        ("slowest scrape", slowest),
        ("gate", f"exit {gate_status} in {gate_time:.1f} s" + ("" if gate_ok else " (BROKEN)")),
        (
            "report --format html",
            f"exit {report_status} in {report_time:.1f} s" + ("" if report_ok else " (BROKEN)"),
        ),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"\n| {'check':<{width}} | result |\n|{'-' * (width + 2)}|---|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")
    print("\nshadowdiff summary (first lines):", *summary.strip().splitlines()[:4], sep="\n")
    for kind, why in tally.first_bad.items():
        print(f"first bad {kind}: {why}")
    if not gate_ok:
        print(f"gate said: {gate_out.strip()[-600:]}")
    if not report_ok:
        print(f"report said: {report_out.strip()[-600:]}")
    return not bad and not problems and gate_ok and report_ok and all(rss_ok)


def over(ok: bool) -> str:
    return "" if ok else " (OVER)"


def _listed(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--requests", type=count, default=20_000, help="requests [20000]")
    options.add_argument("--concurrency", type=count, default=16, help="clients at once [16]")
    options.add_argument("--seed", type=int, default=1, help="of the traffic mix [1]")
    options.add_argument("--keep", metavar="DIR", help="leave the store and the logs in DIR")
    options.add_argument("--serve", nargs=2, metavar=("PORT", "SIDE"), help=argparse.SUPPRESS)
    args = options.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1])
        return
    with contextlib.ExitStack() as stack:
        work = Path(args.keep or stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        work.mkdir(parents=True, exist_ok=True)
        held = soak(args, work)
        if not held:
            tail = (work / "proxy.log").read_text(errors="replace").splitlines()[-15:]
            print("--- last lines of the proxy's log ---", *tail, sep="\n", file=sys.stderr)
    sys.exit(0 if held else 1)


if __name__ == "__main__":
    main()
