"""The circuit breaker's states, driven by a fake clock."""

from __future__ import annotations

from shadowdiff.config import Breaker
from shadowdiff.worker.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def breaker(**kw) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    cfg = Breaker(**{"min_requests": 4, "error_rate": 0.5, "cool_down": 5, "probes": 2, **kw})
    return CircuitBreaker(cfg, clock=clock), clock


def test_opens_only_after_min_requests_at_error_rate():
    b, _ = breaker()
    assert [b.record(False) for _ in range(3)] == [None, None, None]
    assert b.record(False) == OPEN and not b.allow()


def test_stays_closed_below_error_rate():
    b, _ = breaker()
    for ok in [True, True, False, True, True, False, True]:
        assert b.record(ok) is None
    assert b.state == CLOSED and b.allow()


def test_old_outcomes_leave_the_window():
    b, clock = breaker(window=10)
    for _ in range(3):
        b.record(False)
    clock.now = 20
    for _ in range(3):
        assert b.record(True) is None
    assert b.record(False) is None  # 1 error of 4 in the window


def test_half_open_probes_then_close():
    b, clock = breaker()
    for _ in range(4):
        b.record(False)
    clock.now = 4.9
    assert not b.allow()
    clock.now = 5.0
    assert b.allow() and b.state == HALF_OPEN
    assert b.allow()
    assert not b.allow()  # only `probes` copies while half-open
    assert b.record(True) is None
    assert b.record(True) == CLOSED and b.allow()


def test_ready_takes_no_probe_slot():
    b, clock = breaker()
    for _ in range(4):
        b.record(False)
    clock.now = 5.0
    assert all(b.ready() for _ in range(10))  # asking is free
    assert b.allow() and b.allow() and not b.allow()
    assert not b.ready()


def test_failed_probe_reopens():
    b, clock = breaker()
    for _ in range(4):
        b.record(False)
    clock.now = 6
    assert b.allow()
    assert b.record(False) == OPEN
    clock.now = 10
    assert not b.allow()
    clock.now = 11
    assert b.allow()
