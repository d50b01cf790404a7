"""Alerts to real webhook receivers on loopback: payloads, escaping, debounce, retries, drops."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiohttp import web
from helpers import free_port, until

from conftest import serve_app
from shadowdiff.config import Alerts, Webhook
from shadowdiff.faces import alerts
from shadowdiff.faces.alerts import Alert, Alerter

SECRET = "/services/T000/B000/s3cr3t"
"""The path every receiver listens on: like a Slack URL's, it must never reach a log."""


@dataclass
class Receiver:
    """A webhook on loopback: answers `statuses` in turn (the last repeats); `hold` stalls it."""

    statuses: list[int]
    hold: asyncio.Event | None = None
    retry_after: str | None = None  # sent with every answer that is not a 2xx
    seen: list[tuple[str, str, Any]] = field(default_factory=list)  # path, content type, JSON
    times: list[float] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.times.append(time.monotonic())
        self.seen.append((request.path, request.content_type, orjson.loads(await request.read())))
        if self.hold is not None:
            await self.hold.wait()
        status = self.statuses[min(len(self.seen), len(self.statuses)) - 1]
        asked = {"Retry-After": self.retry_after} if self.retry_after and status >= 300 else {}
        return web.Response(status=status, headers=asked)


StartReceiver = Callable[..., Awaitable[Receiver]]


@pytest.fixture
async def receiver() -> AsyncIterator[StartReceiver]:
    started: list[tuple[Receiver, web.AppRunner]] = []

    async def start(*statuses: int, hold: bool = False) -> Receiver:
        receiver = Receiver(list(statuses or (200,)), asyncio.Event() if hold else None)
        app = web.Application()
        app.router.add_post(SECRET, receiver.handle)
        runner, base = await serve_app(app)
        receiver.url = base + SECRET
        started.append((receiver, runner))
        return receiver

    yield start
    for receiver, runner in started:
        if receiver.hold is not None:
            receiver.hold.set()
        await runner.cleanup()


MakeAlerter = Callable[..., Awaitable[Alerter]]


@pytest.fixture
async def make_alerter() -> AsyncIterator[MakeAlerter]:
    made: list[Alerter] = []

    async def make(
        *hooks: tuple[str, str],
        clock: Callable[[], float] = time.monotonic,
        backoff: float = 0.01,
        start: bool = True,
        **options: Any,
    ) -> Alerter:
        webhooks = [Webhook.model_validate({"url": url, "format": fmt}) for url, fmt in hooks]
        cfg = Alerts(webhooks=webhooks, **options)
        alerter = Alerter(cfg, "canary-7", Counter(), clock=clock, backoff=backoff)
        if start:
            await alerter.start()
        made.append(alerter)
        return alerter

    yield make
    for alerter in made:
        await alerter.close(0.1)


def totals(alerter: Alerter) -> dict[str, int]:
    """The `alerts.*` totals, after checking they add up from the per-destination counts."""
    out = {k: v for k, v in alerter.counts.items() if k.startswith("alerts.")}
    per = Counter[str]()
    for name, n in alerter.counts.items():
        if name.startswith("deliveries."):
            per["alerts." + name.split(".")[1]] += n
    assert per == Counter({k: v for k, v in out.items() if k != "alerts.debounced"})
    return out


def route_fail(route: str = "GET /users/{id}") -> Alert:
    return Alert("route_fail", route, f"route {route} is now FAIL", {"pairs": 120, "rate": 0.05})


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "shadowdiff.alerts"]


async def test_generic_payload(receiver: StartReceiver, make_alerter: MakeAlerter):
    hook = await receiver()
    alerter = await make_alerter((hook.url, "generic"))
    alert = Alert("route_fail", "GET /<id>", "route GET /<id> is now FAIL", {"pairs": 120})

    assert alerter.fire(alert) is True
    await alerter.close(5)

    assert totals(alerter) == {"alerts.sent": 1}
    [(path, content_type, body)] = hook.seen
    assert (path, content_type) == (SECRET, "application/json")
    at = datetime.fromisoformat(body.pop("at"))
    assert at.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - at) < timedelta(seconds=5)
    assert body == {  # not escaped: JSON consumers get the route as it is
        "event": "route_fail",
        "run": "canary-7",
        "key": "GET /<id>",
        "text": "route GET /<id> is now FAIL",
        "details": {"pairs": 120},
    }


async def test_slack_payload_escapes_live_traffic(
    receiver: StartReceiver, make_alerter: MakeAlerter
):
    hook = await receiver()
    alerter = await make_alerter((hook.url, "slack"))
    alerter.run = "canary<1>"
    route = "GET /<!channel> & <https://evil.example|click>\nme"

    assert alerter.fire(route_fail(route))
    await alerter.close(5)

    [(_, _, body)] = hook.seen
    text = "route GET /&lt;!channel&gt; &amp; &lt;https://evil.example|click&gt; me is now FAIL"
    assert body == {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": "run canary&lt;1&gt; · event route_fail"}],
            },
        ],
    }
    assert b"<" not in orjson.dumps(body) and b">" not in orjson.dumps(body)


