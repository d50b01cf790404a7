"""Live-path overhead of shadowdiff: bare mitmdump vs `shadowdiff proxy` at 0 %, 10 %, 100 %.

Run: `.venv/bin/python bench/live_overhead.py [--rounds 5] [--duration 8] [--connections 20]`.

The proxy runs on CPU 0; wrk, the primary, the shadow and the shadowdiff worker run on CPU 1.
Configurations are interleaved round by round (the order rotates each round, so none always
runs right after another), and each round's ratios are taken against that round's bare mitmdump,
because the machine's speed drifts between rounds. Besides throughput and latency it reports the
proxy process's own CPU time per request, the most direct measure of what the tap adds to the
live path and the least sensitive to noise from the other CPU.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
PROXY_CPU, LOAD_CPU = "0", "1"
CONFIGS = {"A": None, "B": "0", "C": "0.1", "D": "1"}
LABELS = {"A": "bare mitmdump", "B": "sample 0", "C": "sample 0.1", "D": "sample 1"}
BODY = {
    "id": 1,
    "name": "user 1",
    "email": "user1@example.com",
    "plan": "free",
    "roles": ["reader", "writer"],
    "created": "2024-01-01T00:00:00Z",
    "settings": {"theme": "dark", "locale": "en-GB", "tz": "Europe/London"},
    "bio": "x" * 80,
}
UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
Row = tuple[str, float, float, float, float, float, float, float]
"""config, req/s, p50, p99, proxy CPU us/req, and the per-round ratios thr/A, p99/A, cpu/A."""
ROUND_HEADER = (
    f"{'round':>5} {'config':<14} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'cpu us':>7} "
    f"{'thr/A':>6} {'p99/A':>6} {'cpu/A':>6} {'errors':>6} {'sampled':>8} {'recorded':>8} "
    f"{'dropped':>8}"
)


@dataclass
class Result:
    """One measured run of one configuration."""

    config: str
    rps: float
    p50: float
    p99: float
    cpu_us: float
    errors: int
    counts: dict[str, int] | None


def serve(port: int) -> None:
    """Runs the small aiohttp service (primary or shadow) until killed."""
    from aiohttp import web

    payload = web.json_response(BODY).body

    async def user(request: web.Request) -> web.Response:
        return web.Response(body=payload, content_type="application/json")

    app = web.Application()
    app.router.add_get("/users/{id}", user)
    web.run_app(app, host=HOST, port=port, access_log=None, print=None)


def serve_args(port: int) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--serve", str(port)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Returns once `port` accepts connections; raises if `proc` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with status {proc.returncode}")
        with suppress(OSError), socket.create_connection((HOST, port), timeout=1.0):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout:.0f}s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL the process group (it leads its own)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"warning: pid {proc.pid} ignored SIGTERM for {timeout:.0f}s; killing it")
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@contextmanager
def running(args: list[str], cpu: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess pinned to `cpu`, in its own session, stopped on leaving the block."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            ["taskset", "-c", cpu, *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        stop(proc)


def children(pid: int) -> list[int]:
    """Every descendant process of `pid`, read from /proc."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with suppress(OSError):
            for child in map(int, task.read_text().split()):
                found += [child, *children(child)]
    return found


def pin(pid: int, cpu: str) -> None:
    subprocess.run(["taskset", "-a", "-cp", cpu, str(pid)], check=True, stdout=subprocess.DEVNULL)


def pin_proxy(pid: int, expect_worker: bool, timeout: float = 10.0) -> None:
    """Moves the proxy's children (the worker) to the load CPU and the proxy itself to CPU 0."""
    deadline = time.monotonic() + timeout
    kids = children(pid)
    while expect_worker and not kids and time.monotonic() < deadline:
        time.sleep(0.1)
        kids = children(pid)
    if expect_worker and not kids:
        raise RuntimeError(f"proxy {pid} started no worker within {timeout:.0f}s")
    for kid in kids:
        pin(kid, LOAD_CPU)
    pin(pid, PROXY_CPU)


