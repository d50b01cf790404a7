"""The live state of a worker: the switch and the dial, their events, the automatic kill switch,
breaker and FAIL alerts (delivered to a real receiver), and the cached live verdict."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

from conftest import Receiver
from shadowdiff.alerts import Alerter
from shadowdiff.config import Config, load_config
from shadowdiff.exchange import Control, Exchange, Outcome, RequestSnapshot
from shadowdiff.live import Live
from shadowdiff.recorder import Recorder
from shadowdiff.store import Store


def config(receiver: Receiver, tmp_path: Path, **auto: Any) -> Config:
    return load_config(
        None,
        {
            "shadow": "http://127.0.0.1:9",
            "store": str(tmp_path / "l.db"),
            "judge.min_pairs": 5,
            "alerts.webhooks": [{"url": receiver.url, "format": "generic"}],
            "alerts.debounce": "1ms",
            **{f"alerts.auto_pause.{k}": v for k, v in auto.items()},
        },
    )


async def live_for(cfg: Config) -> tuple[Live, list[Control], Alerter]:
    sent: list[Control] = []
    alerter = Alerter(cfg.alerts, cfg.run, Counter())
    await alerter.start()
    return Live(cfg, Control(False, None), sent.append, alerter), sent, alerter


async def delivered(receiver: Receiver, n: int) -> list[str]:
    deadline = time.monotonic() + 5
    while len(receiver.got) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # and nothing more
    return [a["event"] for a in receiver.got]


async def test_switch_and_dial_reach_the_tap_and_leave_events(receiver, tmp_path):
    live, sent, alerter = await live_for(config(receiver, tmp_path))
    assert live.rate == 0.1
    live.pause("alice")
    live.pause("bob")  # no change: no record, no event, no alert
    live.dial(0.02, "alice")
    live.resume("carol")
    assert sent == [Control(True, None), Control(True, 0.02), Control(False, 0.02)]
    events = live.take_events()
    assert [(e.kind, e.actor, e.old, e.new) for e in events] == [
        ("paused", "alice", "false", "true"),
        ("sample_rate", "alice", "0.1", "0.02"),
        ("resumed", "carol", "true", "false"),
    ]
    assert live.take_events() == [] and live.rate == 0.02
    assert await delivered(receiver, 2) == ["paused", "resumed"]
    await alerter.close(1)
    await live.close()


async def test_auto_pause_on_shadow_errors(receiver, tmp_path):
    cfg = config(receiver, tmp_path, shadow_error_rate=0.5, window=10)
    live, sent, alerter = await live_for(cfg)
    for ok in [True] * 6 + [False] * 4:
        live.on_copy("shadow", ok)
    live.on_copy("secondary", False)  # only the shadow's errors count
    assert sent == []
    live.on_copy("shadow", False)  # now 5 of the last 10
    assert sent == [Control(True, None)]
    (event,) = live.take_events()
    assert event.actor == "auto: shadow error rate 50% over the last 10"
    assert await delivered(receiver, 1) == ["auto_paused"]
    await alerter.close(1)
    await live.close()


async def test_auto_pause_on_backlog_and_breaker_alerts(receiver, tmp_path):
    live, sent, alerter = await live_for(config(receiver, tmp_path, backlog=50))
    live.on_backlog(49)
    assert sent == []
    live.on_backlog(50)
    live.on_backlog(80)  # already paused: once is enough
    assert sent == [Control(True, None)]
    live.on_breaker("shadow", "open")
    live.on_breaker("shadow", "half_open")
    live.on_breaker("shadow", "closed")
    assert await delivered(receiver, 3) == ["auto_paused", "breaker_open", "breaker_closed"]
    assert receiver.got[1]["key"] == "shadow"
    await alerter.close(1)
    await live.close()


def doc(*failing: str) -> dict[str, Any]:
    checks = [{"route": r, "result": "FAIL", "id": "divergence", "detail": "d"} for r in failing]
    return {"checks": [*checks, {"route": "GET /ok", "result": "PASS", "id": "x", "detail": ""}]}


async def test_an_alert_when_a_route_turns_fail_not_while_it_stays(receiver, tmp_path):
    live, _, alerter = await live_for(config(receiver, tmp_path))
    live.alert_failures(doc("GET /a"))
    live.alert_failures(doc("GET /a"))
    live.alert_failures(doc("GET /a", "GET /b"))
    live.alert_failures(doc())
    await asyncio.sleep(0.01)
    live.alert_failures(doc("GET /a"))  # failing again after it recovered
    assert await delivered(receiver, 3) == ["route_fail"] * 3
    assert [a["key"] for a in receiver.got] == ["GET /a", "GET /b", "GET /a"]
    await alerter.close(1)
    await live.close()


def exchange(i: int, by: str) -> Exchange:
    request = RequestSnapshot(f"f{i}", "GET", f"/users/{i}", [], b"", 1.0)
    ok = [(b"content-type", b"application/json")]
    return Exchange(
        request,
        Outcome(200, ok, b'{"by": "p"}', 0.01),
        Outcome(200, ok, f'{{"by": "{by}"}}'.encode(), 0.01),
        None,
        route="",
    )


async def test_live_verdict_is_cached_and_narrowed(receiver, tmp_path):
    cfg = config(receiver, tmp_path)
    with Store(cfg.store) as store:
        Recorder(cfg, "i", store).record([exchange(i, "s") for i in range(8)], {})
    live, _, alerter = await live_for(cfg)
    first = await live.verdict()
    assert first["verdict"] == "FAIL" and first["routes"][0]["route"] == "GET /users/{id}"
    assert await live.verdict() is first  # within FRESH: the same judgement
    together = await asyncio.gather(live.verdict(), live.verdict())
    assert together[0] is together[1]
    narrowed = await live.verdict("GET /users/{id}")
    assert narrowed["verdict"] == "FAIL" and narrowed is not first
    assert (await live.verdict("GET /other"))["verdict"] == "INCONCLUSIVE"
    rows = await live.divergences(5)
    assert len(rows) == 5 and rows[0][:3] == ("GET /users/{id}", "body:$.by", "changed")
    examples = await live.examples("GET /users/{id}", "body:$.by")
    assert 1 <= len(examples) <= 5 and '"s"' in examples[0]["shadow"]["body"]
    await alerter.close(1)
    await live.close()
