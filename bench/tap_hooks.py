"""What the tap's hooks cost on the proxy's event loop, per request, measured in-process.

Run: `.venv/bin/python bench/tap_hooks.py [--flows 5000]`.

The end-to-end benchmark (live_overhead.py) measures the whole proxy, which on a 2-vCPU VM
moves by ±15 % between runs for reasons of its own. This one times only our code: mitmproxy's
`request` and `response` hooks of the tap at 0 % and 100 % sampling, with the channel drained
by a real reader process on the other CPU, and sets it against mitmproxy's own cost per request
measured by bare mitmdump (about 2 ms of CPU here).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time

from mitmproxy.test import taddons, tflow, tutils

from shadowdiff.channel import Writer
from shadowdiff.config import load_config
from shadowdiff.live.tap import ShadowDiff

DRAIN = "import socket,sys\ns=socket.socket(fileno=int(sys.argv[1]))\nwhile s.recv(1<<20): pass"
BODY = b'{"id": 1, "name": "user 1", "plan": "free", "roles": ["reader"], "bio": "' + b"x" * 200


def flows(n: int) -> list[tflow.HTTPFlow]:
    out = []
    for i in range(n):
        flow = tflow.tflow()
        flow.request.path = f"/users/{i}?expand=1"
        flow.request.headers["X-User-Id"] = f"u{i}"
        out.append(flow)
    return out


def time_hooks(rate: float, n: int) -> tuple[float, float]:
    """Median µs per call of the request and response hooks over 5 batches of `n` flows."""

    async def run() -> tuple[float, float]:
        cfg = load_config(None, {"shadow": "http://127.0.0.1:9", "sampling.rate": rate})
        tap = ShadowDiff(cfg)
        ours, theirs = socket.socketpair()
        drain = subprocess.Popen(
            ["taskset", "-c", "1", sys.executable, "-c", DRAIN, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
        )
        theirs.close()
        requests, responses = [], []
        with taddons.context(tap):
            tap.writer = Writer(ours, 64 * 1024 * 1024)
            for _ in range(5):
                batch = flows(n)
                started = time.perf_counter()
                for flow in batch:
                    tap.request(flow)
                requests.append((time.perf_counter() - started) / n * 1e6)
                for flow in batch:
                    flow.response = tutils.tresp(content=BODY)
                started = time.perf_counter()
                for flow in batch:
                    tap.response(flow)
                responses.append((time.perf_counter() - started) / n * 1e6)
                await asyncio.sleep(0.2)  # let the buffer drain between batches
            tap.writer.close(timeout=5)
        drain.wait(timeout=30)
        return statistics.median(requests), statistics.median(responses)

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=5000, help="flows per batch [5000]")
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})
    print(f"tap hooks on CPU 0, channel drained by a process on CPU 1; {args.flows} flows x 5")
    print(f"\n{'sampling':<10} {'request µs':>11} {'response µs':>12} {'per request µs':>15}")
    rows = []
    for rate in (0.0, 0.1, 1.0):
        request, response = time_hooks(rate, args.flows)
        rows.append((rate, request, response, request + response))
        print(f"{rate:<10} {request:>11.1f} {response:>12.1f} {request + response:>15.1f}")
    print("\n| sampling | request hook µs | response hook µs | tap per request µs |")
    print("|---|---:|---:|---:|")
    for rate, request, response, total in rows:
        print(f"| {rate:.0%} | {request:.1f} | {response:.1f} | {total:.1f} |")


if __name__ == "__main__":
    main()
