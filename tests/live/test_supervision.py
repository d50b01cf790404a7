"""The proxy supervising its worker, with real processes: a worker killed under traffic is
noticed, started again with its control server, and the books balance with every request the
clients sent; a mitmdump script reload never holds a live request, with a hanging shadow or a
locked store, and loses nothing the old worker held; a store that takes no more writes at
shutdown is said, and the last line gives the true books."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from helpers import free_port, wait_listening

from conftest import Backend, Proxy
from shadowdiff.counts import WORKER_RESTARTS, imbalance
from shadowdiff.store import SQLiteStore

SHIM = Path(__file__).parent.parent.parent / "addons" / "shadowdiff.py"


@dataclass
class Traffic:
    """Clients in a loop through the proxy until `stop`: when each request started, what it
    took and whether the primary's own answer came back."""

    base: str
    clients: int = 4
    path: str = "/t/{i}"
    done: list[tuple[float, float, bool]] = field(default_factory=list)

    async def run(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        async def client(n: int) -> None:
            i = 0
            while not stop.is_set():
                started = time.monotonic()
                async with session.get(self.base + self.path.format(i=f"{n}-{i}")) as r:
                    ok = r.status == 200 and (await r.json())["by"] == "primary"
                self.done.append((started, time.monotonic() - started, ok))
                i += 1

        await asyncio.gather(*(client(n) for n in range(self.clients)))

    @property
    def slowest(self) -> float:
        return max(took for _, took, _ in self.done)


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


async def until(what: str, predicate, timeout: float) -> float:  # noqa: ANN001 - any callable
    """Seconds until `predicate()` holds; fails the test after `timeout`."""
    started = time.monotonic()
    while not await predicate():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout}s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
async def test_a_killed_worker_is_started_again_and_the_books_balance(
    sig, primary: Backend, shadow: Backend, start_proxy, client, tmp_path
):
    """Finding 1: the death is logged at ERROR within a second, a new worker starts with its
    control server, `/healthz` and `/metrics` count the restart, and the samples taken while
    none ran (`worker_down`) and those the dead one held (`worker_died`) are in the books,
    which balance with the requests the clients really sent."""
    config = tmp_path / "c.yaml"
    config.write_text("mirror:\n  grace: 500ms\n")
    proxy = await start_proxy(
        f"--primary={primary.url}", f"--shadow={shadow.url}", "--sample=1", config=str(config)
    )

    async def health() -> dict | None:
        try:
            async with client.get(proxy.control + "/healthz") as r:
                return await r.json()
        except aiohttp.ClientError:
            return None

    async def one_worker() -> bool:
        return len(children(proxy.process.pid)) == 1 and await health() is not None

    await until("the first worker", one_worker, 30)
    [first] = children(proxy.process.pid)
    traffic, stop = Traffic(proxy.url), asyncio.Event()
    driving = asyncio.create_task(traffic.run(client, stop))
    await asyncio.sleep(1.0)
    os.kill(first, sig)

    async def replaced() -> bool:
        return children(proxy.process.pid) not in ([], [first])

    # SIGTERM to the worker alone: it stops reading after grace + 5 s, then finishes
    took = await until("a new worker", replaced, 3 if sig == signal.SIGKILL else 10)

    async def restarted() -> bool:
        report = await health()
        return report is not None and report["worker"]["restarts"] == 1

    await until("the control server, counting the restart", restarted, 15)
    async with client.get(proxy.control + "/metrics") as r:
        assert 'shadowdiff_worker_total{event="restarts"} 1.0' in await r.text()
    await asyncio.sleep(1.0)
    stop.set()
    await driving
    out = await proxy.stop()
    how = "was killed by SIGKILL" if sig == signal.SIGKILL else "exited with status 0"
    assert re.search(f"shadowdiff.tap ERROR shadowdiff: the worker process {how}", out), out
    if sig == signal.SIGKILL:
        assert took < 2.5, took  # noticed within a second, started again 0.5 s later
    assert all(ok for *_, ok in traffic.done)
    with SQLiteStore(proxy.store, create=False) as store:
        counts = store.counts(proxy.run)
    assert imbalance(counts) == [], counts
    assert counts["seen"] == counts["sampled"] == len(traffic.done), (counts, len(traffic.done))
    assert counts[WORKER_RESTARTS] == 1 and counts["dropped.worker_down"] > 0, counts
    assert counts["recorded"] <= len(shadow.seen), counts


