"""The verdict at scale: gate, report and /verdict on runs of 100 k, 1 M and 10 M exchanges.

Run: `.venv/bin/python bench/verdict_scale.py [--sizes 100000,1000000,10000000]
[--backends sqlite,postgresql] [--postgres URL]` (loopback only; it stops by itself). Without
`--postgres` it starts a throwaway cluster with `.ci/postgres` (installing Debian's package if
none is found).

Each run is written through the store's real write path: synthetic exchanges (five routes,
small JSON bodies, a secondary, lognormal latencies, about 0.5 % of one route divergent, a
noisy header on another) go through the recorder, which routes, compares, redacts, keeps
examples and writes them in transactions of its size, as a worker's store thread does. The
run grows from one size to the next; at each size the bench measures, each as a separate
process: `shadowdiff gate` and `shadowdiff report --format html` (wall time and peak RSS
from wait4), and `/verdict` of a real `shadowdiff proxy` on the store while a second process
keeps writing the same run at 1,000 exchanges/s (latency p50/p99 over 100 requests, and the
worker's peak RSS), and the store's bytes on disk per exchange. It prints one table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from live_overhead import BIN, HOST, children, free_port, wait_port  # noqa: E402

from shadowdiff.config import Config, load_config  # noqa: E402
from shadowdiff.model import Exchange, Outcome, RequestSnapshot  # noqa: E402
from shadowdiff.store import open_store  # noqa: E402
from shadowdiff.worker.recorder import CHUNK, Recorder  # noqa: E402

RUN = "scale"
ROUTES = ("/users/{}", "/orders/{}", "/search?q={}", "/items/{}/reviews", "/health")
JSON = [(b"Content-Type", b"application/json")]
VERDICTS = 100
"""/verdict requests per size."""
WRITE_RATE = 1000
"""Exchanges per second the concurrent writer adds while /verdict is measured."""


def config(store: str) -> Config:
    return load_config(
        None,
        {
            "run": RUN,
            "primary": "http://127.0.0.1:9",
            "shadow": "http://127.0.0.1:9",
            "secondary": "http://127.0.0.1:9",
            "store": store,
            "judge.min_pairs": 50,
        },
    )


def exchange(i: int, rng: random.Random, start: float) -> Exchange:
    """Exchange number i of the synthetic traffic (100 a second from `start`)."""
    template = ROUTES[i % len(ROUTES)]
    path = template.format(i % 997)
    body = b'{"id":%d,"name":"user %d","plan":"free"}' % (i % 997, i % 997)
    shadow_body = body
    if template == "/orders/{}" and rng.random() < 0.005:
        shadow_body = body.replace(b"free", b"paid")  # a real divergence, rare

    def side(data: bytes, latency: float) -> Outcome:
        """One side's answer; /users names the node that served it, one of three per side."""
        node = [(b"X-Served-By", b"node-%d" % rng.randrange(3))] if template == "/users/{}" else []
        return Outcome(200, JSON + node, data, latency)

    base = 0.004 * rng.lognormvariate(0, 0.3)
    return Exchange(
        RequestSnapshot(f"f{i}", "GET", path, [(b"Accept", b"*/*")], b"", start + i / 100),
        primary=side(body, base * rng.lognormvariate(0, 0.1)),
        shadow=side(shadow_body, base * rng.lognormvariate(0, 0.1)),
        secondary=side(body, base * rng.lognormvariate(0, 0.1)),
        route="",
    )


