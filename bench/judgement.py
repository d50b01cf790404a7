"""Does the verdict tell the truth? A/A runs and a 20 % slowdown, judged by `shadowdiff gate`.

Run: `.venv/bin/python bench/judgement.py [--repetitions 20] [--requests 600] [--busy]`
(about 10 s per run on 2 cores: the default 4 scenarios x 20 take some 15 minutes; loopback
only; it stops by itself).

Real aiohttp services (one process each, the same code: primary, shadow, secondary, and a
shadow 20 % slower on one route of five) on CPU 1, the real `shadowdiff proxy` on CPU 0 (its
worker moved to CPU 1), clients on CPU 1, as `live_overhead.py` places them. A service's
answer time depends mostly on the request (the same on every side, as a heavy query is heavy
everywhere) and a little on chance. Each repetition runs every scenario once, in a rotating
order, with a fresh proxy and store, sends `--requests` GETs over the five routes at 100 %
sampling and reads the verdict document (`gate --json`). `--busy` adds a CPU burner on the
services' core during each run (it ends by itself after `BURN_LIMIT`); that is the worker's
core too unless `--worker-with-proxy`: a worker starved of CPU reads both copies of a pair in
the same turn of its loop, which the kernel's stamps on its sockets (`shadowdiff.stamps`) keep
out of their times; the services, starved too, answer later by turns, which is latency.

Scenarios (`--scenarios`, comma-separated): `aa-secondary`, `aa-primary`, `aa-proxy` (A/A:
the shadow runs the primary's code, with a secondary, without one and `latency.reference`
primary, or proxy), `slow-secondary`, `slow-primary`, `slow-proxy` (the shadow is 20 %
slower on /orders). Targets (issue 16): A/A with a secondary PASS in >= 19/20 runs and FAIL
in none; A/A without one, the latency CI contains 1.0 for >= 95 % of route-runs; slowdown,
FAIL on the slowed route in >= 18/20 runs and on no other route.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
# the foundation benchmark's helpers: ports, CPUs, processes in their own session, pinning
from live_overhead import (  # noqa: E402
    BIN,
    HOST,
    LOAD_CPU,
    PROXY_CPU,
    count,
    free_port,
    pin_proxy,
    running,
    wait_port,
)

RUN = "judgement"
ROUTES = {"users": 0.010, "orders": 0.040, "search": 0.015, "items": 0.002, "carts": 0.030}
"""Seconds a route takes for a typical request; on `items` what the client spends around a
request is a large share of its time."""
SLOW_ROUTE, SLOWDOWN = "orders", 1.20
SPREAD = 0.5
"""How much the request alone changes its time: from (1 - SPREAD) to (1 + SPREAD) times the
route's, the same on every side."""
CHANCE = 0.05
"""Sigma of the lognormal factor drawn for each answer on its own (the noise between sides)."""
BURN_LIMIT = 600.0
"""Seconds after which a burner stops even if nobody stops it."""
SCENARIOS = {
    # name: (shadow, secondary, latency.reference or None for the default)
    "aa-secondary": ("same", True, None),
    "aa-primary": ("same", False, "primary"),
    "aa-proxy": ("same", False, "proxy"),
    "slow-secondary": ("slow", True, None),
    "slow-primary": ("slow", False, "primary"),
    "slow-proxy": ("slow", False, "proxy"),
}
DEFAULT_SCENARIOS = "aa-secondary,aa-primary,slow-secondary,slow-primary"


# ---------------------------------------------------------------------------- the services