async def test_debounce_per_event_and_key(receiver: StartReceiver, make_alerter: MakeAlerter):
    hook = await receiver()
    now = [1000.0]
    alerter = await make_alerter((hook.url, "generic"), clock=lambda: now[0], debounce=300)

    assert alerter.fire(route_fail("GET /a"))
    now[0] += 299
    assert not alerter.fire(route_fail("GET /a"))  # same event and key, inside the interval
    assert alerter.fire(route_fail("GET /b"))  # another key
    assert alerter.fire(Alert("breaker_open", "GET /a", "open", {}))  # another event
    now[0] += 1
    assert alerter.fire(route_fail("GET /a"))  # 300 s after the last one sent
    await alerter.close(5)

    assert totals(alerter) == {"alerts.sent": 4, "alerts.debounced": 1}
    assert Counter((b["event"], b["key"]) for _, _, b in hook.seen) == {
        ("route_fail", "GET /a"): 2,
        ("route_fail", "GET /b"): 1,
        ("breaker_open", "GET /a"): 1,
    }


async def test_retried_until_success(receiver: StartReceiver, make_alerter: MakeAlerter):
    hook = await receiver(500, 500, 200)
    alerter = await make_alerter((hook.url, "slack"), retries=2)

    alerter.fire(route_fail())
    await alerter.close(5)

    assert totals(alerter) == {"alerts.sent": 1}
    assert len(hook.seen) == 3
    assert hook.seen[0][2] == hook.seen[2][2]  # the same alert each time


async def test_429_is_retried_and_other_4xx_are_not(
    receiver: StartReceiver, make_alerter: MakeAlerter, caplog: pytest.LogCaptureFixture
):
    """A 429 (or a 5xx) may pass later; a 400 or a 404 would fail the same way again."""
    caplog.set_level(logging.WARNING, logger="shadowdiff.alerts")
    limited = await receiver(429, 429, 200)
    refused = await receiver(400)
    gone = await receiver(404)
    alerter = await make_alerter(
        (limited.url, "slack"), (refused.url, "slack"), (gone.url, "generic"), retries=3
    )

    alerter.fire(route_fail())
    await alerter.close(5)

    assert (len(limited.seen), len(refused.seen), len(gone.seen)) == (3, 1, 1)
    assert totals(alerter) == {"alerts.sent": 1, "alerts.failed": 2}
    lines = warnings(caplog)
    assert sorted(re.findall(r"HTTP (\d+)", " ".join(lines))) == ["400", "404"]
    assert all("1 attempt" in line for line in lines)


async def test_a_408_is_retried_and_retry_after_is_waited_for(
    receiver: StartReceiver, make_alerter: MakeAlerter
):
    """A rate limit that says how long to wait gets that wait (here 1 s, where the backoff
    would wait 0.01 s); a request timeout (408) may pass on the next attempt."""
    limited = await receiver(429, 200)
    limited.retry_after = "1"
    slow = await receiver(408, 200)
    alerter = await make_alerter((limited.url, "generic"), (slow.url, "generic"), retries=1)

    alerter.fire(route_fail())
    await alerter.close(5)

    assert totals(alerter) == {"alerts.sent": 2}
    assert (len(limited.seen), len(slow.seen)) == (2, 2)
    assert 1.0 <= limited.times[1] - limited.times[0] < 2.0
    assert slow.times[1] - slow.times[0] < 0.5


