"""A fleet: a real nginx in front of two shadowdiff proxies sharing one PostgreSQL store and
one run. Two proxies that each saw part of the traffic give the same verdict and counts as one
proxy that saw all of it; killing one mid-run loses only what it held, and the report says so;
a database outage leaves live traffic untouched and loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from helpers import free_port, wait_listening

from conftest import Cluster, schema, serve_app, shadowdiff
from shadowdiff.counts import imbalance, total
from shadowdiff.store import open_store

NGINX_CONF = Path(__file__).parent.parent.parent / "configs" / "nginx.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


async def api(diverge: bool) -> tuple[web.AppRunner, str]:
    """Users and orders; the candidate renames a field of the users."""

    async def users(request: web.Request) -> web.Response:
        key = "full_name" if diverge else "name"
        return web.json_response({"id": request.match_info["id"], key: "x"})

    async def orders(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"], "total": 3})

    app = web.Application()
    app.router.add_get("/users/{id}", users)
    app.router.add_get("/orders/{id}", orders)
    return await serve_app(app)


@contextlib.asynccontextmanager
async def nginx(tmp_path: Path, ports: list[int]) -> AsyncIterator[str]:
    """configs/nginx.conf as shipped, pointed at `ports`, on a free loopback port."""
    assert Path(NGINX).exists(), f"{NGINX} is missing: apt-get install -y nginx (CI installs it)"
    port = free_port()
    servers = "".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;\n" for p in ports)
    conf = re.sub(r"(?m)^ +server 127\.0\.0\.1:\d+ .*\n", "", NGINX_CONF.read_text())
    conf = conf.replace("upstream shadowdiff {\n", "upstream shadowdiff {\n" + servers)
    conf = conf.replace("listen 80;", f"listen 127.0.0.1:{port};")
    path = tmp_path / "nginx.conf"
    path.write_text(conf)
    directives = f"daemon off; pid {tmp_path}/nginx.pid; error_log {tmp_path}/nginx.log;"
    process = subprocess.Popen([NGINX, "-c", str(path), "-p", str(tmp_path), "-g", directives])
    try:
        await wait_listening(port, timeout=10)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


CUT = 0
"""The status `drive` gives a response whose body was cut off after its headers: only a proxy
killed mid-answer does that (nginx cannot retry what it has begun to forward)."""


async def drive(client: aiohttp.ClientSession, base: str, count: int) -> list[int]:
    """`count` GETs, 10 at a time; their statuses (CUT for a body cut short)."""
    statuses = []
    for start in range(0, count, 10):

        async def one(i: int) -> int:
            path = f"/users/{i}" if i % 2 else f"/orders/{i}"
            async with client.get(base + path) as r:
                try:
                    await r.read()
                except aiohttp.ClientPayloadError:
                    return CUT
                return r.status

        statuses += await asyncio.gather(*(one(i) for i in range(start, start + 10)))
    return statuses


def verdict(store: str, run: str) -> dict[str, Any]:
    done = shadowdiff("report", f"--store={store}", f"--run={run}", "--format=json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def essentials(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "verdict": doc["verdict"],
        "counts": {k: doc["counts"][k] for k in ("seen", "sampled", "recorded", "divergent")},
        "routes": [
            (r["route"], r["pairs"], r["divergent"], [(f["path"], f["count"]) for f in r["fields"]])
            for r in doc["routes"]
        ],
        # latency aside: two proxies on a busy 2-core machine do not time alike, one or two
        # processes; every other check is a function of the counts
        "checks": sorted(
            (c["id"], c["route"], c["result"])
            for c in doc["checks"]
            if not c["id"].startswith("latency")
        ),
    }


async def test_two_proxies_behind_nginx_judge_like_one(
    start_proxy, client, tmp_path, cluster: Cluster
):
    primary, shadow = await api(False), await api(True)
    flags = [f"--primary={primary[1]}", f"--shadow={shadow[1]}", "--sample=1"]
    single = await start_proxy(*flags, run="single")  # SQLite, one proxy
    assert set(await drive(client, single.url, 300)) == {200}
    await single.stop()

    with schema(cluster.url, "fleet") as store:
        one = await start_proxy(*flags, f"--store={store}", run="fleet")
        two = await start_proxy(*flags, f"--store={store}", run="fleet")
        async with nginx(tmp_path, [one.port, two.port]) as balancer:
            assert set(await drive(client, balancer, 300)) == {200}
        await one.stop()
        await two.stop()
        fleet = verdict(store, "fleet")
        with open_store(store, create=False) as shared:
            books = shared.instance_counts("fleet")
        done = shadowdiff("summary", f"--store={store}", "--run=fleet")
    alone = verdict(str(single.store), "single")
    assert essentials(fleet) == essentials(alone)
    assert fleet["verdict"] == "FAIL" and fleet["accounting"] == []
    assert fleet["counts"]["recorded"] == 300
    assert len(books) == 2 and all(b["recorded"] > 50 for b in books.values())  # both served
    assert done.returncode == 0 and "accounting" not in done.stdout
    for runner in (primary[0], shadow[0]):
        await runner.cleanup()


async def test_killing_one_proxy_loses_only_what_it_held(
    start_proxy, client, tmp_path, cluster: Cluster
):
    primary, shadow = await api(False), await api(False)
    with schema(cluster.url, "kill") as store:
        await killed(start_proxy, client, tmp_path, primary, shadow, store)


async def killed(start_proxy, client, tmp_path, primary, shadow, store: str) -> None:
    flags = [f"--primary={primary[1]}", f"--shadow={shadow[1]}", "--sample=1", f"--store={store}"]
    one = await start_proxy(*flags, run="kill")
    two = await start_proxy(*flags, run="kill")
    async with client.get(two.control + "/api/status") as r:
        dead = (await r.json())["instance"]
    async with nginx(tmp_path, [one.port, two.port]) as balancer:
        first = await drive(client, balancer, 200)
        traffic = asyncio.create_task(drive(client, balancer, 400))
        await asyncio.sleep(0.3)
        two.process.send_signal(signal.SIGKILL)  # a crash: no goodbye, no last counts
        rest = await traffic
    assert set(first) == {200}
    # nginx retries what the dead proxy had not begun to answer; one it was answering at the
    # kill (headers out, body not) is cut, at most the 10 requests in flight then
    assert set(rest) - {CUT} == {200} and rest.count(CUT) <= 10, rest
    await one.stop()
    await two.stop(clean=False)
    await asyncio.sleep(1.0)  # the dead proxy's worker flushes what it held, then exits
    with open_store(store, create=False) as shared:
        books = shared.instance_counts("kill")
    assert len(books) == 2
    for instance, counts in books.items():
        if instance != dead:
            assert imbalance(counts) == [], counts  # the survivor's books balance
    # All its tap reported (maybe nothing yet: it reports once a second) is recorded or counted.
    fate = books[dead].get("recorded", 0) + total(books[dead], "dropped")
    assert fate >= books[dead].get("sampled", 0) and fate > 0
    doc = verdict(store, "kill")
    # A request the dead proxy had mirrored but not answered is retried by nginx on the other
    # and mirrored again: a few more exchanges than client requests is right.
    assert doc["verdict"] != "FAIL" and 200 < doc["counts"]["recorded"] <= 600 + 20
    if imbalance(books[dead]):  # what it sampled after its last report: the report says so
        assert [a for a in doc["accounting"] if dead in a] and len(doc["accounting"]) == 1
        html = shadowdiff("report", f"--store={store}", "--run=kill", "--format=html")
        assert f"accounting: instance {dead}" in html.stdout
    for runner in (primary[0], shadow[0]):
        await runner.cleanup()


async def test_database_outage_leaves_live_traffic_alone_and_loses_nothing(
    start_proxy, client, own_cluster: Cluster
):
    primary, shadow = await api(False), await api(False)
    with schema(own_cluster.url, "outage") as store:
        proxy = await start_proxy(
            f"--primary={primary[1]}", f"--shadow={shadow[1]}", "--sample=1", f"--store={store}"
        )
        assert set(await drive(client, proxy.url, 100)) == {200}
        own_cluster.halt()
        started = time.monotonic()
        during: list[float] = []
        while time.monotonic() - started < 10.0:  # ten seconds without a database
            before = time.monotonic()
            assert set(await drive(client, proxy.url, 10)) == {200}
            during.append(time.monotonic() - before)
        async with client.get(proxy.control + "/healthz") as r:
            health = await r.json()
        assert r.status == 503 and not health["store"]["ok"], health
        own_cluster.start()
        assert set(await drive(client, proxy.url, 100)) == {200}
        out = await proxy.stop()
        with open_store(store, create=False) as back:
            counts = back.counts("test")
    assert max(during) < 1.0, f"10 live requests took {max(during):.2f}s during the outage"
    assert imbalance(counts) == [], counts
    sent = 200 + 10 * len(during)
    assert counts["seen"] == counts["sampled"] == counts["recorded"] == sent, (counts, out)
    for runner in (primary[0], shadow[0]):
        await runner.cleanup()


async def settled(client: aiohttp.ClientSession, controls: list[int], exchanges: int) -> None:
    """Returns once the proxies on `controls` have compared `exchanges` between them."""
    deadline = time.monotonic() + 20
    while True:
        compared = 0
        for port in controls:
            async with client.get(f"http://127.0.0.1:{port}/api/status") as response:
                compared += (await response.json())["counts"].get("compared", 0)
        if compared >= exchanges:
            return
        assert time.monotonic() < deadline, f"{compared} of {exchanges} compared"
        await asyncio.sleep(0.05)


def free_pair() -> int:
    """A port p with p + 1 free too: `--processes 2` takes both."""
    while True:
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port


async def test_processes_run_a_fleet_on_one_host(client, tmp_path, cluster: Cluster):
    primary, shadow = await api(False), await api(True)
    listen, control = free_pair(), free_pair()
    with schema(cluster.url, "processes") as store:
        args = [
            sys.executable,
            *("-m", "shadowdiff", "proxy", "--processes=2", "--sample=1", "--run=p"),
            f"--primary={primary[1]}",
            f"--shadow={shadow[1]}",
            f"--listen=127.0.0.1:{listen}",
            f"--control=127.0.0.1:{control}",
            f"--store={store}",
        ]
        fleet = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for port in (listen, listen + 1, control, control + 1):
                await wait_listening(port, timeout=30)
            async with nginx(tmp_path, [listen, listen + 1]) as balancer:
                assert set(await drive(client, balancer, 100)) == {200}
            # the services answer on this loop, which the commands below hold: their copies
            # (the primary's goes once the live answer is in) must be back first
            await settled(client, [control, control + 1], 100)
            done = shadowdiff(
                "ctl",
                f"--url=http://127.0.0.1:{control}",
                f"--url=http://127.0.0.1:{control + 1}",
                "pause",
            )
            assert done.returncode == 0 and done.stdout.count("mirroring PAUSED") == 2, done
        finally:
            fleet.send_signal(signal.SIGTERM)
            out, _ = fleet.communicate(timeout=60)
        assert fleet.returncode == 0 and "Traceback" not in out, out
        assert out.count("shadowdiff: run 'p'") == 2  # each process sums up on its way out
        with open_store(store, create=False) as shared:
            books = shared.instance_counts("p")
            events = shared.events("p")
    assert len(books) == 2 and sum(b["recorded"] for b in books.values()) == 100
    assert all(imbalance(b) == [] for b in books.values())
    assert [e.kind for e in events] == ["started", "started", "paused", "paused"]
    for runner in (primary[0], shadow[0]):
        await runner.cleanup()