def parse_wrk(output: str) -> tuple[float, float, float, int]:
    """Requests/s, p50 ms, p99 ms and error count (socket errors + non-2xx/3xx) from wrk."""

    def latency(pct: str) -> float:
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if m is None:
            raise RuntimeError(f"no {pct}% latency in wrk output:\n{output}")
        return float(m[1]) * UNITS_MS[m[2]]

    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    if rps is None:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{output}")
    socket_errors = re.search(r"Socket errors:(.*)$", output, re.M)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = sum(map(int, re.findall(r"\d+", socket_errors[1]))) if socket_errors else 0
    errors += int(non_2xx[1]) if non_2xx else 0
    return float(rps[1]), latency("50"), latency("99"), errors


def wrk(port: int, duration: int, connections: int) -> str:
    args = [
        *("taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{duration}s"),
        *("--latency", f"http://{HOST}:{port}/users/1"),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=duration + 60, check=True)
    return done.stdout


def proxy_args(sample: str | None, port: int, ports: dict[str, int], store: Path) -> list[str]:
    primary = f"http://{HOST}:{ports['primary']}"
    if sample is None:
        return [str(BIN / "mitmdump"), "-q", "--mode", f"reverse:{primary}@{port}"]
    return [
        *(str(BIN / "shadowdiff"), "proxy", "--primary", primary),
        *("--shadow", f"http://{HOST}:{ports['shadow']}", "--listen", f"{HOST}:{port}"),
        *("--sample", sample, "--store", str(store), "--run", "bench"),
    ]


def read_counts(store: Path) -> dict[str, int]:
    from shadowdiff.store import SQLiteStore

    with SQLiteStore(store, create=False) as s:
        return s.counts("bench")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(config: str, ports: dict[str, int], tmp: Path, args: argparse.Namespace) -> Result:
    """One fresh proxy for `config`: warm up 1 s, measure, stop it, read the store."""
    sample, port = CONFIGS[config], free_port()
    store = tmp / f"run-{config}-{time.monotonic_ns()}.db"
    with running(proxy_args(sample, port, ports, store), PROXY_CPU, tmp / "proxy.log") as proc:
        wait_port(port, proc)
        pin_proxy(proc.pid, expect_worker=sample is not None)
        wrk(port, 1, args.connections)
        before = cpu_seconds(proc.pid)
        rps, p50, p99, errors = parse_wrk(wrk(port, args.duration, args.connections))
        cpu_us = (cpu_seconds(proc.pid) - before) / (rps * args.duration) * 1e6
    if proc.returncode not in (0, -signal.SIGTERM):
        print(f"warning: config {config} proxy exited with status {proc.returncode}")
    counts = read_counts(store) if sample is not None else None
    return Result(config, rps, p50, p99, cpu_us, errors, counts)


def dropped(counts: dict[str, int]) -> str:
    """Total drops, with the reasons (`dropped.<reason>` counters) when there are any."""
    reasons = {k.removeprefix("dropped."): v for k, v in counts.items() if k.startswith("dropped.")}
    detail = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()) if v)
    return f"{sum(reasons.values()):>8}" + (f" ({detail})" if detail else "")


def round_row(n: int, r: Result, bare: Result) -> str:
    c = r.counts
    books = (
        f"{c.get('sampled', 0):>8} {c.get('recorded', 0):>8} {dropped(c)}"
        if c is not None
        else f"{'-':>8} {'-':>8} {'-':>8}"
    )
    return (
        f"{n:>5} {LABELS[r.config]:<14} {r.rps:>8.1f} {r.p50:>8.2f} {r.p99:>8.2f} "
        f"{r.cpu_us:>7.0f} {r.rps / bare.rps:>6.3f} {r.p99 / bare.p99:>6.3f} "
        f"{r.cpu_us / bare.cpu_us:>6.3f} {r.errors:>6} {books}"
    )


def summarise(rounds: list[dict[str, Result]]) -> list[Row]:
    """Per config: median req/s, p50, p99, and medians of the per-round ratios vs bare."""
    rows = []
    for config in CONFIGS:
        runs = [(rnd[config], rnd["A"]) for rnd in rounds]
        rows.append(
            (
                config,
                statistics.median(r.rps for r, _ in runs),
                statistics.median(r.p50 for r, _ in runs),
                statistics.median(r.p99 for r, _ in runs),
                statistics.median(r.cpu_us for r, _ in runs),
                statistics.median(r.rps / a.rps for r, a in runs),
                statistics.median(r.p99 / a.p99 for r, a in runs),
                statistics.median(r.cpu_us / a.cpu_us for r, a in runs),
            )
        )
    return rows


