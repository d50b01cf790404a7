"""Releasing end to end: a primary and a candidate on loopback behind the real proxy. The
cohort stage serves exactly the matching requests from the candidate; a 5 % share is sticky
per user and inside its interval, and widening it to 25 % keeps every 5 % user in; a
candidate that starts failing 3 % of one route is rolled back by the verdict while no client
ever sees a 5xx; a rollback from `ctl` applies to the next request and survives a restart;
two proxies sharing PostgreSQL serve the same stage."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from conftest import serving, shadowdiff

MARKER = "X-Shadowdiff"  # on the worker's copies, never on what a client sends


@dataclass
class Side:
    """A JSON service that says who answered (`X-Side`); `fail` plants a 500 on every n-th
    request to /users, from the first on: counted apart for a client's requests and the
    worker's copies."""

    name: str
    fail: int = 0
    url: str = ""
    served: list[float] = field(default_factory=list)  # when it answered a client's request
    planted: int = 0  # 500s it gave a client's request
    copies_failed: int = 0  # 500s it gave the worker's copies
    n: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})

    async def handle(self, request: web.Request) -> web.Response:
        copy = MARKER in request.headers
        if request.path.startswith("/users") and self.fail:
            self.n[copy] += 1
            if self.n[copy] % self.fail == 1:
                if copy:
                    self.copies_failed += 1
                else:
                    self.planted += 1
                return web.json_response({"error": "boom"}, status=500)
        if not copy:
            self.served.append(time.time())
        body = {"path": request.path_qs}
        return web.json_response(body, headers={"X-Side": self.name})


@contextlib.asynccontextmanager
async def side(name: str) -> AsyncIterator[Side]:
    s = Side(name)
    async with serving(s.handle) as s.url:
        yield s


def plan(tmp_path: Path, stages: list[Any], **release: Any) -> Path:
    doc = {
        "judge": {"min_pairs": 10, "latency_tolerance": 1.0},
        "control": {"verdict_every": "100ms"},
        "compare": {"ignored_headers": ["x-side", "date", "server", "content-length"]},
        "release": {"sticky_key": "header:X-User", "stages": stages, "poll": "100ms", **release},
    }
    path = tmp_path / "release.yaml"
    path.write_text(json.dumps(doc))
    return path


async def get(client: aiohttp.ClientSession, url: str, **headers: str) -> str:
    """A GET; who served it. Never a 5xx: that would be the candidate's failure seen."""
    async with client.get(url, headers=headers) as response:
        assert response.status < 500, (url, response.status, await response.text())
        await response.read()
        return response.headers.get("X-Side", "")


async def many(
    client: aiohttp.ClientSession, calls: list[tuple[str, dict[str, str]]], at_once: int = 16
) -> list[str]:
    """The GETs, `at_once` at a time; who served each, in order."""
    out = [""] * len(calls)
    queue = list(enumerate(calls))

    async def worker() -> None:
        while queue:
            i, (url, headers) = queue.pop()
            out[i] = await get(client, url, **headers)

    await asyncio.gather(*(worker() for _ in range(at_once)))
    return out


async def release(client: aiohttp.ClientSession, proxy: Any) -> dict[str, Any]:
    """The release as the proxy's controller has it, once it has read the store."""
    for _ in range(200):
        async with client.get(proxy.control + "/api/release") as response:
            state = dict(await response.json())
        if state["state"] != "unknown":
            return state
        await asyncio.sleep(0.02)
    raise AssertionError("the release's state was never read")