def weight(key: str) -> float:
    """The request's own share of its route's time, from its key: the same on every side."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big")
    return 1 - SPREAD + 2 * SPREAD * digest / 2**32


def serve(port: int, slow: bool) -> None:
    """Runs one service until killed; `slow`: SLOWDOWN times slower on SLOW_ROUTE.

    A request's time is spent in a thread (`time.sleep`, the kernel's fine timer), not in
    `asyncio.sleep`: asyncio's timers wake on epoll's whole milliseconds unless something
    else wakes the loop first, so a service woken more often by other traffic ends its waits
    sooner. The primary, which serves the live requests too, answered the 2 ms route 1-3 %
    faster than an identical shadow that way: a property of this model's timers, which a
    service whose time is work or I/O does not have. (In threads the primary's extra load
    shows the other way, which `latency.stagger` spreads out: see the README.)"""
    from concurrent.futures import ThreadPoolExecutor

    from aiohttp import web

    rng = random.Random()

    def route(name: str, base: float) -> web.RequestHandler:
        factor = SLOWDOWN if slow and name == SLOW_ROUTE else 1.0

        async def handle(request: web.Request) -> web.Response:
            key = request.path_qs
            took = base * factor * weight(key) * rng.lognormvariate(0, CHANCE)
            await asyncio.get_running_loop().run_in_executor(None, time.sleep, took)
            return web.json_response({"route": name, "key": key, "items": list(range(20))})

        return handle

    async def threads(app: web.Application) -> None:  # enough that no request waits for one
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(128))

    app = web.Application()
    app.on_startup.append(threads)
    for name, base in ROUTES.items():
        path = "/search" if name == "search" else f"/{name}/{{id}}"
        app.router.add_get(path, route(name, base))
    web.run_app(app, host=HOST, port=port, access_log=None, print=None)


def burn(limit: float) -> None:
    """Spins one CPU until killed, or for `limit` seconds at most."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        pass


