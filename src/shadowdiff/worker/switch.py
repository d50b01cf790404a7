"""The kill switch and the dial of a running worker, the events they leave, and the
automatic kill switch (on the shadow's error rate, on a backlog of copies).

Runs on the worker's event loop. A change of the switch or the dial goes to the tap at once
(it applies it to the very next request), becomes an event in the store and an alert.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from shadowdiff.channel import Control
from shadowdiff.config import Config
from shadowdiff.faces import Alert, Alerter
from shadowdiff.model import Event

logger = logging.getLogger("shadowdiff.live")  # the name operators filter on


class Switch:
    def __init__(
        self,
        cfg: Config,
        control: Control,
        send: Callable[[Control], None],
        alerter: Alerter,
    ) -> None:
        self.cfg = cfg
        self.control = control
        self.send = send
        self.alerter = alerter
        self.events: list[Event] = []
        self.recent: deque[bool] = deque(maxlen=cfg.alerts.auto_pause.window)
        self.on_mitigation: Callable[[], None] = lambda: None
        """Told when mirroring stops here: paused, or dialled to 0 (see `stopped`)."""
        self.on_paused: Callable[[str], None] = lambda actor: None
        """Told who paused mirroring here (`auto: …` for the automatic kill switch)."""
        self.stopped: tuple[float, str] | None = None
        """Since when and why this proxy mirrors nothing (paused or dialled to 0), if so."""
        if control.paused or control.rate == 0:  # as the worker before this one left it
            what = "mirroring paused" if control.paused else "sample rate dialled to 0"
            self.stopped = (time.time(), what)

    # -- the switch and the dial -----------------------------------------------------------

    @property
    def rate(self) -> float:
        """The global share mirrored when not paused: the dial, or the config's rate."""
        return self.cfg.sampling.rate if self.control.rate is None else self.control.rate

    def pause(self, actor: str) -> Control:
        return self._set(Control(True, self.control.rate), actor)

    def resume(self, actor: str) -> Control:
        return self._set(Control(False, self.control.rate), actor)

    def dial(self, rate: float | None, actor: str) -> Control:
        """`rate` replaces every configured rate; None gives them back."""
        return self._set(Control(self.control.paused, rate), actor)

    def _set(self, new: Control, actor: str, event: str | None = None) -> Control:
        """Applies a change; only a real change reaches the tap, the store and the alerts."""
        old, old_rate = self.control, self.rate
        if new == old:
            return old
        self.control = new
        self.send(new)
        now = time.time()
        if new.paused != old.paused:
            kind = "paused" if new.paused else "resumed"
            self.events.append(Event(now, kind, actor, _flag(old.paused), _flag(new.paused)))
            if new.paused:
                self.on_paused(actor)
            logger.warning("mirroring %s by %s", kind, actor)
            self.alerter.fire(
                Alert(
                    event or kind,
                    "mirror",
                    f"shadowdiff run {self.cfg.run}: mirroring {kind} by {actor}",
                    {"actor": actor, "rate": self.rate},
                    change=True,
                )
            )
        if self.rate != old_rate:
            self.events.append(Event(now, "sample_rate", actor, f"{old_rate:g}", f"{self.rate:g}"))
            logger.warning("sample rate %g → %g by %s", old_rate, self.rate, actor)
            self.alerter.fire(
                Alert(
                    "sample_rate",
                    "dial",
                    f"shadowdiff run {self.cfg.run}: sample rate {old_rate:g} → {self.rate:g}"
                    f" by {actor}",
                    {"actor": actor, "old": old_rate, "new": self.rate},
                    change=True,
                    message=False,
                )
            )
        was = self.stopped
        if not (new.paused or new.rate == 0):  # the dial at 0 mirrors no route at all
            self.stopped = None
        elif was is None:
            what = "mirroring paused" if new.paused else "sample rate dialled to 0"
            self.stopped = (now, f"{what} by {actor}")
            self.on_mitigation()
        return new

    def state(self) -> dict[str, Any]:
        """What the control server shows of the switch and the dial."""
        return {
            "paused": self.control.paused,
            "rate": self.rate,
            "config_rate": self.cfg.sampling.rate,
            "dial": self.control.rate,
        }

    def take_events(self) -> list[Event]:
        events, self.events = self.events, []
        return events

    # -- what the worker reports -----------------------------------------------------------

    def on_copy(self, target: str, ok: bool) -> None:
        """The automatic kill switch on the shadow's recent error rate."""
        threshold = self.cfg.alerts.auto_pause.shadow_error_rate
        if target != "shadow" or threshold is None:
            return
        self.recent.append(ok)
        if len(self.recent) < (self.recent.maxlen or 0) or self.control.paused:
            return
        rate = self.recent.count(False) / len(self.recent)
        if rate >= threshold:
            self.recent.clear()
            why = f"shadow error rate {rate:.0%} over the last {self.cfg.alerts.auto_pause.window}"
            self._set(Control(True, self.control.rate), f"auto: {why}", "auto_paused")

    def on_backlog(self, waiting: int) -> None:
        """The automatic kill switch on copies piling up in the worker."""
        limit = self.cfg.alerts.auto_pause.backlog
        if limit is None or waiting < limit or self.control.paused:
            return
        why = f"{waiting} copies waiting (backlog limit {limit})"
        self._set(Control(True, self.control.rate), f"auto: {why}", "auto_paused")

    def on_breaker(self, target: str, state: str) -> None:
        if state == "half_open":
            return
        self.alerter.fire(
            Alert(
                f"breaker_{state}",
                target,
                f"shadowdiff run {self.cfg.run}: circuit breaker for the {target} is {state}",
                {"target": target, "state": state},
            )
        )


def _flag(value: bool) -> str:
    return "true" if value else "false"
