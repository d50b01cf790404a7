"""The live verdict of a running worker, and the incidents of the routes that turn FAIL.

Reading the store and judging run in a thread of their own, so copies never wait for a
verdict; concurrent callers share one judgement, kept FRESH seconds. The route of a query
string is judged only if the store knows it, and only MAX_PENDING routes wait for the verdict
thread at once: a scraper of made-up or many routes cannot queue judgements without end.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from shadowdiff.compare import Redactor
from shadowdiff.config import Config
from shadowdiff.faces.alerts import Alert, Alerter
from shadowdiff.faces.incidents import Incidents, fleet, silenced
from shadowdiff.judge.window import Reading, Readings, reading  # no scipy in this one
from shadowdiff.model import Incident
from shadowdiff.pace import pause
from shadowdiff.store import Store, open_store

if TYPE_CHECKING:  # the judge package imports scipy: loaded lazily, below
    from shadowdiff.judge.schema import Example, VerdictDocument

logger = logging.getLogger("shadowdiff.live")  # the name operators filter on

T = TypeVar("T")

FRESH = 1.0
"""Seconds a computed verdict is served before it is judged again."""
STALE = 30.0
"""Seconds a verdict older than FRESH may still be served while the next is judged, when
that takes longer than PATIENCE (a long run's judgement takes about a second); older than
this, callers wait for the new one."""
PATIENCE = 0.1
"""Seconds a caller waits for the judgement under way before it is given the last verdict:
a quick judgement is always served fresh."""
MAX_CACHED = 100
"""Verdicts of single routes kept; the cache starts afresh beyond."""
MAX_PENDING = 4
"""Distinct routes judged or waiting for the verdict thread at once (the whole run's verdict
always gets its turn); beyond, callers are told to come back (`Busy`)."""
RETRY_AFTER = str(math.ceil(FRESH))
"""What a busy server tells a caller to wait, in seconds (a Retry-After header)."""
LAST_WORDS = 0.5
"""Seconds a stopping proxy gives the others of its run to say they stop too, before it
decides whether it is the last (and the run has ended)."""
ALIVE = 30.0
"""Seconds since its last heartbeat within which a proxy counts as one of the run's, at
least (a busy verdict thread may hold a heartbeat for a few seconds)."""


class UnknownRoute(LookupError):
    """The store holds no exchange of the route asked for."""


class Busy(RuntimeError):
    """MAX_PENDING routes are being judged already."""


class LiveVerdict:
    def __init__(self, cfg: Config, alerter: Alerter, instance: str = "") -> None:
        self.cfg = cfg
        self.alerter = alerter
        self.instance = instance
        self.stopped: Callable[[], tuple[float, str] | None] = lambda: None
        """Since when and why this proxy mirrors nothing, if so (the worker's switch)."""
        self.reset_at = 0.0
        """The last fleet-wide mitigation, after which the incidents' window started again."""
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verdict")
        # the route list is read beside the judgements, so an unknown route needs no wait
        self.lister = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verdict-routes")
        self.reader: Store | None = None  # shared by both threads: opened under `opening`
        self.opening = threading.Lock()
        self.latest: dict[str | None, tuple[float, VerdictDocument]] = {}
        self.judging: dict[str | None, asyncio.Future[VerdictDocument]] = {}
        self.known: tuple[float, frozenset[str]] = (-math.inf, frozenset())
        self.listing: asyncio.Future[frozenset[str]] | None = None
        self.incidents = Incidents(cfg)
        self.readings = Readings(cfg.incidents.window)
        self.tasks: set[asyncio.Future[Any]] = set()

    async def verdict(self, route: str | None = None, wait: bool = False) -> VerdictDocument:
        """The verdict document of the run (or of one route): judged again once FRESH seconds
        old; while that takes more than PATIENCE, the previous one is served if it is under
        STALE seconds old.

        Callers asking at once share one judgement; the store is read in the verdict thread.
        Raises `UnknownRoute` for a route the store does not hold, `Busy` when MAX_PENDING
        other routes are being judged. `wait`: never the previous verdict (the release's
        gate acts on the verdict it gets).
        """
        cached = self.latest.get(route)
        age = time.monotonic() - cached[0] if cached else math.inf
        if cached and age < FRESH:
            return cached[1]
        if route is not None and route not in await self._routes(route):
            raise UnknownRoute(route)
        judging = self.judging.get(route)
        if judging is None:
            if route is not None and sum(r is not None for r in self.judging) >= MAX_PENDING:
                if cached and age < STALE:
                    return cached[1]
                raise Busy(route)
            judging = asyncio.ensure_future(self._in_thread(self._document, route))
            self.judging[route] = judging
            judging.add_done_callback(lambda done: self._judged(route, done))
        if not cached or age >= STALE or wait:
            return await asyncio.shield(judging)
        done, _ = await asyncio.wait({asyncio.shield(judging)}, timeout=PATIENCE)
        return done.pop().result() if done else cached[1]

    async def _routes(self, wanted: str) -> frozenset[str]:
        """The routes of the run, read again (once for all who ask) when `wanted` is not
        among them and the list is older than FRESH."""
        at, known = self.known
        if wanted in known or time.monotonic() - at < FRESH:
            return known
        if self.listing is None:
            loop = asyncio.get_running_loop()
            self.listing = asyncio.ensure_future(loop.run_in_executor(self.lister, self._list))
            self.listing.add_done_callback(self._listed)
        return await asyncio.shield(self.listing)

    def _listed(self, future: asyncio.Future[frozenset[str]]) -> None:
        self.listing = None
        if not future.cancelled() and future.exception() is None:
            self.known = (time.monotonic(), future.result())

    def _list(self) -> frozenset[str]:
        return frozenset(self._store().routes(self.cfg.run))

    def _judged(self, route: str | None, future: asyncio.Future[VerdictDocument]) -> None:
        del self.judging[route]
        failed = not future.cancelled() and future.exception() is not None
        if failed and route in self.latest:  # its callers were served the last one, unaware
            logger.warning(
                "cannot judge the run again, serving the last verdict: %s", future.exception()
            )
        if not future.cancelled() and future.exception() is None:
            if len(self.latest) >= MAX_CACHED:  # routes come from the query string: bounded
                self.latest.clear()
            self.latest[route] = (time.monotonic(), future.result())

    async def watch(self, stop: asyncio.Event) -> None:
        """Judges the run's window every `control.verdict_every` and applies it to the
        incidents (only when there is a destination to tell); asks Alertmanager for silences
        every `incidents.poll_silences` while one is open."""
        if not self.alerter.destinations:
            return
        polled = -math.inf
        while not await pause(stop, self.cfg.control.verdict_every):
            try:
                self._fire(await self._in_thread(self._incident_tick))
                if time.monotonic() - polled >= self.cfg.incidents.poll_silences:
                    polled = time.monotonic()
                    await self._silences()
            except Exception as e:  # an unreadable store is shown by /healthz, not fatal here
                logger.error("cannot judge the run's incidents: %s", e)

    async def start(self) -> None:
        """Reads the run as it is before any traffic: the start of the incidents' window
        (a proxy started again on a run judges what comes after it)."""
        if not self.alerter.destinations:
            return
        try:
            await self._in_thread(self._reading)
        except Exception as e:  # the first tick starts the window then
            logger.error("cannot read the run's aggregates: %s", e)

    def _reading(self) -> Reading:
        store, at = self._store(), time.time()
        store.heartbeat(self.cfg.run, self.instance, at, self.stopped())  # one of the run's
        now = reading(store, self.cfg.run, at)
        self.readings.window(store, now)
        return now

    def _incident_tick(self) -> list[Alert]:
        """One judgement of the incidents: the fleet's state first (a mitigation resolves
        them, and the window starts again after it), then the window's checks."""
        store, at = self._store(), time.time()
        store.heartbeat(self.cfg.run, self.instance, at, self.stopped())
        state = fleet(store.proxies(self.cfg.run, at - self._alive()))
        if state.mitigated:
            if state.since > self.reset_at:  # evidence from before it is what was mitigated
                self.readings, self.reset_at = Readings(self.cfg.incidents.window), state.since
            return self.incidents.mitigated(store, state)
        from shadowdiff.judge import window_verdict  # scipy, as in _document

        now = reading(store, self.cfg.run, at)
        window = self.readings.window(store, now)
        verdict = window_verdict(store, window, self.cfg.run, self.cfg)
        return self.incidents.judged(store, verdict.checks, window.base.at, at, now.routes)

    def _alive(self) -> float:
        """Seconds since its last heartbeat within which a proxy counts as one of the run's."""
        return max(3 * self.cfg.control.verdict_every + 2.0, ALIVE)

    async def _silences(self) -> None:
        """An Alertmanager silence over an open incident's alert acknowledges it."""
        open_ = await self.incident_list(open_only=True)
        if not open_ or not self.alerter.alertmanagers:
            return
        found = await self.alerter.silences()
        run = self.cfg.run

        def matched() -> list[tuple[Incident, str]]:  # regexes: off the loop
            return [
                (i, str(s.get("createdBy") or "someone")[:80])
                for s in found
                for i in open_
                if i.acked is None and silenced(i, run, s)
            ]

        for incident, who in await self._in_thread(matched):
            await self.ack(incident.key, f"{who} (an Alertmanager silence)", page=True)

    def _fire(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            self.alerter.fire(alert)

    async def ack(self, key: str, actor: str, page: bool = True) -> Incident | None:
        """Acknowledges the open incident of dedup key (or unique prefix) `key`; None if
        there is none. `page`: tell PagerDuty (not when the ack came from it)."""
        at = time.time()  # now, not when the verdict thread gets to it
        incident, alerts = await self._in_thread(
            lambda: self.incidents.ack(self._store(), key, actor, at, page)
        )
        self._fire(alerts)
        return incident

    def mitigate(self) -> None:
        """This proxy stopped mirroring (the switch, on the loop): the incidents are judged
        at once, in the verdict thread, without holding the caller."""
        if self.alerter.destinations:
            self._background(self._incident_tick)

    def rolled_back(self, at: float, why: str) -> None:
        """The release was rolled back (on the loop): its open incidents are mitigated."""
        if self.alerter.destinations:
            self._background(lambda: self.incidents.rolled_back(self._store(), at, why))

    def sent(self, alert: Alert, at: float) -> None:
        """The alerter delivered `alert` (on the loop): a trigger's moment is kept."""
        if alert.incident is not None:
            self._background(lambda: self.incidents.sent(self._store(), alert, at))

    def _background(self, fn: Callable[[], list[Alert] | None]) -> None:
        task = asyncio.ensure_future(self._in_thread(fn))
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[list[Alert] | None]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        if task.exception() is not None:
            logger.error("cannot judge the run's incidents: %s", task.exception())
        else:
            self._fire(task.result() or [])

    async def end(self, ending: bool) -> None:
        """This worker stops. `ending`: so does its proxy (not a script reload, whose next
        worker goes on); once no other proxy of the run is left (they may be stopping too:
        a moment for them to say so), the run has ended and its incidents resolve."""
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if not self.alerter.destinations:
            return
        run = self.cfg.run
        try:
            await self._in_thread(lambda: self._store().gone(run, self.instance))
            if not ending:
                return
            await asyncio.sleep(LAST_WORDS)
            if not await self._in_thread(
                lambda: self._store().proxies(run, time.time() - self._alive())
            ):
                self._fire(
                    await self._in_thread(lambda: self.incidents.ended(self._store(), time.time()))
                )
        except Exception as e:  # the store's trouble is reported by the recorder too
            logger.error("cannot resolve the run's incidents: %s", e)

    async def incident_list(self, open_only: bool = False) -> list[Incident]:
        return await self._in_thread(lambda: self._store().incidents(self.cfg.run, open_only))

    async def examples(self, route: str, path: str) -> list[Example]:
        return await self._in_thread(self._examples, route, path)

    async def divergences(self, limit: int) -> list[tuple[str, str, str, str, str]]:
        return await self._in_thread(lambda: self._store().recent_divergences(self.cfg.run, limit))

    async def _in_thread(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _store(self) -> Store:
        with self.opening:
            if self.reader is None:
                self.reader = open_store(self.cfg.store, create=False)
            return self.reader

    def _document(self, route: str | None) -> VerdictDocument:
        from shadowdiff.judge import document  # scipy: a second of import, not at start

        doc, _, _ = document(self._store(), self.cfg.run, self.cfg, route, live=True)
        return doc

    def _examples(self, route: str, path: str) -> list[Example]:
        from shadowdiff.judge import shown_examples

        return shown_examples(self._store(), self.cfg.run, route, path, Redactor(self.cfg.redact))

    async def close(self) -> None:
        self.lister.shutdown()
        if self.reader is not None:
            await self._in_thread(self.reader.close)
        self.executor.shutdown()
