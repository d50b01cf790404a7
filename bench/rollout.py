"""Live-path cost of a release: the serving decision, the candidate serving, the fallback.

Each is measured against bare mitmdump and shadow-only `shadowdiff proxy`.

Run: `.venv/bin/python bench/rollout.py [--rounds 5] [--duration 8] [--connections 20]`.

Configurations, interleaved round by round (the order rotates), all measured in one run:
  A  bare `mitmdump --mode reverse:PRIMARY` (the baseline)
  B  `shadowdiff proxy`, shadow only (no release), sampling 0.1
  C  B + a release whose cohort matches nobody: the decision runs on every request, serves none
  D  B + a `percent: 5` stage, sticky on X-User (wrk sends a new key with every request)
  E  B + a `percent: 100` stage: the tap's own client asks the candidate for every request
  F  E with a candidate that answers 503 to everything: every request falls back to the primary
Pinning, rounds and ratios are `live_overhead.py`'s (its helpers are imported): the proxy on
CPU 0, wrk, the services and the worker on CPU 1; each round's ratios are taken against that
round's A and B. Every configuration, A included, runs the same wrk script (a varied X-User
header), so wrk's own cost is the same in all. Each run gets a fresh store, so no release state
carries over; every stage waits for 10^8 pairs and `on_fail: hold` keeps it serving whatever
the verdict says (a FAIL would roll back and stop what is measured).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from live_overhead import (  # noqa: E402  (the foundation benchmark's helpers)
    HOST,
    LOAD_CPU,
    PROXY_CPU,
    Result,
    count,
    cpu_seconds,
    free_port,
    on_sigterm,
    parse_wrk,
    pin_proxy,
    proxy_args,
    read_counts,
    running,
    serve_args,
    show_logs,
    wait_port,
)

FLAGS = {
    "rounds": (5, "rounds of A to F"),
    "duration": (8, "seconds per measured wrk run"),
    "connections": (20, "wrk connections"),
}
"""Option, default and help: five rounds of six 8 s runs take about six minutes."""
SAMPLE = "0.1"
NEVER = {"cohort": {"match": ["header:X-Never=1"], "min_pairs": 100_000_000}}
STAGES: dict[str, dict[str, object] | None] = {
    "A": None,
    "B": None,
    "C": NEVER,
    "D": {"percent": {"share": 5, "min_pairs": 100_000_000}},
    "E": {"percent": {"share": 100, "min_pairs": 100_000_000}},
    "F": {"percent": {"share": 100, "min_pairs": 100_000_000}},
}
LABELS = {
    "A": "bare mitmdump",
    "B": "shadow only",
    "C": "cohort, no one",
    "D": "percent 5",
    "E": "percent 100",
    "F": "100, 503 fallbk",
}
EXPECTED = {"C": "0 %", "D": "~5 %", "E": "100 %", "F": "0 %, all fall back"}
WRK_SCRIPT = """\
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, {["X-User"] = "user-" .. n})
end
"""
PROBLEM = re.compile(r"traceback|exception|\berror\b|warning", re.I)
"""Log lines worth a look (the proxy's own summary line says none of these words)."""
ROUND_HEADER = (
    f"{'round':>5} {'config':<15} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'cpu us':>6} "
    f"{'thr/A':>6} {'thr/B':>6} {'p50/B':>6} {'p99/B':>6} {'cpu/B':>6} {'errors':>6} "
    f"{'served':>7} {'fallbk':>7} {'state':<9} {'log':>3}"
)


@dataclass
class Run(Result):
    """`live_overhead.Result` (`counts`: the store's), with the release's state at the end
    of the measured run and the lines of the proxy's log that say something went wrong."""

    state: str = "-"
    problems: tuple[str, ...] = ()

    @property
    def seen(self) -> int:
        return (self.counts or {}).get("seen", 0)

    @property
    def share(self) -> float:
        """The share of the requests the candidate served, in per cent."""
        served = (self.counts or {}).get("served.candidate", 0)
        return 100.0 * served / self.seen if self.seen else 0.0

    @property
    def fallbacks(self) -> dict[str, int] | None:
        """Fallbacks to the primary by kind (`fallback.<kind>`); None: no tap counted."""
        if self.counts is None:
            return None
        return {k[9:]: v for k, v in self.counts.items() if k.startswith("fallback.")}

    @property
    def fell_back(self) -> int:
        return sum((self.fallbacks or {}).values())


def serve_failing(port: int) -> None:
    """A candidate that answers 503 to everything, so that every request falls back."""
    from aiohttp import web

    async def unavailable(request: web.Request) -> web.Response:
        return web.Response(status=503, text="unavailable\n")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", unavailable)
    web.run_app(app, host=HOST, port=port, access_log=None, print=None)


def fresh_ports(n: int, taken: set[int]) -> list[int]:
    """`n` free ports none of which is in `taken` (a freed port can come back at once)."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in taken and port not in ports:
            ports.append(port)
    return ports


def release_yaml(config: str, ports: dict[str, int]) -> str:
    """The config file of a release configuration: its one stage applies from the start."""
    release: dict[str, object] = {
        "sticky_key": "header:X-User",
        "on_fail": "hold",
        "stages": [STAGES[config]],
    }
    if config == "F":
        release["candidate"] = f"http://{HOST}:{ports['failing']}"
    return json.dumps({"release": release})  # JSON is YAML


def wrk(port: int, duration: int, connections: int, script: Path) -> str:
    """`live_overhead.wrk`, with the script that varies X-User."""
    args = [
        *("taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{duration}s"),
        *("--latency", "-s", str(script), f"http://{HOST}:{port}/users/1"),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=duration + 60, check=True)
    return done.stdout


def release_state(control: int) -> str:
    """The release's state as the control server says it at the end of the measured run."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{control}/api/release", timeout=5) as r:
            doc = json.load(r)
    except (OSError, ValueError) as e:
        return f"? ({e})"[:9]
    return str(doc.get("state", "?"))


def new_problems(log: Path, offset: int) -> tuple[str, ...]:
    """The lines of `log` past `offset` that say an error, a warning or a traceback."""
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return tuple(line for line in text.splitlines() if PROBLEM.search(line))


def measure(config: str, ports: dict[str, int], tmp: Path, args: argparse.Namespace) -> Run:
    """One fresh proxy (fresh store) for `config`: warm up 1 s, measure, stop, read the store."""
    port, control = fresh_ports(2, set(ports.values()))
    stamp = time.monotonic_ns()
    store = tmp / f"run-{config}-{stamp}.db"
    shadowdiff = config != "A"
    cmd = proxy_args(SAMPLE if shadowdiff else None, port, ports, store)
    if shadowdiff:
        cmd += ["--control", f"{HOST}:{control}"]
    if STAGES[config] is not None:
        path = tmp / f"release-{config}-{stamp}.yaml"
        path.write_text(release_yaml(config, ports))
        cmd += ["--config", str(path)]
    log = tmp / "proxy.log"
    offset = log.stat().st_size if log.exists() else 0
    script = tmp / "users.lua"
    state = "-"
    with running(cmd, PROXY_CPU, log) as proc:
        wait_port(port, proc)
        pin_proxy(proc.pid, expect_worker=shadowdiff)
        wrk(port, 1, args.connections, script)
        before = cpu_seconds(proc.pid)
        rps, p50, p99, errors = parse_wrk(wrk(port, args.duration, args.connections, script))
        cpu_us = (cpu_seconds(proc.pid) - before) / (rps * args.duration) * 1e6
        if STAGES[config] is not None:
            state = release_state(control)
    if proc.returncode not in (0, -signal.SIGTERM):
        print(f"warning: config {config} proxy exited with status {proc.returncode}")
    counts = read_counts(store) if shadowdiff else None
    return Run(config, rps, p50, p99, cpu_us, errors, counts, state, new_problems(log, offset))


def served(r: Run) -> str:
    return f"{r.share:>6.2f}%" if r.config != "A" else f"{'-':>7}"


def round_row(n: int, r: Run, a: Run, b: Run) -> str:
    fell = f"{r.fell_back:>7}" if r.fallbacks is not None else f"{'-':>7}"
    return (
        f"{n:>5} {LABELS[r.config]:<15} {r.rps:>8.1f} {r.p50:>7.2f} {r.p99:>7.2f} "
        f"{r.cpu_us:>6.0f} {r.rps / a.rps:>6.3f} {r.rps / b.rps:>6.3f} {r.p50 / b.p50:>6.3f} "
        f"{r.p99 / b.p99:>6.3f} {r.cpu_us / b.cpu_us:>6.3f} {r.errors:>6} {served(r)} {fell} "
        f"{r.state:<9} {len(r.problems):>3}"
    )


def print_summary(rounds: list[dict[str, Run]]) -> dict[str, dict[str, float]]:
    """Medians per config: req/s, p50, p99, CPU/req, and the per-round ratios and added
    latency against the same round's A and B (the machine drifts between rounds)."""
    print(
        f"\n{'config':<15} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'cpu us':>6} "
        f"{'thr/A':>6} {'thr/B':>6} {'p50/B':>6} {'p99/B':>6} {'+p50 ms':>8} {'+p99 ms':>8} "
        f"{'cpu/B':>6}"
    )
    medians: dict[str, dict[str, float]] = {}
    for config in STAGES:
        runs = [(rnd[config], rnd["A"], rnd["B"]) for rnd in rounds]
        m = {
            "rps": statistics.median([r.rps for r, _, _ in runs]),
            "p50": statistics.median([r.p50 for r, _, _ in runs]),
            "p99": statistics.median([r.p99 for r, _, _ in runs]),
            "cpu": statistics.median([r.cpu_us for r, _, _ in runs]),
            "thr/A": statistics.median([r.rps / a.rps for r, a, _ in runs]),
            "thr/B": statistics.median([r.rps / b.rps for r, _, b in runs]),
            "p50/B": statistics.median([r.p50 / b.p50 for r, _, b in runs]),
            "p99/B": statistics.median([r.p99 / b.p99 for r, _, b in runs]),
            "+p50": statistics.median([r.p50 - b.p50 for r, _, b in runs]),
            "+p99": statistics.median([r.p99 - b.p99 for r, _, b in runs]),
            "cpu/B": statistics.median([r.cpu_us / b.cpu_us for r, _, b in runs]),
        }
        medians[config] = m
        print(
            f"{LABELS[config]:<15} {m['rps']:>8.1f} {m['p50']:>7.2f} {m['p99']:>7.2f} "
            f"{m['cpu']:>6.0f} {m['thr/A']:>6.3f} {m['thr/B']:>6.3f} {m['p50/B']:>6.3f} "
            f"{m['p99/B']:>6.3f} {m['+p50']:>+8.2f} {m['+p99']:>+8.2f} {m['cpu/B']:>6.3f}"
        )
    return medians


def print_served(rounds: list[dict[str, Run]]) -> None:
    """The sanity check: what the tap counted as served by the candidate and fallen back."""
    print("\nServed by the candidate (tap counters in the store, warm-up included), per config:")
    for config in STAGES:
        if config in ("A", "B"):
            continue
        runs = [rnd[config] for rnd in rounds]
        shares = ", ".join(f"{r.share:.2f}" for r in runs)
        kinds: dict[str, int] = {}
        for r in runs:
            for kind, n in (r.fallbacks or {}).items():
                kinds[kind] = kinds.get(kind, 0) + n
        seen = sum(r.seen for r in runs)
        fell = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) or "none"
        states = ", ".join(sorted({r.state for r in runs}))
        errors = sum(r.errors for r in runs)
        print(
            f"  {LABELS[config]:<15} served % per round [{shares}] (expected {EXPECTED[config]}); "
            f"fallbacks {fell} of {seen} seen; wrk errors {errors}; release {states}"
        )