def print_summary(rows: list[Row]) -> None:
    print(
        f"\n{'config':<14} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'cpu us':>7} "
        f"{'thr/A':>6} {'p99/A':>6} {'cpu/A':>6}"
    )
    for config, rps, p50, p99, cpu, thr, tail, cpu_ratio in rows:
        print(
            f"{LABELS[config]:<14} {rps:>8.1f} {p50:>8.2f} {p99:>8.2f} {cpu:>7.0f} "
            f"{thr:>6.3f} {tail:>6.3f} {cpu_ratio:>6.3f}"
        )


def print_targets(rows: list[Row]) -> None:
    ratios = {config: (thr, tail) for config, *_, thr, tail, _cpu in rows}
    checks = [
        ("10 % sampling: throughput ratio >= 0.95", ratios["C"][0] >= 0.95, ratios["C"][0]),
        ("10 % sampling: p99 ratio <= 1.10", ratios["C"][1] <= 1.10, ratios["C"][1]),
        ("100 % sampling: throughput ratio >= 0.80", ratios["D"][0] >= 0.80, ratios["D"][0]),
    ]
    print("\nTargets (medians of per-round ratios vs bare mitmdump):")
    for text, met, value in checks:
        print(f"  {text:<42} {value:.3f}  {'met' if met else 'NOT MET'}")


def print_markdown(rows: list[Row]) -> None:
    print(
        "\n| configuration | req/s | p50 ms | p99 ms | proxy CPU µs/req "
        "| throughput vs bare | p99 vs bare | proxy CPU vs bare |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for config, rps, p50, p99, cpu, thr, tail, cpu_ratio in rows:
        print(
            f"| {LABELS[config]} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {cpu:.0f} "
            f"| {thr:.2f} | {tail:.2f} | {cpu_ratio:.2f} |"
        )


def bench(args: argparse.Namespace, tmp: Path) -> None:
    """Starts the services, runs every round, prints the tables."""
    ports = {"primary": free_port(), "shadow": free_port()}
    with (
        running(serve_args(ports["primary"]), LOAD_CPU, tmp / "primary.log") as primary,
        running(serve_args(ports["shadow"]), LOAD_CPU, tmp / "shadow.log") as shadow,
    ):
        wait_port(ports["primary"], primary)
        wait_port(ports["shadow"], shadow)
        print(
            f"{args.rounds} rounds x {len(CONFIGS)} configs, wrk -t1 -c{args.connections} "
            f"-d{args.duration}s; proxy on CPU {PROXY_CPU}, everything else on CPU {LOAD_CPU}\n"
        )
        print(ROUND_HEADER, flush=True)
        rounds: list[dict[str, Result]] = []
        configs = list(CONFIGS)
        for n in range(1, args.rounds + 1):
            turn = (n - 1) % len(configs)
            rnd = {c: measure(c, ports, tmp, args) for c in configs[turn:] + configs[:turn]}
            for config in configs:
                print(round_row(n, rnd[config], rnd["A"]), flush=True)
            rounds.append(rnd)
    rows = summarise(rounds)
    print_summary(rows)
    print_targets(rows)
    print_markdown(rows)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=8, help="rounds of A B C D [8]")
    p.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run [10]")
    p.add_argument("--connections", type=int, default=20, help="wrk connections [20]")
    p.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return p.parse_args()


def show_logs(tmp: Path, lines: int = 20) -> None:
    """Prints the tail of each subprocess log, which the temporary directory takes away."""
    for log in sorted(tmp.glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        print(f"--- last lines of {log.name} ---", *tail, sep="\n", file=sys.stderr)


def on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def count(text: str) -> int:
    """A positive integer option (argparse says why not, in one line, exit 2)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main() -> None:
    args = parse_args()
    if args.serve is not None:
        serve(args.serve)
        return
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if missing:
        tools = ", ".join(missing)
        print(
            f"error: {tools} not found; install with `apt-get install wrk util-linux`",
            file=sys.stderr,
        )
        sys.exit(2)
    signal.signal(signal.SIGTERM, on_sigterm)
    with tempfile.TemporaryDirectory(prefix="shadowdiff-bench-") as tmp:
        try:
            bench(args, Path(tmp))
        except KeyboardInterrupt:
            print("\ninterrupted; subprocesses stopped")
            sys.exit(130)
        except Exception:
            show_logs(Path(tmp))
            raise


if __name__ == "__main__":
    main()
