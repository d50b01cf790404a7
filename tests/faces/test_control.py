"""The control server end to end: a real proxy, real services, a real webhook receiver, and
prometheus_client's own parser. Metrics match the store, a divergence flips /verdict and fires
one alert, the kill switch stops mirroring at once while live traffic flows, tokens guard it."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from helpers import free_port, until
from prometheus_client.parser import text_string_to_metric_families

from conftest import Backend, Proxy, Receiver, shadowdiff
from shadowdiff.counts import imbalance
from shadowdiff.store import SQLiteStore


async def traffic(client: aiohttp.ClientSession, base: str, paths: list[str]) -> None:
    for path in paths:
        async with client.get(base + path) as r:
            await r.read()
            assert r.status == 200


def families(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Metric samples by name and sorted labels, as Prometheus would parse them."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


async def get(client: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with client.get(url) as r:
        return r.status, await (r.json() if r.content_type == "application/json" else r.text())


async def test_metrics_match_store_and_divergence_fires_one_alert(
    start_proxy, primary: Backend, shadow: Backend, client, receiver: Receiver, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "judge:\n  min_pairs: 10\ncontrol:\n  verdict_every: 250ms\n"
        f"alerts:\n  webhooks: [{{url: '{receiver.url}', format: generic}}]\n"
    )
    shadow.name = "shadow"  # the shadow answers `"by": "shadow"`: a divergence at $.by
    proxy = await start_proxy(
        f"--primary={primary.url}", f"--shadow={shadow.url}", "--sample=1", config=str(config)
    )
    await traffic(client, proxy.url, [f"/users/{i}" for i in range(30)])
    await until(lambda: len(receiver.got) >= 1)
    status, doc = await get(client, proxy.control + "/verdict")
    assert status == 200 and doc["verdict"] == "FAIL"
    assert [r["route"] for r in doc["routes"]] == ["GET /users/{id}"]
    flagger = {"name": "podinfo", "namespace": "test", "phase": "Progressing", "metadata": {}}
    async with client.post(proxy.control + "/gate", json=flagger) as r:
        assert r.status == 412 and (await r.json())["verdict"] == "FAIL"  # Flagger halts
    status, narrowed = await get(client, proxy.control + "/verdict?route=GET%20/nothing")
    assert status == 404 and narrowed["verdict"] == "INCONCLUSIVE"  # no such route: no judgement
    await traffic(client, proxy.url, [f"/users/{i}" for i in range(30, 40)])
    await asyncio.sleep(1.0)  # several more judgements: still FAIL, no second alert
    assert len(receiver.got) == 1, receiver.got
    alert = receiver.got[0]
    assert alert["event"] == "route_fail" and alert["key"] == "GET /users/{id}"
    assert alert["run"] == "test" and "FAIL" in alert["text"]

    await until(lambda: len(shadow.seen) == 40)
    await asyncio.sleep(0.6)  # the last batch is flushed every 0.25 s
    _, text = await get(client, proxy.control + "/metrics")
    metrics = families(text)
    with SQLiteStore(proxy.store, create=False) as store:
        counts = store.counts("test")
    assert imbalance(counts) == []
    for name in ("seen", "sampled", "recorded", "compared", "matched", "divergent"):
        assert metrics[f"shadowdiff_{name}_total"][()] == counts.get(name, 0), name
    assert counts["divergent"] == 40
    route = (("result", "divergent"), ("route", "GET /users/{id}"))
    assert metrics["shadowdiff_route_exchanges_total"][route] == 40
    latency = (("route", "GET /users/{id}"), ("side", "shadow"))
    # a family with no children has no samples: none untimed, no `shadowdiff_untimed_total`
    untimed = metrics.get("shadowdiff_untimed_total", {}).get((("side", "shadow"),), 0)
    assert metrics["shadowdiff_latency_seconds_count"][latency] + untimed == 40  # a stall: untimed
    reference = metrics["shadowdiff_latency_reference_total"]
    assert sum(reference.values()) == 40 and len(reference) == 1, reference
    assert metrics["shadowdiff_sample_rate"][()] == 1.0
    assert metrics["shadowdiff_breaker_open"][(("state", "closed"), ("target", "shadow"))] == 0
    status, health = await get(client, proxy.control + "/healthz")
    assert status == 200 and health["status"] == "ok", health
    await proxy.stop()


async def test_pause_stops_mirroring_within_a_second_and_is_recorded(
    start_proxy, primary: Backend, shadow: Backend, client
) -> None:
    proxy = await start_proxy(f"--primary={primary.url}", f"--shadow={shadow.url}", "--sample=1")
    stop = asyncio.Event()
    answers: list[int] = []

    async def live() -> None:  # live traffic all along, bounded
        for i in range(2000):
            if stop.is_set():
                return
            async with client.get(f"{proxy.url}/live/{i}") as r:
                await r.read()
                answers.append(r.status)

    flowing = asyncio.create_task(live())
    await until(lambda: len(shadow.seen) >= 20)
    headers = {"X-Shadowdiff-Actor": "on-call"}
    async with client.post(proxy.control + "/mirror/pause", headers=headers) as r:
        assert r.status == 200 and (await r.json())["paused"] is True
    paused_at = time.monotonic()
    await asyncio.sleep(0.3)  # copies already sent may still land
    copies, requests = len(shadow.seen), len(primary.seen)
    await asyncio.sleep(1.0)
    assert len(shadow.seen) == copies, "mirroring went on after the pause"
    assert len(primary.seen) - requests > 20, "live traffic must keep flowing"
    assert time.monotonic() - paused_at < 2.0
    async with client.put(proxy.control + "/mirror/sample-rate", data="0.5") as r:
        assert (await r.json())["rate"] == 0.5
    async with client.post(proxy.control + "/mirror/resume") as r:
        assert (await r.json())["paused"] is False
    await until(lambda: len(shadow.seen) > copies + 10)
    stop.set()
    await flowing
    assert set(answers) == {200}
    out = await proxy.stop()
    assert "mirroring paused by on-call from 127.0.0.1" in out
    with SQLiteStore(proxy.store, create=False) as store:
        started, *events = store.events("test")
        counts = store.counts("test")
    assert (started.kind, started.actor) == ("started", "proxy")  # a change event
    assert [(e.kind, e.old, e.new) for e in events] == [
        ("paused", "false", "true"),
        ("sample_rate", "1", "0.5"),
        ("resumed", "true", "false"),
    ]
    assert events[0].actor == "on-call from 127.0.0.1"
    assert counts["not_sampled.paused"] > 20 and imbalance(counts) == []


async def test_bad_control_requests(start_proxy, primary: Backend, shadow: Backend, client):
    proxy = await start_proxy(f"--primary={primary.url}", f"--shadow={shadow.url}")
    url = proxy.control + "/mirror/sample-rate"
    for body in ("fast", "1.5", ""):
        async with client.put(url, data=body) as r:
            assert r.status == 400 and "between 0 and 1" in (await r.json())["error"]
    async with client.post(
        proxy.control + "/mirror/pause", headers={"Origin": "http://evil.example"}
    ) as r:
        assert r.status == 403  # a web page elsewhere cannot flip the switch through a browser
    rebound = {"Host": f"evil.example:{proxy.control_port}"}  # DNS rebinding
    async with client.get(proxy.control + "/api/status", headers=rebound) as r:
        assert r.status == 403
    async with client.post(proxy.control + "/mirror/pause", headers=rebound) as r:
        assert r.status == 403
    status, state = await get(client, proxy.control + "/api/status")
    assert status == 200 and state["paused"] is False and state["rate"] == 0.1
    assert (await get(client, proxy.control + "/api/examples"))[0] == 400
    await proxy.stop()


async def test_token_guards_the_switch_beyond_loopback(
    primary: Backend, shadow: Backend, client, tmp_path: Path
) -> None:
    port, control = free_port(), free_port()
    base = [
        sys.executable,
        "-m",
        "shadowdiff",
        "proxy",
        f"--primary={primary.url}",
        f"--shadow={shadow.url}",
        f"--listen=127.0.0.1:{port}",
        f"--store={tmp_path / 't.db'}",
        f"--control=0.0.0.0:{control}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "SHADOWDIFF_TOKEN"}
    refused = subprocess.run(base, capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "reachable beyond loopback" in refused.stderr.strip().splitlines()[-1]
    process = subprocess.Popen(
        base,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env, "SHADOWDIFF_TOKEN": "s3cret"},
    )
    proxy = Proxy(process, port, tmp_path / "t.db", "default", control)
    try:
        await until(lambda: _listening(control), 30)
        async with client.post(proxy.control + "/mirror/pause") as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = {"Authorization": "Bearer guess"}
        async with client.post(proxy.control + "/mirror/pause", headers=wrong) as r:
            assert r.status == 401
        # without a signing secret, PagerDuty's webhook needs the token too; so does an ack
        for path in ("/hooks/pagerduty", "/incidents/ack"):
            async with client.post(proxy.control + path, json={"key": "abcdefgh"}) as r:
                assert r.status == 401, path
        right = {"Authorization": "Bearer s3cret"}
        async with client.post(proxy.control + "/incidents/ack", json={}, headers=right) as r:
            assert r.status == 400  # no key
        async with client.post(
            proxy.control + "/incidents/ack", json={"key": "abcdefgh"}, headers=right
        ) as r:
            assert r.status == 404
        hook = {"event": {"event_type": "incident.acknowledged", "agent": {"summary": 7}}}
        async with client.post(proxy.control + "/hooks/pagerduty", json=hook, headers=right) as r:
            assert r.status == 200 and await r.json() == {"acknowledged": None}
        async with client.post(proxy.control + "/hooks/pagerduty", data=b"[", headers=right) as r:
            assert r.status == 400
        assert (await get(client, proxy.control + "/healthz"))[0] in (200, 503)  # reads open
        ctl = ["ctl", f"--url={proxy.control}"]
        done = subprocess.run(
            [sys.executable, "-m", "shadowdiff", *ctl, "pause"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode == 1 and "401" in done.stderr, done.stderr
        done = subprocess.run(
            [sys.executable, "-m", "shadowdiff", *ctl, "--token=s3cret", "pause"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode == 0 and done.stdout.strip() == "mirroring PAUSED", done
    finally:
        await proxy.stop()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_ctl_status_rate_and_unreachable(
    start_proxy, primary: Backend, shadow: Backend, client
) -> None:
    proxy = await start_proxy(f"--primary={primary.url}", f"--shadow={shadow.url}", "--sample=1")
    await traffic(client, proxy.url, [f"/a/{i}" for i in range(5)])
    done = shadowdiff("ctl", f"--url={proxy.control}", "rate", "0.05")
    assert done.returncode == 0 and done.stdout.strip() == "mirroring 5.0% (dial; config 100%)"
    deadline = time.monotonic() + 5  # the tap's counters reach the worker once a second
    while True:
        done = shadowdiff("ctl", f"--url={proxy.control}", "status")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        if lines[1].startswith("run 'test': seen 5,") or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert lines[0].startswith("mirroring 5.0% (dial; config 100%); instance ")
    assert lines[1].startswith("run 'test': seen 5, sampled 5")
    assert any(line.startswith("verdict: INCONCLUSIVE") for line in lines)
    done = shadowdiff("ctl", f"--url={proxy.control}", "rate", "config")
    assert done.returncode == 0 and done.stdout.strip() == "mirroring 100.0%", done
    done = shadowdiff("ctl", f"--url={proxy.control}", "rate", "2")
    assert done.returncode == 2 and "2" in done.stderr and "Traceback" not in done.stderr
    await proxy.stop()
    done = shadowdiff("ctl", f"--url={proxy.control}", "status")
    assert done.returncode == 1
    assert done.stderr.startswith("shadowdiff: error: cannot reach the control server at")
    assert len(done.stderr.strip().splitlines()) == 1


def test_control_port_taken_stops_start_up(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = shadowdiff(
            "proxy",
            "--primary=http://127.0.0.1:9",
            "--shadow=http://127.0.0.1:9",
            f"--listen=127.0.0.1:{free_port()}",
            f"--store={tmp_path / 's.db'}",
            f"--control=127.0.0.1:{taken.getsockname()[1]}",
        )
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    assert "control server cannot start on 127.0.0.1:" in done.stderr
    assert "the worker process stopped at start (status 2)" in done.stderr


async def test_control_off(start_proxy, primary: Backend, shadow: Backend, client) -> None:
    proxy = await start_proxy(f"--primary={primary.url}", f"--shadow={shadow.url}", "--control=off")
    await traffic(client, proxy.url, ["/a/1"])
    assert not _listening(proxy.control_port)
    await proxy.stop()