def print_targets(medians: dict[str, dict[str, float]]) -> None:
    c, f = medians["C"], medians["F"]
    met = "met" if c["thr/B"] >= 0.95 else "NOT MET"
    print("\nTargets (medians of per-round ratios):")
    print(f"  routing decision (C/B) throughput >= 0.95   {c['thr/B']:.3f}  {met}")
    print(
        f"  fallback path's added latency (F vs B)     p50 {f['+p50']:+.2f} ms "
        f"({f['p50/B']:.2f}x), p99 {f['+p99']:+.2f} ms ({f['p99/B']:.2f}x)"
    )


def print_problems(rounds: list[dict[str, Run]], shown: int = 10) -> None:
    """The distinct error and warning lines of the proxies' log, which the temporary
    directory takes away."""
    lines: dict[str, int] = {}
    for rnd in rounds:
        for r in rnd.values():
            for line in r.problems:
                lines[line] = lines.get(line, 0) + 1
    if not lines:
        print("\nNo errors or warnings in the proxies' log.")
        return
    print(f"\nErrors and warnings in the proxies' log ({len(lines)} distinct lines):")
    for line, n in list(lines.items())[:shown]:
        print(f"  {n:>4}x {line[:200]}")


def rotated(configs: list[str], n: int) -> list[str]:
    """Round `n`'s order: each round starts one further, so none always follows another."""
    turn = (n - 1) % len(configs)
    return configs[turn:] + configs[:turn]