def me(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


# ---------------------------------------------------------------------------- one run


def paths(count: int, seed: int) -> list[str]:
    """`count` GETs over the five routes, in a shuffled order, ids drawn from a few hundred."""
    rng = random.Random(seed)
    names = list(ROUTES)
    out = []
    for i in range(count):
        name = names[i % len(names)]
        ident = rng.randrange(500)
        out.append(f"/search?q=w{ident}" if name == "search" else f"/{name}/{ident}")
    rng.shuffle(out)
    return out


async def drive(port: int, shots: list[str], concurrency: int) -> int:
    """Sends every request through the proxy, `concurrency` at a time; the failures."""
    queue = list(reversed(shots))
    failures = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal failures
        while queue:
            path = queue.pop()
            try:
                async with session.get(f"http://{HOST}:{port}{path}") as response:
                    await response.read()
                    failures += response.status != 200
            except aiohttp.ClientError:
                failures += 1

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return failures


@dataclass
class Outcome:
    """One run's verdict, as the gate gave it."""

    verdict: str
    latency: dict[str, tuple[str, float | None, tuple[float, float] | None]]
    """Route → (result, ratio, CI) of its latency check."""
    failures: int
    references: dict[str, int] = field(default_factory=dict)


def gate(store: Path) -> dict[str, object]:
    done = subprocess.run(
        [str(BIN / "shadowdiff"), "gate", f"--store={store}", f"--run={RUN}", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode not in (0, 1, 3):
        raise RuntimeError(f"gate exited with {done.returncode}: {done.stderr.strip()[-600:]}")
    doc: dict[str, object] = json.loads(done.stdout)
    return doc


def references(store: Path) -> dict[str, int]:
    """What timed the baseline, as the workers counted it (`latency_reference.*`)."""
    from shadowdiff.counts import by_reason
    from shadowdiff.store import SQLiteStore

    with SQLiteStore(store, create=False) as s:
        return by_reason(s.counts(RUN), "latency_reference")


def one_run(
    scenario: str, ports: dict[str, int], tmp: Path, args: argparse.Namespace, seed: int
) -> Outcome:
    shadow, secondary, reference = SCENARIOS[scenario]
    store = tmp / f"{scenario}-{seed}.db"
    port = free_port()
    flags = [
        *(str(BIN / "shadowdiff"), "proxy", f"--primary=http://{HOST}:{ports['primary']}"),
        f"--shadow=http://{HOST}:{ports[shadow]}",
        *(f"--listen={HOST}:{port}", "--sample=1", f"--store={store}", f"--run={RUN}"),
        "--control=off",
    ]
    if secondary:
        flags.append(f"--secondary=http://{HOST}:{ports['secondary']}")
    if reference:
        config = tmp / f"{reference}.yaml"
        config.write_text(f"latency:\n  reference: {reference}\n")
        flags.append(f"--config={config}")
    shots = paths(args.requests, seed)
    with running(flags, PROXY_CPU, tmp / "proxy.log") as proxy:
        wait_port(port, proxy)
        if not args.worker_with_proxy:
            pin_proxy(proxy.pid, expect_worker=True)
        if args.busy:
            with running(me("--burn", str(BURN_LIMIT)), LOAD_CPU, tmp / "burn.log"):
                failures = asyncio.run(drive(port, shots, args.concurrency))
        else:
            failures = asyncio.run(drive(port, shots, args.concurrency))
    doc = gate(store)
    latency = {
        str(c["route"]): (
            str(c["result"]),
            c["value"],
            tuple(c["ci"]) if c["ci"] else None,
        )
        for c in doc["checks"]  # type: ignore[attr-defined]
        if c["id"] == "latency" and c["route"] != "*"
    }
    return Outcome(str(doc["verdict"]), latency, failures, references(store))


# ---------------------------------------------------------------------------- the table


def is_slowed(route: str) -> bool:
    return route.startswith(f"GET /{SLOW_ROUTE}/")


def contains_one(ci: tuple[float, float] | None) -> bool:
    return ci is not None and ci[0] <= 1.0 <= ci[1]


def _median(ratios: list[float]) -> str:
    """A median ratio, or "-" when no run had one (every one untimed or failed)."""
    return f"{statistics.median(ratios):.3f}x" if ratios else "-"


def summary(scenario: str, runs: list[Outcome]) -> tuple[str, ...]:
    """The table's row for a scenario, its target and whether it was met. The routes the
    shadow did not change are all five in an A/A run, the four but SLOW_ROUTE otherwise."""
    n, aa = len(runs), scenario.startswith("aa-")
    verdicts = Counter(r.verdict for r in runs)
    route_runs = [(route, check) for r in runs for route, check in r.latency.items()]
    slowed = [c for route, c in route_runs if is_slowed(route)]
    unchanged = [c for route, c in route_runs if aa or not is_slowed(route)]
    with_one = sum(contains_one(ci) for _, _, ci in unchanged)
    slowed_fail = sum(result == "FAIL" for result, _, _ in slowed)
    others_fail = sum(result == "FAIL" for result, _, _ in unchanged)
    ratios = [ratio for _, ratio, _ in unchanged if ratio is not None]
    slowed_ratios = [ratio for _, ratio, _ in slowed if ratio is not None]
    if scenario == "aa-secondary":
        target = f"PASS >= {0.95 * n:.0f}/{n}, FAIL 0"
        met = verdicts["PASS"] >= 0.95 * n and not verdicts["FAIL"]
    elif aa:
        target = "CI contains 1.0 in >= 95 % of route-runs"
        met = with_one >= 0.95 * len(unchanged)
    else:
        target = f"{SLOW_ROUTE} FAIL >= {0.9 * n:.0f}/{n}, others FAIL 0"
        met = slowed_fail >= 0.9 * n and not others_fail
    clocks = Counter(name for r in runs for name, v in r.references.items() if v)
    return (
        scenario,
        str(n),
        f"{verdicts['PASS']}/{verdicts['FAIL']}/{verdicts['INCONCLUSIVE']}",
        f"{with_one}/{len(unchanged)}",
        _median(ratios),
        f"{others_fail}/{len(unchanged)}",
        "-" if aa else f"{slowed_fail}/{len(slowed)} ({_median(slowed_ratios)})",
        ",".join(sorted(clocks)) or "-",
        str(sum(r.failures for r in runs)),
        target,
        "met" if met else "NOT MET",
    )


HEADER = (
    "scenario",
    "runs",
    "PASS/FAIL/INC",
    "unchanged routes: CI contains 1.0",
    "median ratio",
    "FAIL",
    f"/{SLOW_ROUTE} FAIL (median ratio)",
    "baseline clock",
    "live errors",
    "target",
    "",
)


def print_table(rows: list[tuple[str, ...]]) -> None:
    print("\n| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def run_line(n: int, scenario: str, r: Outcome) -> str:
    checks = " ".join(
        f"{route.split()[-1].split('/')[1]}:{res[0]}"
        + (f"{ratio:.3f}[{ci[0]:.3f},{ci[1]:.3f}]" if ratio is not None and ci else "")
        for route, (res, ratio, ci) in sorted(r.latency.items())
    )
    return f"{n:>3} {scenario:<15} {r.verdict:<12} {checks}"


# ---------------------------------------------------------------------------- main


def bench(args: argparse.Namespace, tmp: Path) -> bool:
    scenarios = args.scenarios
    sides = {"primary": False, "same": False, "secondary": False, "slow": True}
    needed = {"primary"} | {SCENARIOS[s][0] for s in scenarios}
    if any(SCENARIOS[s][1] for s in scenarios):
        needed.add("secondary")
    ports = {name: free_port() for name in needed}
    results: dict[str, list[Outcome]] = {s: [] for s in scenarios}
    with contextlib.ExitStack() as stack:
        for name in sorted(needed):
            serve_args = me("--serve", str(ports[name]), *(["--slow"] if sides[name] else []))
            proc = stack.enter_context(running(serve_args, LOAD_CPU, tmp / f"{name}.log"))
            wait_port(ports[name], proc)
        print(
            f"{args.repetitions} repetitions x {len(scenarios)} scenarios, {args.requests} GETs"
            f" at concurrency {args.concurrency}, 100 % sampling; proxy on CPU {PROXY_CPU}"
            + (" with the worker" if args.worker_with_proxy else "")
            + f"; services, clients{'' if args.worker_with_proxy else ', worker'} on CPU {LOAD_CPU}"
            + (", a CPU burner there too" if args.busy else "")
            + f"; started {time.strftime('%Y-%m-%d %H:%M:%S')}\n",
            flush=True,
        )
        for n in range(1, args.repetitions + 1):
            turn = (n - 1) % len(scenarios)
            for scenario in scenarios[turn:] + scenarios[:turn]:
                outcome = one_run(scenario, ports, tmp, args, seed=n)
                results[scenario].append(outcome)
                print(run_line(n, scenario, outcome), flush=True)
    rows = [summary(s, results[s]) for s in scenarios]
    print_table(rows)
    print(f"\nfinished {time.strftime('%Y-%m-%d %H:%M:%S')}")
    return all(row[-1] == "met" for row in rows)


def scenario_list(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {', '.join(unknown) or '(none)'}; choose from {', '.join(SCENARIOS)}"
        )
    return names


def on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repetitions", type=count, default=20, help="runs per scenario [20]")
    p.add_argument("--requests", type=count, default=600, help="GETs per run [600]")
    p.add_argument("--concurrency", type=count, default=8, help="clients at once [8]")
    p.add_argument(
        "--scenarios",
        type=scenario_list,
        default=scenario_list(DEFAULT_SCENARIOS),
        help=f"comma-separated, of {', '.join(SCENARIOS)} [{DEFAULT_SCENARIOS}]",
    )
    p.add_argument("--busy", action="store_true", help="a CPU burner on the services' core")
    p.add_argument(
        "--worker-with-proxy",
        action="store_true",
        help=f"leave the worker on CPU {PROXY_CPU} with the proxy (not with the services)",
    )
    p.add_argument("--keep", metavar="DIR", help="leave the stores and the logs in DIR")
    p.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--slow", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--burn", type=float, metavar="SECONDS", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve is not None:
        serve(args.serve, args.slow)
        return
    if args.burn is not None:
        burn(args.burn)
        return
    signal.signal(signal.SIGTERM, on_sigterm)
    os.sched_setaffinity(0, {int(LOAD_CPU)})  # the clients, where wrk runs in live_overhead
    with contextlib.ExitStack() as stack:
        work = Path(args.keep or stack.enter_context(tempfile.TemporaryDirectory(prefix="judge-")))
        work.mkdir(parents=True, exist_ok=True)
        try:
            held = bench(args, work)
        except KeyboardInterrupt:
            print("\ninterrupted; subprocesses stopped")
            sys.exit(130)
    sys.exit(0 if held else 1)


if __name__ == "__main__":
    main()