def write(store_target: str, first: int, last: int, rate: float | None = None) -> float:
    """Writes exchanges first..last-1 through a recorder; at most `rate` a second if given.
    Returns the exchanges written per second."""
    cfg = config(store_target)
    rng = random.Random(first)
    started = time.monotonic()
    with open_store(store_target) as store:
        recorder = Recorder(cfg, f"bench:{os.getpid()}", store)
        step = CHUNK if rate is None else max(1, int(rate // 10))
        for at in range(first, last, step):
            batch = [exchange(i, rng, 1.8e9) for i in range(at, min(last, at + step))]
            total = min(last, at + step)
            recorder.record(batch, {"tap": {"seen": total - first, "sampled": total - first}})
            if rate is not None:
                time.sleep(max(0.0, started + (total - first) / rate - time.monotonic()))
    return (last - first) / (time.monotonic() - started)


def exchanges_in(store_target: str) -> int:
    """The exchanges the run holds, by its aggregates."""
    with open_store(store_target, create=False) as store:
        return sum(route["exchanges"] for route in store.routes(RUN).values())


def timed(args: list[str]) -> tuple[float, float]:
    """Runs a command; its wall time in seconds and peak RSS in MB (from wait4)."""
    started = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) not in (0, 1, 3):
        raise RuntimeError(
            f"{args[2:4]} failed: {proc.stderr.read().decode() if proc.stderr else ''}"
        )
    return took, usage.ru_maxrss / 1024


def peak_rss(pid: int) -> float:
    """A live process's peak RSS in MB (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def verdicts(store_target: str, first: int, tmp: Path) -> tuple[float, float, float, float]:
    """/verdict of a real proxy on the store while another process writes the run at
    WRITE_RATE: the first answer (a judgement of the whole run, nothing cached yet), p50 and
    p99 of all in ms (the later ones served while the next judgement runs: at most FRESH plus
    a judgement old), and the worker's peak RSS in MB."""
    port, control = free_port(), free_port()
    proxy = subprocess.Popen(
        [
            str(BIN / "shadowdiff"),
            "proxy",
            f"--listen={HOST}:{port}",
            f"--control={HOST}:{control}",
            "--primary=http://127.0.0.1:9",
            "--shadow=http://127.0.0.1:9",
            "--secondary=http://127.0.0.1:9",
            f"--store={store_target}",
            f"--run={RUN}",
        ],
        stdout=(tmp / "proxy.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    writer = None
    try:
        wait_port(control, proxy, timeout=60)
        seconds = 60
        writer = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--write-only",
                store_target,
                str(first),
                str(first + WRITE_RATE * seconds),
            ],
            start_new_session=True,
        )
        time.sleep(2)  # the writer is under way
        took: list[float] = []
        for _ in range(VERDICTS):
            sent = time.monotonic()
            with urllib.request.urlopen(f"http://{HOST}:{control}/verdict", timeout=30) as r:
                r.read()  # a 4xx or 5xx raises: the bench fails rather than time it
            took.append(time.monotonic() - sent)
            time.sleep(0.2)
        rss = max((peak_rss(pid) for pid in children(proxy.pid)), default=0.0)
    finally:
        if writer is not None:
            writer.send_signal(signal.SIGTERM)
            writer.wait()
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(timeout=120)
    uncached = took[0]
    took.sort()
    p50, p99 = statistics.median(took), took[int(0.99 * (len(took) - 1))]
    return 1000 * uncached, 1000 * p50, 1000 * p99, rss


def on_disk(store_target: str) -> int:
    """The store's bytes: the SQLite file and its WAL, or the PostgreSQL schema's relations."""
    if not store_target.startswith("postgresql://"):
        return sum(
            p.stat().st_size for p in Path(store_target).parent.glob(Path(store_target).name + "*")
        )
    import psycopg

    with psycopg.connect(store_target) as conn:
        row = conn.execute(
            "SELECT SUM(pg_total_relation_size(c.oid)) FROM pg_class AS c"
            " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND c.relkind = 'r'"
        ).fetchone()
    return int(row[0] or 0) if row else 0


@contextlib.contextmanager
def postgres(given: str | None, tmp: Path) -> Iterator[str]:
    if given:
        yield given
        return
    data = tmp / "pg"
    url = subprocess.run(
        ["bash", str(ROOT / ".ci/postgres"), "start", str(data), str(free_port())],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    try:
        yield url
    finally:
        subprocess.run(["bash", str(ROOT / ".ci/postgres"), "stop", str(data)], check=False)


def bench(backend: str, target: str, sizes: list[int], tmp: Path) -> list[str]:
    rows, written = [], 0
    for size in sizes:
        rate = write(target, written, size)
        written = size
        judged = exchanges_in(target)
        gate = timed([str(BIN / "shadowdiff"), "gate", f"--store={target}", f"--run={RUN}"])
        html = tmp / "report.html"
        report = timed(
            [
                str(BIN / "shadowdiff"),
                "report",
                f"--store={target}",
                f"--run={RUN}",
                "--format=html",
                f"--output={html}",
            ]
        )
        uncached, p50, p99, rss = verdicts(target, written, tmp)
        written += WRITE_RATE * 60  # about what the concurrent writer added, at most
        per = on_disk(target) / exchanges_in(target)
        rows.append(
            f"| {backend} | {judged:,} | {rate:,.0f} | {gate[0]:.2f} s | {gate[1]:.0f} MB"
            f" | {report[0]:.2f} s | {report[1]:.0f} MB | {uncached:.0f} ms | {p50:.0f} ms"
            f" | {p99:.0f} ms"
            f" | {rss:.0f} MB | {per:.0f} B |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,1000000,10000000")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--postgres", help="a PostgreSQL URL to use [a throwaway cluster]")
    parser.add_argument(
        "--write-only", nargs=3, metavar=("STORE", "FIRST", "LAST"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.write_only:
        target, first, last = args.write_only
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        write(target, int(first), int(last), rate=WRITE_RATE)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    header = (
        "| store | exchanges | write /s | gate | gate RSS | HTML report | report RSS"
        " | first /verdict | /verdict p50 | /verdict p99 | worker RSS | disk per exchange |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    print(header, flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="verdict-scale-") as name:
        tmp = Path(name)
        os.chmod(tmp, 0o755)  # a cluster run as postgres reaches its directory
        for backend in args.backends.split(","):
            if backend == "sqlite":
                rows += bench(backend, str(tmp / "scale.db"), sizes, tmp)
            else:
                with postgres(args.postgres, tmp) as url:
                    rows += bench(backend, url, sizes, tmp)
    print("\n" + header + "\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