@pytest.mark.parametrize("fault", ["hang", "locked"])
async def test_a_script_reload_never_holds_live_requests(fault, primary: Backend, client, tmp_path):
    """Finding 2: `mitmdump -s` and a script reload while four clients loop. With a hanging
    shadow the old worker spends its grace on copies in flight; with a locked store it waits
    to write its last batch. Neither may hold a live request (they took 2.2 s and 12 s), and
    the old worker is never killed: what it held is written once the lock is gone."""
    shadow = await Backend("primary", mode="hang" if fault == "hang" else "ok").start()
    store = tmp_path / "r.db"
    config = tmp_path / "c.yaml"
    config.write_text(
        f"shadow: {shadow.url}\nstore: {store}\nrun: reload\nsampling:\n  rate: 1\n"
        f"mirror:\n  grace: 3s\ncontrol:\n  listen: 127.0.0.1:{free_port()}\n"
    )
    shim = tmp_path / "shadowdiff.py"
    shim.write_text(SHIM.read_text())
    port = free_port()
    mitmdump = Path(sys.executable).parent / "mitmdump"
    args = [str(mitmdump), "-q", "--mode", f"reverse:{primary.url}@{port}", "-s", str(shim)]
    args += ["--set", f"shadowdiff_config={config}"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lock = sqlite3.connect(store, timeout=10, check_same_thread=False, isolation_level=None)
    traffic, stop = Traffic(f"http://127.0.0.1:{port}"), asyncio.Event()
    try:
        await wait_listening(port)
        driving = asyncio.create_task(traffic.run(client, stop))
        await asyncio.sleep(1.5)
        if fault == "locked":
            await asyncio.to_thread(lock.execute, "BEGIN EXCLUSIVE")
        shim.write_text(shim.read_text() + "\n# touched\n")  # mitmproxy reloads changed scripts
        await asyncio.sleep(4.5)
        if fault == "locked":
            lock.execute("ROLLBACK")
        await asyncio.sleep(0.5)
        stop.set()
        await driving
    finally:
        lock.close()
        out = await Proxy(process, port, store, "reload").stop(clean=False)
        await shadow.stop()
    assert all(ok for *_, ok in traffic.done) and len(traffic.done) > 100
    assert traffic.slowest < 1.0, (traffic.slowest, out)
    assert "killing" not in out and "did not" not in out, out
    with SQLiteStore(store, create=False) as s:
        counts = s.counts("reload")
        instances = s.instance_counts("reload")
    assert len(instances) == 2, out  # the reloaded script's tap keeps books of its own
    assert [imbalance(books) for books in instances.values()] == [[], []], instances
    assert counts["seen"] == len(traffic.done), counts
    # both workers finished on their own, and wrote everything once the lock was gone
    assert out.count("run 'reload'") == 2 and "refused the last writes" not in out, out
    assert counts.get("dropped.store", 0) == 0, counts


async def test_a_store_full_at_shutdown_is_said_and_the_last_line_balances(
    primary: Backend, shadow: Backend, start_proxy, client, tmp_path
):
    """Finding 17: the store's files may grow no more (as on a full disk) while requests
    keep coming and until the end. `/healthz` fails while writes fail, the worker says what
    it could not write, and the proxy's last line is the worker's true books, not the
    store's stale ones (which read seen 410 of 1,800)."""
    proxy = await start_proxy(f"--primary={primary.url}", f"--shadow={shadow.url}", "--sample=1")

    async def fetch(path: str) -> None:
        async with client.get(proxy.url + path) as r:
            assert r.status == 200

    for _ in range(5):
        await fetch("/warm")
    await asyncio.sleep(0.5)  # written: the store's files have their working size
    files = [proxy.store, Path(f"{proxy.store}-wal")]
    limit = max(f.stat().st_size for f in files if f.exists()) + 64 * 1024
    for pid in (proxy.process.pid, *children(proxy.process.pid)):
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, limit))
    sent = 5
    for start in range(0, 300, 10):
        paths = [f"/big/{i}?{'x' * 4000}" for i in range(start, start + 10)]
        await asyncio.gather(*map(fetch, paths))
        sent += 10

    async def failing() -> bool:
        async with client.get(proxy.control + "/healthz") as r:
            report = await r.json()
        return r.status == 503 and not report["store"]["ok"]

    await until("/healthz failing with the store", failing, 10)
    out = await proxy.stop()
    assert "the store refused the last writes" in out, out
    last = out.strip().splitlines()[-1]
    assert "these are the worker's numbers" in last, out
    numbers = re.search(r"seen (\d+), sampled (\d+), recorded (\d+), dropped (\d+)", last)
    assert numbers, last
    seen, sampled, recorded, dropped = map(int, numbers.groups())
    assert seen == sampled == sent and recorded + dropped == sampled, last
    assert dropped > 0 and "store" in last, last
