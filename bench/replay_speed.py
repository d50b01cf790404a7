"""Offline replay throughput: recorded requests replayed to a primary and a shadow, pairs/s.

Run: `.venv/bin/python bench/replay_speed.py [--requests 10000] [--concurrency 8,32,64,128]`.

Writes a mitmproxy flow file of N GET requests over 100 client connections (built with
mitmproxy's own `Request.make`, `Response.make`, `HTTPFlow` and `FlowWriter`), starts a fast
primary and shadow (aiohttp, one process each, pinned to CPU 1; the shadow answers /search
with one changed field, so a third of the pairs get a structural diff and stored
divergences), then replays the file in this process, pinned to CPU 0, once per concurrency and
round, each into a fresh store. Per concurrency it prints the median pairs/s and, to show
whether the comparison is the bottleneck, the share of wall time the recorder (store thread:
route, compare, redact, write) was busy, the part of it spent comparing, and this process's
CPU use (near 100 %: the event loop's own work is the limit).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from live_overhead import BODY, HOST, cpu_seconds, free_port, running, wait_port
from mitmproxy import connection, http
from mitmproxy.io import FlowWriter

from shadowdiff.config import load_config
from shadowdiff.replay.flowfiles import Recording, read
from shadowdiff.replay.replay import replay
from shadowdiff.worker.recorder import Recorder

REPLAY_CPU, SERVICE_CPU = 0, "1"
CONNECTIONS = 100
PATHS = ("/users/{i}", "/orders/{i}", "/search?q=tea&page={i}")


@dataclass
class Result:
    concurrency: int
    pairs_per_s: float
    recorder_share: float
    compare_share: float
    cpu_share: float
    services_share: float
    recorded: int
    dropped: int


def serve(port: int, variant: str) -> None:
    """The primary (`same`) or the shadow (`changed`: /search has one changed field)."""
    import orjson
    from aiohttp import web

    payload = orjson.dumps(BODY)
    changed = orjson.dumps({**BODY, "plan": "pro"}) if variant == "changed" else payload

    def handler(body: bytes) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            return web.Response(body=body, content_type="application/json")

        return handle

    app = web.Application()
    app.router.add_get("/users/{id}", handler(payload))
    app.router.add_get("/orders/{id}", handler(payload))
    app.router.add_get("/search", handler(changed))
    web.run_app(app, host=HOST, port=port, access_log=None, print=None)


def write_flows(path: Path, count: int) -> None:
    """`count` recorded GETs with their responses, round-robin over CONNECTIONS clients."""
    clients = [
        connection.Client(peername=(HOST, 40000 + n), sockname=(HOST, 8080), timestamp_start=0.0)
        for n in range(CONNECTIONS)
    ]
    server = connection.Server(address=(HOST, 8000))
    body = http.Response.make(200, b"", {"Content-Type": "application/json"})
    with path.open("wb") as f:
        writer = FlowWriter(f)
        for i in range(count):
            flow = http.HTTPFlow(clients[i % CONNECTIONS], server)
            url = f"http://{HOST}:8000" + PATHS[i % len(PATHS)].format(i=i)
            flow.request = http.Request.make("GET", url, b"", {"Accept": "application/json"})
            flow.request.timestamp_start = flow.request.timestamp_end = 1000.0 + i / 1000
            flow.response = body.copy()
            flow.response.timestamp_end = flow.request.timestamp_end + 0.001
            writer.add(flow)


class Timed:
    """Adds up the wall time spent in one method of a class, across threads."""

    def __init__(self, cls: type, name: str) -> None:
        self.total = 0.0
        original = getattr(cls, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.total += time.perf_counter() - started

        setattr(cls, name, timed)


def measure(
    recording: Recording,
    urls: dict[str, str],
    services: list[int],
    concurrency: int,
    tmp: Path,
    timers: list[Timed],
) -> Result:
    store = tmp / f"c{concurrency}-{time.monotonic_ns()}.db"
    cfg = load_config(
        None,
        {**urls, "store": str(store), "run": "bench", "mirror.max_in_flight": concurrency},
    )
    sampling = cfg.sampling.model_copy(update={"rate": 1.0})
    for timer in timers:
        timer.total = 0.0
    cpu_before, services_before = os.times(), sum(map(cpu_seconds, services))
    result = asyncio.run(replay(cfg, recording, sampling, urls["primary"], concurrency))
    cpu_after, services_cpu = os.times(), sum(map(cpu_seconds, services)) - services_before
    cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    counts = result.counts
    record, compare = (t.total for t in timers)
    return Result(
        concurrency=concurrency,
        pairs_per_s=counts.get("recorded", 0) / result.elapsed,
        recorder_share=record / result.elapsed,
        compare_share=compare / result.elapsed,
        cpu_share=cpu / result.elapsed,
        services_share=services_cpu / result.elapsed,
        recorded=counts.get("recorded", 0),
        dropped=sum(v for k, v in counts.items() if k.startswith("dropped.")),
    )


def bench(args: argparse.Namespace, tmp: Path) -> None:
    flows = tmp / "flows.mitm"
    write_flows(flows, args.requests)
    started = time.perf_counter()
    recording = read([str(flows)])
    took = time.perf_counter() - started
    entries = len(recording.entries)
    print(
        f"{args.requests} recorded requests, {flows.stat().st_size / 1e6:.1f} MB; reading them "
        f"takes {took:.2f} s ({entries / took:,.0f} flows/s, not counted below)"
    )
    ports = {"primary": free_port(), "shadow": free_port()}
    urls = {name: f"http://{HOST}:{port}" for name, port in ports.items()}
    timers = [Timed(Recorder, "record"), Timed(Recorder, "compare")]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    services = []
    with ExitStack() as stack:
        for name, variant in (("primary", "same"), ("shadow", "changed")):
            command = [sys.executable, __file__, "--serve", str(ports[name]), variant]
            proc = stack.enter_context(running(command, SERVICE_CPU, tmp / f"{name}.log"))
            wait_port(ports[name], proc)
            services.append(proc.pid)
        os.sched_setaffinity(0, {REPLAY_CPU})
        print(
            f"replay on CPU {REPLAY_CPU}, primary and shadow on CPU {SERVICE_CPU}; "
            f"median of {args.rounds} rounds\n"
        )
        print(
            f"{'concurrency':>11} {'pairs/s':>8} {'recorder busy':>13} {'comparing':>9} "
            f"{'replay CPU':>10} {'services CPU':>12} {'recorded':>8} {'dropped':>7}"
        )
        rows = []
        for concurrency in concurrencies:
            runs = [
                measure(recording, urls, services, concurrency, tmp, timers)
                for _ in range(args.rounds)
            ]
            row = sorted(runs, key=lambda r: r.pairs_per_s)[len(runs) // 2]
            rows.append(row)
            print(
                f"{row.concurrency:>11} {row.pairs_per_s:>8.0f} {row.recorder_share:>13.0%} "
                f"{row.compare_share:>9.0%} {row.cpu_share:>10.0%} {row.services_share:>12.0%} "
                f"{row.recorded:>8} "
                f"{row.dropped:>7}",
                flush=True,
            )
    best = max(rows, key=lambda r: r.pairs_per_s)
    met = "met" if best.pairs_per_s >= 1000 else "NOT MET"
    print(f"\nTarget >= 1,000 pairs/s: {best.pairs_per_s:,.0f} at {best.concurrency} ({met})")
    print(
        "\n| --concurrency | pairs/s | recorder busy (share of wall) | of which comparing "
        "| replay process CPU | services CPU |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r.concurrency} | {r.pairs_per_s:,.0f} | {r.recorder_share:.0%} "
            f"| {r.compare_share:.0%} | {r.cpu_share:.0%} | {r.services_share:.0%} |"
        )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=10_000, help="recorded requests [10000]")
    p.add_argument("--concurrency", default="8,32,64,128", help="comma-separated [8,32,64,128]")
    p.add_argument("--rounds", type=int, default=3, help="runs per concurrency [3]")
    p.add_argument("--serve", nargs=2, metavar=("PORT", "VARIANT"), help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1])
        return
    with tempfile.TemporaryDirectory(prefix="shadowdiff-replay-bench-") as tmp:
        bench(args, Path(tmp))


if __name__ == "__main__":
    main()
