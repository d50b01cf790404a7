"""The live side of a running worker: the kill switch and the dial, the events they leave,
the automatic kill switch, and the live verdict with the alerts it fires.

Runs on the worker's event loop. A change of the switch or the dial goes to the tap at once
(it applies it to the very next request) and becomes an event in the store. Reading the store
and judging run in a thread of their own, so copies never wait for a verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shadowdiff.alerts import Alert, Alerter
from shadowdiff.config import Config
from shadowdiff.exchange import Control, Event
from shadowdiff.redact import Redactor
from shadowdiff.store import Store, open_store

logger = logging.getLogger("shadowdiff.live")

FRESH = 1.0
"""Seconds a computed verdict is served before it is judged again."""
MAX_CACHED = 100
"""Verdicts of single routes kept; the cache starts afresh beyond."""


class Live:
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
        self.failing: set[str] = set()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verdict")
        self.reader: Store | None = None  # opened and used in the verdict thread only
        self.latest: dict[str | None, tuple[float, dict[str, Any]]] = {}
        self.judging: dict[str | None, asyncio.Future[dict[str, Any]]] = {}

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
            logger.warning("mirroring %s by %s", kind, actor)
            self.alerter.fire(
                Alert(
                    event or kind,
                    "mirror",
                    f"shadowdiff run {self.cfg.run}: mirroring {kind} by {actor}",
                    {"actor": actor, "rate": self.rate},
                )
            )
        if self.rate != old_rate:
            self.events.append(Event(now, "sample_rate", actor, f"{old_rate:g}", f"{self.rate:g}"))
            logger.warning("sample rate %g → %g by %s", old_rate, self.rate, actor)
        return new

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

    # -- the live verdict ------------------------------------------------------------------

    async def verdict(self, route: str | None = None) -> dict[str, Any]:
        """The verdict document of the run (or of one route); at most FRESH seconds old.

        Callers asking at once share one judgement; the store is read in the verdict thread.
        """
        cached = self.latest.get(route)
        if cached and time.monotonic() - cached[0] < FRESH:
            return cached[1]
        judging = self.judging.get(route)
        if judging is None:
            judging = asyncio.ensure_future(self._in_thread(self._document, route))
            self.judging[route] = judging
            judging.add_done_callback(lambda done: self._judged(route, done))
        return await asyncio.shield(judging)

    def _judged(self, route: str | None, future: asyncio.Future[dict[str, Any]]) -> None:
        del self.judging[route]
        if not future.cancelled() and future.exception() is None:
            if len(self.latest) >= MAX_CACHED:  # routes come from the query string: bounded
                self.latest.clear()
            self.latest[route] = (time.monotonic(), future.result())

    async def watch(self, stop: asyncio.Event) -> None:
        """Judges the run every `control.verdict_every` to alert on routes that turn FAIL
        (only when there are webhooks to tell)."""
        if not self.cfg.alerts.webhooks:
            return
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.cfg.control.verdict_every)
            if stop.is_set():
                return
            try:
                doc = await self.verdict()
            except Exception as e:  # an unreadable store is shown by /healthz, not fatal here
                logger.error("cannot judge the run: %s", e)
                continue
            self.alert_failures(doc)

    def alert_failures(self, doc: dict[str, Any]) -> None:
        failing = {c["route"] for c in doc["checks"] if c["result"] == "FAIL"}
        for route in sorted(failing - self.failing):
            details = [c for c in doc["checks"] if c["route"] == route and c["result"] == "FAIL"]
            self.alerter.fire(
                Alert(
                    "route_fail",
                    route,
                    f"shadowdiff run {self.cfg.run}: {route} is FAIL "
                    f"({'; '.join(c['detail'] for c in details)})",
                    {"route": route, "checks": [c["id"] for c in details]},
                )
            )
        self.failing = failing

    async def examples(self, route: str, path: str) -> list[dict[str, Any]]:
        return await self._in_thread(self._examples, route, path)

    async def divergences(self, limit: int) -> list[tuple[str, str, str, str, str]]:
        return await self._in_thread(lambda: self._store().recent_divergences(self.cfg.run, limit))

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _store(self) -> Store:
        if self.reader is None:
            self.reader = open_store(self.cfg.store, create=False)
        return self.reader

    def _document(self, route: str | None) -> dict[str, Any]:
        from shadowdiff.evidence import document  # scipy: a second of import, not at start

        doc, _, _ = document(self._store(), self.cfg.run, self.cfg, route, live=True)
        return doc

    def _examples(self, route: str, path: str) -> list[dict[str, Any]]:
        from shadowdiff.evidence import shown_examples

        return shown_examples(self._store(), self.cfg.run, route, path, Redactor(self.cfg.redact))

    async def close(self) -> None:
        if self.reader is not None:
            await self._in_thread(self.reader.close)
        self.executor.shutdown()


def _flag(value: bool) -> str:
    return "true" if value else "false"
