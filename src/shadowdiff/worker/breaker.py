"""A circuit breaker per mirror target: stop sending copies to a target that keeps failing.

Closed: copies flow; outcomes are kept for `window` seconds, and when at least `min_requests`
of them show an error rate of `error_rate` or more, it opens. Open: no copies for `cool_down`.
Half-open: up to `probes` copies go through; all succeeding closes it, any failure re-opens it.
Pure logic with an injectable clock, so it is tested without waiting.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from shadowdiff.config import Breaker as BreakerConfig

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    def __init__(self, cfg: BreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.clock = clock
        self.state = CLOSED
        self.outcomes: deque[tuple[float, bool]] = deque()
        self.errors = 0
        self.opened_at = 0.0
        self.probes_sent = 0
        self.probes_ok = 0

    def ready(self) -> bool:
        """Would `allow` let a copy through? Asks without taking a probe slot, so one target's
        refusal never uses up another target's probes."""
        if self.state == OPEN:
            return self.clock() - self.opened_at >= self.cfg.cool_down
        if self.state == HALF_OPEN:
            return self.probes_sent < self.cfg.probes
        return True

    def allow(self) -> bool:
        """May a copy be sent now? In half-open state this takes one of the probe slots."""
        if not self.ready():
            return False
        if self.state == OPEN:
            self.state, self.probes_sent, self.probes_ok = HALF_OPEN, 0, 0
        if self.state == HALF_OPEN:
            self.probes_sent += 1
        return True

    def release(self) -> None:
        """Gives back the probe slot `allow` took for a copy that was never sent."""
        if self.state == HALF_OPEN and self.probes_sent > 0:
            self.probes_sent -= 1

    def record(self, ok: bool) -> str | None:
        """Feeds one outcome; returns the new state when this outcome changed it."""
        now = self.clock()
        if self.state == HALF_OPEN:
            if not ok:
                return self._open(now)
            self.probes_ok += 1
            if self.probes_ok >= self.cfg.probes:
                self.state = CLOSED
                self.outcomes.clear()
                self.errors = 0
                return CLOSED
            return None
        if self.state == OPEN:
            return None
        self.outcomes.append((now, ok))
        self.errors += not ok
        while self.outcomes and now - self.outcomes[0][0] > self.cfg.window:
            _, old_ok = self.outcomes.popleft()
            self.errors -= not old_ok
        total = len(self.outcomes)
        if total >= self.cfg.min_requests and self.errors / total >= self.cfg.error_rate:
            return self._open(now)
        return None

    def _open(self, now: float) -> str:
        self.state = OPEN
        self.opened_at = now
        self.outcomes.clear()
        self.errors = 0
        return OPEN
