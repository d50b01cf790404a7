"""The switch of a worker: the kill switch and the dial, their events, the automatic kill
switch, and breaker alerts (delivered to a real receiver)."""

from __future__ import annotations

from collections import Counter

from helpers import alerting_config as config
from helpers import delivered

from shadowdiff.channel import Control
from shadowdiff.config import Config
from shadowdiff.faces.alerts import Alerter
from shadowdiff.worker.switch import Switch


async def switch_for(cfg: Config) -> tuple[Switch, list[Control], Alerter]:
    sent: list[Control] = []
    alerter = Alerter(cfg.alerts, cfg.run, Counter())
    await alerter.start()
    return Switch(cfg, Control(False, None), sent.append, alerter), sent, alerter


async def test_switch_and_dial_reach_the_tap_and_leave_events(receiver, tmp_path):
    switch, sent, alerter = await switch_for(config(receiver, tmp_path))
    assert switch.rate == 0.1
    switch.pause("alice")
    switch.pause("bob")  # no change: no record, no event, no alert
    switch.dial(0.02, "alice")
    switch.resume("carol")
    assert sent == [Control(True, None), Control(True, 0.02), Control(False, 0.02)]
    events = switch.take_events()
    assert [(e.kind, e.actor, e.old, e.new) for e in events] == [
        ("paused", "alice", "false", "true"),
        ("sample_rate", "alice", "0.1", "0.02"),
        ("resumed", "carol", "true", "false"),
    ]
    assert switch.take_events() == [] and switch.rate == 0.02
    assert await delivered(receiver, 2) == ["paused", "resumed"]
    await alerter.close(1)


async def test_auto_pause_on_shadow_errors(receiver, tmp_path):
    cfg = config(receiver, tmp_path, shadow_error_rate=0.5, window=10)
    switch, sent, alerter = await switch_for(cfg)
    for ok in [True] * 6 + [False] * 4:
        switch.on_copy("shadow", ok)
    switch.on_copy("secondary", False)  # only the shadow's errors count
    assert sent == []
    switch.on_copy("shadow", False)  # now 5 of the last 10
    assert sent == [Control(True, None)]
    (event,) = switch.take_events()
    assert event.actor == "auto: shadow error rate 50% over the last 10"
    assert await delivered(receiver, 1) == ["auto_paused"]
    await alerter.close(1)


async def test_auto_pause_on_backlog_and_breaker_alerts(receiver, tmp_path):
    switch, sent, alerter = await switch_for(config(receiver, tmp_path, backlog=50))
    switch.on_backlog(49)
    assert sent == []
    switch.on_backlog(50)
    switch.on_backlog(80)  # already paused: once is enough
    assert sent == [Control(True, None)]
    switch.on_breaker("shadow", "open")
    switch.on_breaker("shadow", "half_open")
    switch.on_breaker("shadow", "closed")
    assert await delivered(receiver, 3) == ["auto_paused", "breaker_open", "breaker_closed"]
    assert receiver.got[1]["key"] == "shadow"
    await alerter.close(1)


async def test_stopping_mirroring_is_a_mitigation_once(receiver, tmp_path):
    """Paused or dialled to 0: the switch says since when and why, and tells once."""
    switch, _, alerter = await switch_for(config(receiver, tmp_path))
    told: list[tuple[float, str] | None] = []
    switch.on_mitigation = lambda: told.append(switch.stopped)
    switch.dial(0.0, "ops")
    switch.pause("alice")  # stopped already: not a second mitigation
    assert (
        len(told) == 1 and told[0] is not None and told[0][1] == "sample rate dialled to 0 by ops"
    )
    switch.dial(None, "ops")
    assert switch.stopped is not None  # still paused
    switch.resume("alice")
    assert switch.stopped is None
    switch.pause("bob")
    assert switch.stopped is not None and switch.stopped[1] == "mirroring paused by bob"
    assert len(told) == 2
    await alerter.close(1)