async def test_always_failing_counted_once_and_logged_without_path(
    receiver: StartReceiver, make_alerter: MakeAlerter, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="shadowdiff.alerts")
    hook = await receiver(503)
    alerter = await make_alerter((hook.url, "slack"), retries=3, backoff=0.05)

    alerter.fire(route_fail())
    await alerter.close(5)

    assert totals(alerter) == {"alerts.failed": 1}
    assert len(hook.seen) == 4
    gaps = [b - a for a, b in zip(hook.times, hook.times[1:], strict=False)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2  # exponential backoff
    [line] = warnings(caplog)
    assert hook.url.split("/")[2] in line  # 127.0.0.1:PORT
    assert "HTTP 503" in line and "4 attempt" in line
    assert "s3cr3t" not in caplog.text and "/services" not in caplog.text


async def test_backoff_capped(
    receiver: StartReceiver, make_alerter: MakeAlerter, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(alerts, "MAX_BACKOFF", 0.05)
    hook = await receiver(500)
    alerter = await make_alerter((hook.url, "generic"), retries=3, backoff=1.0)

    started = time.monotonic()
    alerter.fire(route_fail())
    await alerter.close(5)

    assert totals(alerter) == {"alerts.failed": 1}
    assert time.monotonic() - started < 2  # 1 + 2 + 4 s uncapped


async def test_connection_refused_counts_failed(
    make_alerter: MakeAlerter, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="shadowdiff.alerts")
    alerter = await make_alerter((f"http://127.0.0.1:{free_port()}{SECRET}", "slack"), retries=1)

    assert alerter.fire(route_fail()) is True
    await alerter.close(5)

    assert totals(alerter) == {"alerts.failed": 1}
    [line] = warnings(caplog)
    assert "cannot connect" in line and "s3cr3t" not in caplog.text


async def test_timeout_counts_failed(
    receiver: StartReceiver, make_alerter: MakeAlerter, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="shadowdiff.alerts")
    hook = await receiver(hold=True)
    alerter = await make_alerter((hook.url, "generic"), retries=0, timeout=0.2)

    alerter.fire(route_fail())
    await alerter.close(5)

    assert totals(alerter) == {"alerts.failed": 1}
    assert "timed out" in warnings(caplog)[0]


async def test_dead_webhook_does_not_hold_up_the_other(
    receiver: StartReceiver, make_alerter: MakeAlerter
):
    dead, good = await receiver(hold=True), await receiver()
    alerter = await make_alerter((dead.url, "generic"), (good.url, "slack"), timeout=10)
    count = alerts.SENDERS_PER_WEBHOOK + 2

    for i in range(count):
        assert alerter.fire(route_fail(f"GET /{i}"))
    await until(lambda: len(good.seen) == count)
    assert len(dead.seen) == alerts.SENDERS_PER_WEBHOOK  # bounded: the rest wait their turn

    await alerter.close(0.1)
    assert totals(alerter) == {"alerts.sent": count, "alerts.dropped": count}


async def test_queue_full_drops(receiver: StartReceiver, make_alerter: MakeAlerter):
    hook = await receiver()
    alerter = await make_alerter((hook.url, "generic"), max_queue=2, start=False)

    assert alerter.fire(route_fail("GET /a"))
    assert alerter.fire(route_fail("GET /b"))
    assert not alerter.fire(route_fail("GET /c"))
    assert totals(alerter) == {"alerts.dropped": 1}
    assert not alerter.fire(route_fail("GET /c"))  # a dropped alert starts no debounce interval

    await alerter.start()  # what was queued before the start goes out
    await alerter.close(5)
    assert totals(alerter) == {"alerts.dropped": 2, "alerts.sent": 2}
    assert sorted(b["key"] for _, _, b in hook.seen) == ["GET /a", "GET /b"]


async def test_close_gives_up_on_a_slow_receiver(
    receiver: StartReceiver, make_alerter: MakeAlerter
):
    hook = await receiver(hold=True)
    alerter = await make_alerter((hook.url, "generic"), timeout=10)
    count = alerts.SENDERS_PER_WEBHOOK + 2  # some in flight, some still queued
    for i in range(count):
        alerter.fire(route_fail(f"GET /{i}"))
    await until(lambda: len(hook.seen) == alerts.SENDERS_PER_WEBHOOK)

    started = time.monotonic()
    await alerter.close(0.3)

    assert 0.3 <= time.monotonic() - started < 1.5
    assert totals(alerter) == {"alerts.dropped": count}
    assert alerter.fire(route_fail("GET /late")) is False  # closed: dropped, never raises
    assert totals(alerter) == {"alerts.dropped": count + 1}


async def test_details_that_are_not_json_still_deliver(
    receiver: StartReceiver, make_alerter: MakeAlerter
):
    hook = await receiver()
    alerter = await make_alerter((hook.url, "generic"))

    details: dict[Any, Any] = {"since": object(), 3: "x"}  # what the type forbids, all the same
    alerter.fire(Alert("paused", "mirror", "mirroring paused", details))
    await alerter.close(5)

    assert totals(alerter) == {"alerts.sent": 1}
    assert hook.seen[0][2]["details"]["3"] == "x"


async def test_no_webhooks_is_silent():
    alerter = Alerter(Alerts(), "canary-7", Counter())
    await alerter.start()

    assert alerter.fire(route_fail()) is False
    assert alerter.fire(route_fail()) is False
    await alerter.close(1)
    assert totals(alerter) == {}


async def test_an_incidents_messages_keep_their_order_through_retries(
    receiver: StartReceiver, make_alerter: MakeAlerter
):
    """A trigger answered 503 first waits out its backoff; the update and the resolve fired
    after it, taken by other senders meanwhile, wait for it, in order, and every sender
    lives on (the second review: a lock dropped while a woken waiter still needed it)."""
    from shadowdiff.model import Incident

    hook = await receiver(503, 200)
    alerter = await make_alerter((hook.url, "generic"), backoff=0.2)
    incident = Incident("r", "k" * 40, 1, "GET /a", "divergence_rate", "", "error", "s", 1, 2)
    for action in ("trigger", "update", "resolve", "trigger"):
        assert alerter.fire(Alert("route_fail", "GET /a", action, {}, incident, action))
    await until(lambda: len(hook.seen) == 5)
    assert [body["action"] for _, _, body in hook.seen] == [
        "trigger",  # 503
        "trigger",
        "update",
        "resolve",
        "trigger",
    ]
    # the last sender still reads its answer once the receiver has the post: then it is done
    await until(lambda: alerter._order == {}, timeout=5)
    assert all(not task.done() for task in alerter._senders)
    await alerter.close(1)
    assert totals(alerter) == {"alerts.sent": 4}
