"""Aggregate live throughput of a fleet: nginx in front of 1 and 2 `shadowdiff proxy` processes
sharing one PostgreSQL store, and the rows per second the fleet writes into it.

Run: `.venv/bin/python bench/fleet_throughput.py [--rounds 3] [--duration 8] [--sample 1]`.

Configurations, interleaved round by round (the order rotates), all measured in one run:
  N  nginx → primary directly (the baseline: what the balancer alone costs)
  1  nginx → 1 proxy, pinned to CPU 0
  2  nginx → 2 proxies, one on CPU 0 and one on CPU 1
wrk, nginx, the primary, the shadow and the workers run on CPU 1. On this 2-core machine the
second proxy shares its core with the load, so "2" shows what one more core buys when it is
not free; on a bigger host each proxy gets its own. PostgreSQL (a throwaway cluster started by
`.ci/postgres`) runs unpinned.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from live_overhead import (  # noqa: E402  (the foundation benchmark's helpers)
    BIN,
    HOST,
    LOAD_CPU,
    PROXY_CPU,
    children,
    free_port,
    parse_wrk,
    pin,
    running,
    serve_args,
    wait_port,
    wrk,
)

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CPUS = {"N": [], "1": [PROXY_CPU], "2": [PROXY_CPU, LOAD_CPU]}
HEADER = f"{'round':>5} {'config':<20} {'req/s':>8} {'p99 ms':>8} {'errors':>7} {'rows/s':>8}"
LABELS = {"N": "nginx → primary", "1": "nginx → 1 proxy", "2": "nginx → 2 proxies"}


def nginx_args(work: Path, upstreams: list[int], port: int) -> list[str]:
    """configs/nginx.conf as shipped, pointed at `upstreams`, one worker, on `port`."""
    shipped = (ROOT / "configs" / "nginx.conf").read_text()
    conf = re.sub(r"(?m)^ +server 127\.0\.0\.1:\d+ .*\n", "", shipped)
    servers = "".join(
        f"        server {HOST}:{p} max_fails=1 fail_timeout=5s;\n" for p in upstreams
    )
    conf = conf.replace("upstream shadowdiff {\n", "upstream shadowdiff {\n" + servers)
    conf = conf.replace("listen 80;", f"listen {HOST}:{port};")
    conf = conf.replace("worker_processes auto;", "worker_processes 1;")
    path = work / "nginx.conf"
    path.write_text(conf)
    directives = f"daemon off; pid {work}/nginx.pid; error_log {work}/nginx.log;"
    return [NGINX, "-c", str(path), "-p", str(work), "-g", directives]


def proxy_args(port: int, ports: dict[str, int], store: str, run: str, sample: str) -> list[str]:
    return [
        str(BIN / "shadowdiff"),
        "proxy",
        f"--primary=http://{HOST}:{ports['primary']}",
        f"--shadow=http://{HOST}:{ports['shadow']}",
        f"--listen={HOST}:{port}",
        f"--sample={sample}",
        f"--store={store}",
        f"--run={run}",
        "--control=off",
    ]


def recorded(store: str, run: str) -> int:
    with psycopg.connect(store) as db:
        row = db.execute(
            "SELECT COALESCE(SUM(value), 0) FROM counts WHERE run = %s AND name = 'recorded'",
            (run,),
        ).fetchone()
    return int(row[0]) if row else 0


def measure(
    config: str, ports: dict[str, int], store: str, run: str, work: Path, args: argparse.Namespace
) -> tuple[float, float, int, float]:
    """req/s, p99 ms, errors, rows/s of one configuration."""
    log = work / f"{run}.log"
    with ExitStack() as stack:
        upstreams = []
        for cpu in CPUS[config]:
            port = free_port()
            proc = stack.enter_context(
                running(proxy_args(port, ports, store, run, args.sample), cpu, log)
            )
            wait_port(port, proc, timeout=60)
            for kid in children(proc.pid):
                pin(kid, LOAD_CPU)  # the workers share the load's core, as in live_overhead
            upstreams.append(port)
        port = free_port()
        balancer = stack.enter_context(
            running(nginx_args(work, upstreams or [ports["primary"]], port), LOAD_CPU, log)
        )
        wait_port(port, balancer)
        rps, _, p99, errors = parse_wrk(wrk(port, args.duration, args.connections))
    rows = recorded(store, run) / args.duration if CPUS[config] else 0.0
    return rps, p99, errors, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--sample", default="1")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shadowdiff-fleet-"))
    work.chmod(0o755)  # PostgreSQL runs as its own user (never as root) and must reach pg/
    cluster = ["bash", str(ROOT / ".ci" / "postgres")]
    started = subprocess.run(
        [*cluster, "start", str(work / "pg"), str(free_port())],
        check=True,
        capture_output=True,
        text=True,
    )
    store = started.stdout.strip().splitlines()[-1]
    results: dict[str, list[tuple[float, float, int, float]]] = {c: [] for c in CPUS}
    try:
        with ExitStack() as stack:
            ports = {}
            for name in ("primary", "shadow"):
                ports[name] = free_port()
                proc = stack.enter_context(
                    running(serve_args(ports[name]), LOAD_CPU, work / f"{name}.log")
                )
                wait_port(ports[name], proc)
            print(HEADER)
            order = list(CPUS)
            for r in range(args.rounds):
                for config in order[r % 3 :] + order[: r % 3]:
                    row = measure(config, ports, store, f"r{r}-{config}", work, args)
                    results[config].append(row)
                    rps, p99, errors, rows = row
                    print(
                        f"{r + 1:>5} {LABELS[config]:<20} {rps:>8.0f} {p99:>8.1f} {errors:>7}"
                        f" {rows:>8.0f}"
                    )
        base = statistics.median(x[0] for x in results["N"])
        print("\n| configuration | req/s | vs nginx alone | p99 ms | rows/s into PostgreSQL |")
        print("|---|---:|---:|---:|---:|")
        for config, rows in results.items():
            rps = statistics.median(x[0] for x in rows)
            p99 = statistics.median(x[1] for x in rows)
            written = statistics.median(x[3] for x in rows)
            print(
                f"| {LABELS[config]} | {rps:.0f} | {rps / base:.2f} | {p99:.1f} | "
                + (f"{written:.0f} |" if CPUS[config] else "– |")
            )
    finally:
        subprocess.run([*cluster, "stop", str(work / "pg")], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
