"""Incidents end to end: real services behind the real proxy, and fake PagerDuty (Events API
v2 and change events), Alertmanager (v2 push API and silences) and Slack receivers on
loopback that speak their wire formats. Routes owned by team-a and team-b; a divergence
planted on team-a's route pages team-a only, once however it flaps, and resolves with the
same dedup key; a 429 is retried, a 400 is not; the receivers' counts equal the metrics'.
And the response, timed: acknowledged through PagerDuty's webhook, mitigated by a pause,
`shadowdiff incidents` gives the moments the test recorded."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from helpers import until
from prometheus_client.parser import text_string_to_metric_families

from conftest import serving, shadowdiff

KEY_A, KEY_B = "a" * 32, "b" * 32
USERS = ("/users",)  # team-a's route
SLACK_PATH = "/services/T000/B000/secretslackpath"
SIGNING = "whsec-test-signing"


@dataclass
class Receivers:
    """PagerDuty, Alertmanager and a Slack webhook in one loopback app; `answers` are the
    statuses to give the next posts to a path, before 2xx."""

    got: dict[str, list[tuple[float, int, Any]]] = field(default_factory=dict)
    answers: dict[str, list[int]] = field(default_factory=dict)
    silences: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json() if request.method == "POST" else None
        if request.method == "GET":  # Alertmanager's silences
            return web.json_response(self.silences)
        planned = self.answers.get(request.path, [])
        status = planned.pop(0) if planned else 202
        self.got.setdefault(request.path, []).append((time.time(), status, body))
        return web.json_response({"status": "ok"}, status=status)

    def accepted(self, path: str) -> list[Any]:
        return [body for _, status, body in self.got.get(path, []) if status < 300]

    def events(self, key: str) -> list[str]:
        """The PagerDuty alert events accepted for one routing key, by action."""
        return [b["event_action"] for b in self.accepted("/v2/enqueue") if b["routing_key"] == key]


@pytest.fixture
async def receivers() -> AsyncIterator[Receivers]:
    r = Receivers()
    async with serving(r.handle) as r.url:
        yield r


@dataclass
class Service:
    """A JSON service whose answers differ under the path prefixes in `bad` (the shadow)."""

    name: str
    bad: tuple[str, ...] = ()
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        by = "broken" if self.bad and request.path.startswith(self.bad) else "ok"
        return web.json_response({"path": request.path_qs, "by": by})


@contextlib.asynccontextmanager
async def service(name: str) -> AsyncIterator[Service]:
    s = Service(name)
    async with serving(s.handle) as s.url:
        yield s


def write_config(tmp_path: Path, r: Receivers, **incidents: Any) -> Path:
    team_a = [
        {"kind": "pagerduty", "url": f"{r.url}/v2/enqueue", "routing_key_env": "TEAM_A_PD"},
        {"kind": "alertmanager", "url": r.url},
        {"kind": "slack", "url_env": "TEAM_A_SLACK"},
    ]
    team_b = [
        {"kind": "pagerduty", "url": f"{r.url}/v2/enqueue", "routing_key_env": "TEAM_B_PD"},
        {"kind": "alertmanager", "url": r.url},
    ]
    doc = {
        # Both sides answer on the test's own loop: their latency is its scheduling, not theirs.
        "judge": {"min_pairs": 10, "latency_tolerance": 10, "p99_tolerance": 10},
        "control": {"verdict_every": "100ms"},
        "alerts": {"retries": 2},
        "incidents": {
            "owners": [
                {"match": "GET /users/*", "team": "team-a"},
                {"match": "GET /search*", "team": "team-b"},
            ],
            "teams": {"team-a": {"destinations": team_a}, "team-b": {"destinations": team_b}},
            "window": "1s",
            "resolve_after": 15,
            "poll_silences": "200ms",
            **incidents,
        },
    }
    path = tmp_path / "incidents.yaml"
    path.write_text(json.dumps(doc))  # YAML is a superset of JSON
    return path


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch, receivers: Receivers) -> None:
    monkeypatch.setenv("TEAM_A_PD", KEY_A)
    monkeypatch.setenv("TEAM_B_PD", KEY_B)
    monkeypatch.setenv("TEAM_A_SLACK", receivers.url + SLACK_PATH)
    monkeypatch.setenv("PD_SIGNING", SIGNING)


async def keep_sending(client: aiohttp.ClientSession, url: str, stop: asyncio.Event) -> None:
    """About 40 requests a second to each route, until `stop`."""
    i = 0
    while not stop.is_set():
        for path in (f"/users/{i}", f"/search?q={i}"):
            async with client.get(url + path) as response:
                assert response.status == 200
                await response.read()
        i += 1
        await asyncio.sleep(0.025)


def deliveries(text: str) -> dict[tuple[str, str], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "shadowdiff_alert_deliveries_total":
                out[(s.labels["destination"], s.labels["outcome"])] = s.value
    return out


@pytest.mark.usefixtures("secrets")
async def test_owned_routes_page_their_team_once_and_resolve(
    start_proxy, client, receivers: Receivers, tmp_path: Path
) -> None:
    receivers.answers = {"/v2/enqueue": [429], SLACK_PATH: [400]}  # the first of each
    config = write_config(tmp_path, receivers)
    async with service("primary") as primary, service("shadow") as shadow:
        proxy = await start_proxy(
            f"--primary={primary.url}", f"--shadow={shadow.url}", "--sample=1", config=str(config)
        )
        stop = asyncio.Event()
        sender = asyncio.create_task(keep_sending(client, proxy.url, stop))
        await asyncio.sleep(1.5)  # healthy: nothing to page
        assert receivers.accepted("/v2/enqueue") == []

        shadow.bad = USERS
        await until(lambda: receivers.events(KEY_A) == ["trigger"], timeout=20)
        [trigger] = receivers.accepted("/v2/enqueue")
        key = trigger["dedup_key"]
        assert trigger["payload"]["component"] == "GET /users/{id}"
        assert trigger["payload"]["class"] == "divergence_rate"
        assert trigger["payload"]["group"] == "team-a" and trigger["payload"]["severity"] == "error"
        details = trigger["payload"]["custom_details"]
        assert details["n"] >= 10 and details["threshold"] == 0.0 and details["ci"]
        assert any(link["text"] == "dashboard" for link in trigger["links"])
        attempts = [s for _, s, b in receivers.got["/v2/enqueue"] if b["dedup_key"] == key]
        assert attempts == [429, 202]  # retried after the 429
        await until(lambda: receivers.accepted("/api/v2/alerts"), timeout=10)
        [firing] = receivers.accepted("/api/v2/alerts")[0]
        assert firing["labels"]["team"] == "team-a" and firing["labels"]["alertname"]
        assert firing["labels"]["route"] == "GET /users/{id}"

        for _ in range(3):  # flapping: healthy long enough to PASS, never long enough to resolve
            shadow.bad = ()
            await asyncio.sleep(1.8)  # the 1 s window clears, then PASS for 0.8 s at most
            shadow.bad = USERS
            await asyncio.sleep(0.6)
        assert receivers.events(KEY_A).count("trigger") >= 2, receivers.events(KEY_A)  # updates
        assert "resolve" not in receivers.events(KEY_A)

        shadow.bad = ()
        await until(lambda: "resolve" in receivers.events(KEY_A), timeout=20)
        stop.set()
        await sender
        await asyncio.sleep(0.5)  # no second resolve, nothing more to team-b
        pages = [b for b in receivers.accepted("/v2/enqueue") if b["routing_key"] == KEY_A]
        assert {b["dedup_key"] for b in pages} == {key}  # one incident: trigger, updates, resolve
        assert [b["event_action"] for b in pages].count("resolve") == 1
        team_b = [b for b in receivers.accepted("/v2/enqueue") if b["routing_key"] == KEY_B]
        assert team_b == []  # team-b's route never diverged
        ended = receivers.accepted("/api/v2/alerts")[-1][0]
        assert ended["labels"] == firing["labels"] and ended["endsAt"] <= time_iso(time.time())
        slack = receivers.got[SLACK_PATH]
        assert [s for _, s, _ in slack][0] == 400 and len(slack) >= 2  # the 400 not retried
        assert "resolved" in slack[-1][2]["text"]
        assert SLACK_PATH not in json.dumps(receivers.accepted("/v2/enqueue"))

        async with client.get(proxy.control + "/metrics") as response:
            counted = deliveries(await response.text())
        for name, path in (("team-a/pagerduty", "/v2/enqueue"), ("team-a/slack", SLACK_PATH)):
            got = receivers.got.get(path, []) + (
                receivers.got.get("/v2/change/enqueue", []) if "pagerduty" in name else []
            )
            mine = [x for x in got if x[2].get("routing_key") in (KEY_A, None)]
            assert counted[(name, "sent")] == len([x for x in mine if x[1] < 300]), name
        assert counted[("team-a/slack", "failed")] == 1
        assert counted[("team-a/alertmanager", "sent")] == len(receivers.got["/api/v2/alerts"])
        assert counted[("team-b/pagerduty", "failed")] == 0  # exported from 0
        out = await proxy.stop()
    for secret in (KEY_A, KEY_B, SLACK_PATH):
        assert secret not in out
        assert secret.encode() not in proxy.store.read_bytes()
    listed = shadowdiff("incidents", f"--store={proxy.store}")
    assert listed.returncode == 0 and "team team-a" in listed.stdout and key[:12] in listed.stdout
    assert "PASS for 15 judgements" in listed.stdout


def time_iso(at: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def signed(body: bytes) -> dict[str, str]:
    digest = hmac.new(SIGNING.encode(), body, hashlib.sha256).hexdigest()
    return {"X-PagerDuty-Signature": f"v1=0000,v1={digest}", "Content-Type": "application/json"}


@pytest.mark.usefixtures("secrets")
async def test_the_response_is_timed_ack_by_webhook_and_mitigated_by_a_pause(
    start_proxy, client, receivers: Receivers, tmp_path: Path
) -> None:
    config = write_config(tmp_path, receivers, pagerduty_webhook_secret_env="PD_SIGNING")
    async with service("primary") as primary, service("shadow") as shadow:
        proxy = await start_proxy(
            f"--primary={primary.url}", f"--shadow={shadow.url}", "--sample=1", config=str(config)
        )
        stop = asyncio.Event()
        sender = asyncio.create_task(keep_sending(client, proxy.url, stop))
        await asyncio.sleep(1.0)
        shadow.bad = USERS
        planted = time.time()
        await until(lambda: receivers.events(KEY_A) == ["trigger"], timeout=20)
        paged = next(at for at, s, b in receivers.got["/v2/enqueue"] if s < 300)
        key = receivers.accepted("/v2/enqueue")[0]["dedup_key"]

        hook = {
            "event": {
                "event_type": "incident.acknowledged",
                "agent": {"summary": "Ada Oncall"},
                "data": {"type": "incident", "incident_key": key},
            }
        }
        body = orjson.dumps(hook)
        async with client.post(proxy.control + "/hooks/pagerduty", data=body) as r:
            assert r.status == 401  # unsigned: refused
        acked = time.time()
        async with client.post(
            proxy.control + "/hooks/pagerduty", data=body, headers=signed(body)
        ) as r:
            assert r.status == 200 and (await r.json())["acknowledged"] == key
        await asyncio.sleep(0.3)
        paused = time.time()
        async with client.post(proxy.control + "/mirror/pause") as r:
            assert r.status == 200
        await until(lambda: "resolve" in receivers.events(KEY_A), timeout=10)
        assert "acknowledge" not in receivers.events(KEY_A)  # PagerDuty told us, not we it
        stop.set()
        await sender
        async with client.get(proxy.control + "/api/incidents") as r:
            [shown] = await r.json()
        await proxy.stop()
    listed = shadowdiff("incidents", f"--store={proxy.store}", "--json")
    [incident] = json.loads(listed.stdout)
    assert incident == shown
    assert incident["acked_by"] == "Ada Oncall (PagerDuty)"
    assert incident["resolved_why"].startswith("mitigated: mirroring paused by")
    for moment, recorded in (
        ("started", planted),
        ("alerted", paged),
        ("acked", acked),
        ("mitigated", paused),
        ("resolved", paused),
    ):
        assert abs(incident[moment] - recorded) < 0.1, (moment, incident[moment] - recorded)
    d = incident["durations"]
    assert abs(d["detect"] - (paged - planted)) < 0.1
    assert abs(d["acknowledge"] - (acked - paged)) < 0.1
    assert abs(d["mitigate"] - (paused - planted)) < 0.1
    assert abs(d["resolve"] - (paused - planted)) < 0.1


@pytest.mark.usefixtures("secrets")
async def test_acks_from_the_shell_and_a_silence_and_the_last_proxy_ends_the_run(
    start_proxy, client, receivers: Receivers, tmp_path: Path
) -> None:
    config = write_config(tmp_path, receivers)
    async with service("primary") as primary, service("shadow") as shadow:
        proxy = await start_proxy(
            f"--primary={primary.url}", f"--shadow={shadow.url}", "--sample=1", config=str(config)
        )
        stop = asyncio.Event()
        sender = asyncio.create_task(keep_sending(client, proxy.url, stop))
        shadow.bad = ("/users", "/search")  # both teams' routes
        await until(lambda: receivers.events(KEY_A) == receivers.events(KEY_B) == ["trigger"], 20)
        key_a = next(
            b["dedup_key"] for b in receivers.accepted("/v2/enqueue") if b["routing_key"] == KEY_A
        )
        acked = shadowdiff("ctl", f"--url={proxy.control}", "ack", key_a[:8])
        assert acked.returncode == 0 and f"acknowledged {key_a}" in acked.stdout, acked
        assert "team team-a" in acked.stdout
        unknown = shadowdiff("ctl", f"--url={proxy.control}", "ack", "ffffffffff")
        assert unknown.returncode == 1 and "no open incident" in unknown.stderr
        await until(lambda: "acknowledge" in receivers.events(KEY_A), timeout=10)

        team_b = {"name": "team", "value": "team-b", "isRegex": False, "isEqual": True}
        receivers.silences = [
            {"status": {"state": "active"}, "matchers": [team_b], "createdBy": "sre-bob"}
        ]
        await until(lambda: "acknowledge" in receivers.events(KEY_B), timeout=10)
        async with client.get(proxy.control + "/api/incidents") as r:
            shown = {i["team"]: i for i in await r.json()}
        assert shown["team-b"]["acked_by"] == "sre-bob (an Alertmanager silence)"
        assert "(shadowdiff ctl)" in shown["team-a"]["acked_by"], shown["team-a"]["acked_by"]
        stop.set()
        await sender
        await proxy.stop()  # still failing: the only proxy of the run ends it
    assert receivers.events(KEY_A)[-1] == receivers.events(KEY_B)[-1] == "resolve"
    listed = json.loads(shadowdiff("incidents", f"--store={proxy.store}", "--json").stdout)
    assert [i["resolved_why"] for i in listed] == ["the run ended", "the run ended"]


def test_a_missing_secret_stops_the_proxy_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    receivers = Receivers(url="http://127.0.0.1:9")
    config = write_config(tmp_path, receivers)
    monkeypatch.delenv("TEAM_A_PD", raising=False)
    done = shadowdiff(
        "proxy", "--primary=http://127.0.0.1:9", "--shadow=http://127.0.0.1:9", f"--config={config}"
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr == (
        "shadowdiff: error: incidents.teams.team-a.destinations[0]: the environment variable"
        " TEAM_A_PD is not set\n"
    )
    monkeypatch.setenv("TEAM_A_PD", KEY_A)
    monkeypatch.setenv("TEAM_B_PD", KEY_B)
    monkeypatch.setenv("TEAM_A_SLACK", "not a url")
    done = shadowdiff(
        "proxy", "--primary=http://127.0.0.1:9", "--shadow=http://127.0.0.1:9", f"--config={config}"
    )
    assert done.returncode == 2 and "TEAM_A_SLACK holds no http(s) URL" in done.stderr
    assert "not a url" not in done.stderr  # a webhook URL is a secret, even a wrong one