def bench(args: argparse.Namespace, tmp: Path) -> None:
    """Starts the services, runs every round, prints the tables."""
    (tmp / "users.lua").write_text(WRK_SCRIPT)
    ports = dict(zip(("primary", "shadow", "failing"), fresh_ports(3, set()), strict=True))
    failing = [sys.executable, str(Path(__file__).resolve()), "--fail", str(ports["failing"])]
    with (
        running(serve_args(ports["primary"]), LOAD_CPU, tmp / "primary.log") as primary,
        running(serve_args(ports["shadow"]), LOAD_CPU, tmp / "shadow.log") as shadow,
        running(failing, LOAD_CPU, tmp / "failing.log") as unavailable,
    ):
        for name, proc in (("primary", primary), ("shadow", shadow), ("failing", unavailable)):
            wait_port(ports[name], proc)
        print(
            f"{args.rounds} rounds x {len(STAGES)} configs, wrk -t1 -c{args.connections} "
            f"-d{args.duration}s with a new X-User per request, sampling {SAMPLE}; "
            f"proxy on CPU {PROXY_CPU}, everything else on CPU {LOAD_CPU}\n"
        )
        print(ROUND_HEADER, flush=True)
        rounds: list[dict[str, Run]] = []
        for n in range(1, args.rounds + 1):
            rnd = {c: measure(c, ports, tmp, args) for c in rotated(list(STAGES), n)}
            print(*(round_row(n, rnd[c], rnd["A"], rnd["B"]) for c in STAGES), sep="\n", flush=True)
            rounds.append(rnd)
    print_targets(print_summary(rounds))
    print_served(rounds)
    print_problems(rounds)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, (default, text) in FLAGS.items():
        p.add_argument(f"--{name}", type=count, default=default, help=f"{text} [{default}]")
    p.add_argument("--fail", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.fail is not None:
        serve_failing(args.fail)
        return
    if not all(shutil.which(tool) for tool in ("wrk", "taskset")):
        sys.exit("error: wrk and taskset are needed; install with `apt-get install wrk util-linux`")
    signal.signal(signal.SIGTERM, on_sigterm)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="shadowdiff-rollout-") as tmp:
        try:
            bench(args, Path(tmp))
        except Exception:
            show_logs(Path(tmp))
            raise
    print(f"\ntook {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # every subprocess was stopped on the way out
        sys.exit("\ninterrupted; subprocesses stopped")