def ctl(proxy: Any, *args: str) -> str:
    done = shadowdiff("ctl", f"--url={proxy.control}", "release", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


async def counts(client: aiohttp.ClientSession, proxy: Any) -> dict[str, int]:
    async with client.get(proxy.control + "/api/status") as response:
        return dict((await response.json())["counts"])


async def test_cohort_then_sticky_shares_that_only_grow(start_proxy, client, tmp_path):
    stages = [
        {"cohort": {"match": ["header:X-Internal=1", "cookie:staff=1"], "min_pairs": 10**6}},
        {"percent": {"share": 5, "min_pairs": 10**6}},
        {"percent": 25},
    ]
    async with side("primary") as primary, side("candidate") as candidate:
        proxy = await start_proxy(
            f"--primary={primary.url}",
            f"--shadow={candidate.url}",
            "--sample=0.05",
            config=str(plan(tmp_path, stages, promote="manual")),
        )
        state = await release(client, proxy)
        assert (state["stage"], state["name"], state["state"]) == (0, "cohort", "running")

        internal = [i % 3 == 0 for i in range(90)]
        calls = [
            (
                f"{proxy.url}/users/{i}",
                {"X-Internal": "1"} if i % 6 == 0 else {"Cookie": "staff=1"} if inside else {},
            )
            for i, inside in enumerate(internal)
        ]
        sides = await many(client, calls)
        assert [s == "candidate" for s in sides] == internal

        assert "percent 5 %" in ctl(proxy, "promote")
        users = [f"user-{i}" for i in range(2_000)]
        rounds = [await many(client, [(f"{proxy.url}/users/1", {"X-User": u}) for u in users])]
        for _ in range(2):  # the same users again: each on the side it had
            rounds.append(
                await many(client, [(f"{proxy.url}/users/2", {"X-User": u}) for u in users])
            )
        assert rounds[1] == rounds[0] == rounds[2]
        at_5 = {u for u, s in zip(users, rounds[0], strict=True) if s == "candidate"}
        spread = 1.96 * math.sqrt(2_000 * 0.05 * 0.95)
        assert abs(len(at_5) - 100) <= spread, len(at_5)
        repeated = await many(
            client,
            [(f"{proxy.url}/search?q={j}", {"X-User": u}) for u in users[:100] for j in range(10)],
        )
        for k, u in enumerate(users[:100]):  # 10 requests each: one side only
            assert set(repeated[10 * k : 10 * k + 10]) == {"candidate" if u in at_5 else "primary"}

        assert "percent 25 %" in ctl(proxy, "promote")
        at_25 = await many(client, [(f"{proxy.url}/users/3", {"X-User": u}) for u in users])
        widened = {u for u, s in zip(users, at_25, strict=True) if s == "candidate"}
        assert at_5 <= widened and abs(len(widened) - 500) <= 1.96 * math.sqrt(2_000 * 0.25 * 0.75)

        sent = len(internal) + 4 * len(users) + 1_000
        for _ in range(100):  # the tap's counters reach the worker every second
            books = await counts(client, proxy)
            if books.get("seen") == sent:
                break
            await asyncio.sleep(0.05)
        assert books["seen"] == sent
        assert books["served.candidate"] == len(candidate.served)
        assert books["served.primary"] + books["served.candidate"] == sent
        status = ctl(proxy, "status")
        assert "stage 3 of 3, percent 25 %" in status and "waits for" in status
        await proxy.stop()
    report = json.loads(
        shadowdiff("report", f"--store={proxy.store}", "--run=test", "--format=json").stdout
    )
    kinds = [e["kind"] for e in report["events"]]
    assert kinds.count("release_promote") == 2


async def test_a_failing_candidate_is_rolled_back_and_no_client_sees_it(
    start_proxy, client, tmp_path
):
    stages = [
        {"shadow": {"min_pairs": 30, "min_duration": "1s"}},
        {"percent": {"share": 5, "min_pairs": 10**6}},
        {"percent": 100},
    ]
    async with side("primary") as primary, side("candidate") as candidate:
        proxy = await start_proxy(
            f"--primary={primary.url}",
            f"--shadow={candidate.url}",
            "--sample=1",
            config=str(plan(tmp_path, stages)),
        )
        n = 0

        async def traffic(count: int) -> list[str]:
            nonlocal n
            calls = [(f"{proxy.url}/users/{n + i}", {"X-User": f"u{n + i}"}) for i in range(count)]
            n += count
            return await many(client, calls, at_once=4)

        while (await release(client, proxy))["stage"] == 0:  # the shadow stage passes its gate
            await traffic(20)
        candidate.fail = 33  # ~3 % of /users, after the promotion to 5 %
        while (state := await release(client, proxy))["state"] != "rolled_back":
            assert n < 20_000, state
            await traffic(40)
        rolled_back_at = time.time()
        assert "FAIL" in state["why"] and "GET /users/{id}" in state["why"]
        after = await traffic(200)
        assert set(after) == {"primary"}
        assert all(t <= rolled_back_at for t in candidate.served)
        await asyncio.sleep(1.2)  # the tap's counters reach the worker every second
        books = await counts(client, proxy)
        assert books.get("fallback.5xx", 0) == candidate.planted > 0
        await proxy.stop()
    report = json.loads(
        shadowdiff("report", f"--store={proxy.store}", "--run=test", "--format=json").stdout
    )
    assert [e["kind"] for e in report["events"] if e["kind"].startswith("release")] == [
        "release_promote",
        "release_rollback",
    ]
    html = shadowdiff("report", f"--store={proxy.store}", "--run=test", "--format=html").stdout
    assert '<h2 id="release">Release</h2>' in html and "rolled back" in html


async def test_a_rollback_applies_to_the_next_request_and_survives_a_restart(
    start_proxy, client, tmp_path
):
    stages = [{"shadow": {"min_pairs": 10**6}}, {"percent": {"share": 100, "min_pairs": 10**6}}]
    config = str(plan(tmp_path, stages, promote="manual"))
    async with side("primary") as primary, side("candidate") as candidate:
        flags = (f"--primary={primary.url}", f"--shadow={candidate.url}", "--sample=1")
        proxy = await start_proxy(*flags, config=config)
        assert await get(client, f"{proxy.url}/a") == "primary"
        ctl(proxy, "promote")
        # two at a time: a burst's copies are left untimed by the worker's busy loop
        assert set(await many(client, [(f"{proxy.url}/a", {})] * 40, at_once=2)) == {"candidate"}
        await proxy.stop()
        report = shadowdiff("report", f"--store={proxy.store}", "--run=test", "--format=json")
        doc = json.loads(report.stdout)
        assert doc["counts"]["compared"] == 41
        [latency] = [c for c in doc["checks"] if c["id"] == "latency"]
        assert latency["n"] >= 20  # what the candidate served is paired

        proxy = await start_proxy(*flags, config=config)  # the same store and run
        state = await release(client, proxy)
        assert (state["stage"], state["state"]) == (1, "running")
        sides = [await get(client, f"{proxy.url}/b") for _ in range(3)]
        assert sides[-1] == "candidate"
        assert "rolled back" in ctl(proxy, "rollback")
        assert await get(client, f"{proxy.url}/c") == "primary"  # the very next request
        refused = shadowdiff("ctl", f"--url={proxy.control}", "release", "promote")
        assert refused.returncode == 1 and "rolled back" in refused.stderr
        await proxy.stop()

        proxy = await start_proxy(*flags, config=config)
        state = await release(client, proxy)
        assert state["state"] == "rolled_back"
        assert {await get(client, f"{proxy.url}/d") for _ in range(5)} == {"primary"}
        await proxy.stop()


async def test_two_proxies_sharing_postgresql_serve_the_same_stage(
    start_proxy, client, tmp_path, url
):
    stages = [{"shadow": {"min_pairs": 10**6}}, {"percent": {"share": 100, "min_pairs": 10**6}}]
    config = str(plan(tmp_path, stages, promote="manual"))
    async with side("primary") as primary, side("candidate") as candidate:
        flags = (f"--primary={primary.url}", f"--shadow={candidate.url}", "--sample=0")
        one = await start_proxy(*flags, f"--store={url}", config=config, run="fleet")
        two = await start_proxy(*flags, f"--store={url}", config=config, run="fleet")
        assert {await get(client, f"{p.url}/a") for p in (one, two)} == {"primary"}
        ctl(one, "promote")
        started = time.monotonic()
        while await get(client, f"{two.url}/a") != "candidate":
            assert time.monotonic() - started < 1.0
            await asyncio.sleep(0.02)
        ctl(two, "rollback")
        started = time.monotonic()
        while await get(client, f"{one.url}/a") != "primary":
            assert time.monotonic() - started < 1.0
            await asyncio.sleep(0.02)
        await one.stop()
        await two.stop()
