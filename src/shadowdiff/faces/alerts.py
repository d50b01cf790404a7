"""Alerts and incident messages to their destinations, off the worker's loop.

The contract, because the caller is the worker's event loop and must never suffer for it:

- `Alerter.fire` never blocks and never raises: it only decides and enqueues. Delivery
  happens later in sender tasks, never on the caller's stack.
- Routed: an incident's messages go to its team's destinations (PagerDuty, Alertmanager,
  Slack-compatible or generic webhooks; `alerts.webhooks` when the team has none); other
  events go to `alerts.webhooks`, and the changes (start, pause, dial) to every PagerDuty
  destination as change events. The wire formats are in `destinations`.
- Debounced events: at most one per (event, key) per `debounce` seconds; repeats are counted
  `alerts.debounced` and not sent. An incident's messages are never debounced: the incident
  (one per route and check) is the deduplication.
- Bounded: each destination has its own queue of at most `max_queue` alerts and a few
  concurrent senders, so a dead one delays only its own deliveries, and only for as long as
  its retries take. An alert that finds a queue full is counted `dropped`.
- Retried: a POST that may succeed later (408, 429, 5xx, connection error, timeout) is
  retried `retries` times with exponential backoff, waiting at least what a `Retry-After` in
  seconds asks (up to MAX_BACKOFF); any other answer (a 4xx: a bad URL or payload, a revoked
  key) would fail the same way again and is not. Then it is counted `failed` and logged
  once, naming only the destination and its host (a Slack webhook URL is a secret).
- Counted per delivery (one alert to one destination): each ends `sent`, `failed` or
  `dropped` (queue full, or still undelivered when `close` gives up), in `alerts.<outcome>`
  and in `deliveries.<outcome>.<destination>`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from shadowdiff import config
from shadowdiff.faces import destinations
from shadowdiff.faces.destinations import Alert as Alert  # where it is defined

logger = logging.getLogger("shadowdiff.alerts")

SENDERS_PER_WEBHOOK = 4
"""Deliveries in flight per webhook: enough that one slow alert does not delay the next."""

MAX_BACKOFF = 30.0
"""The longest wait between two attempts, however many retries are configured (or however
long a `Retry-After` asks)."""
RETRIED = frozenset({408, 429})
"""The 4xx answers that may pass later (a timeout, a rate limit); every 5xx may too."""


ONLY = {"acknowledge": "pagerduty", "refresh": "alertmanager"}
"""The incident actions only one kind of destination takes."""


@dataclass(slots=True)
class _Lane:
    """One destination with its own queue, so a dead one cannot starve the others."""

    name: str
    """How counts and logs name it: `team/kind`, or `webhooks/N` for alerts.webhooks."""
    team: str | None
    kind: str
    url: str
    routing_key: str | None
    queue: asyncio.Queue[tuple[Alert, float]]

    @property
    def host(self) -> str:
        return self.host_of(self.url)

    @staticmethod
    def host_of(url: str) -> str:
        """What a log line may name: the host and port, never the path (it holds the
        secret of a Slack webhook)."""
        parts = urlsplit(url)
        host = parts.hostname or "?"
        return f"{host}:{parts.port}" if parts.port else host


def _reason(exc: Exception) -> str:
    """Why a POST failed, for the log; exception messages may quote the URL, so not those."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or type(exc.os_error).__name__})"
    return type(exc).__name__


class Alerter:
    """Sends alerts to every configured webhook; see the module docstring for the contract.

    `backoff` is the wait before the first retry (doubling after each), a parameter so tests
    need not wait seconds. `clock` (monotonic seconds) drives debouncing.
    """

    def __init__(
        self,
        cfg: config.Alerts,
        run: str,
        counts: collections.Counter[str],
        clock: Callable[[], float] = time.monotonic,
        backoff: float = 0.5,
        teams: Sequence[config.Target] = (),
    ) -> None:
        """`teams`: the incident destinations (`config.destinations`)."""
        self.cfg = cfg
        self.run = run
        self.counts = counts
        self.clock = clock
        self.backoff = backoff
        self.on_sent: Callable[[Alert, float], None] | None = None
        """Told of each delivery that went through (alert, when), on the loop."""
        self._lanes = [
            _Lane(f"webhooks/{i}", None, hook.format, hook.url, None, asyncio.Queue(cfg.max_queue))
            for i, hook in enumerate(cfg.webhooks, 1)
        ] + [
            _Lane(t.name, t.team, t.kind, t.url, t.routing_key, asyncio.Queue(cfg.max_queue))
            for t in teams
        ]
        for lane in self._lanes:  # exported from 0, so that the first failure is an increase
            for outcome in ("sent", "failed", "dropped"):
                self.counts[f"deliveries.{outcome}.{lane.name}"] += 0
        self._order: dict[tuple[str, str], tuple[asyncio.Lock, list[None]]] = {}
        """Per destination and incident: a lock, so its messages go out one after the other
        in the order fired (a trigger in backoff is never overtaken by its resolve), and its
        users (the lock goes once the last is done: a woken waiter still needs it)."""
        self._last: dict[tuple[str, str], float] = {}
        self._session: aiohttp.ClientSession | None = None
        self._senders: list[asyncio.Task[None]] = []
        self._closed = False

    @property
    def destinations(self) -> bool:
        """Whether anything is configured to be told."""
        return bool(self._lanes)

    @property
    def alertmanagers(self) -> list[str]:
        return [lane.url for lane in self._lanes if lane.kind == "alertmanager"]

    async def silences(self) -> list[Any]:
        """The silences every Alertmanager destination holds (its v2 API's JSON); one that
        cannot be asked gives none, logged at debug level (it is asked again later)."""
        out: list[Any] = []
        if self._session is None:
            return out
        for url in self.alertmanagers:
            try:
                async with self._session.get(url.rstrip("/") + "/api/v2/silences") as r:
                    found = await r.json(content_type=None) if r.status == 200 else []
            except Exception as e:  # noqa: BLE001 - a poll never raises
                logger.debug("cannot read the silences of %s: %s", _Lane.host_of(url), _reason(e))
                continue
            out += found if isinstance(found, list) else []
        return out

    def _targets(self, alert: Alert) -> list[_Lane]:
        """The lanes `alert` goes to (see `Alert`)."""
        if alert.incident is not None:
            team = [lane for lane in self._lanes if lane.team == alert.incident.team]
            lanes = team or [lane for lane in self._lanes if lane.team is None]
            only = ONLY.get(alert.action)
            return [lane for lane in lanes if only in (None, lane.kind)]
        return [
            lane
            for lane in self._lanes
            if (alert.message and lane.team is None) or (alert.change and lane.kind == "pagerduty")
        ]

    def fire(self, alert: Alert) -> bool:
        """Enqueues `alert` for its destinations; False if nothing was enqueued.

        Sync, never blocks, never raises. No destination for it: False, counts nothing.
        An event (not an incident's message) repeating (event, key) within `debounce` seconds
        of the last accepted one is counted `alerts.debounced`. A destination whose queue
        holds `max_queue` alerts (or any once closed) counts `alerts.dropped`. Alerts fired
        before `start` wait in the queue.
        """
        lanes = self._targets(alert)
        if not lanes:
            return False
        now = self.clock()
        last = self._last.get((alert.event, alert.key))
        if alert.incident is None and last is not None and now - last < self.cfg.debounce:
            self.counts["alerts.debounced"] += 1
            return False
        accepted = False
        for lane in lanes:
            if self._closed or lane.queue.full():
                self._count(lane, "dropped")
            else:
                lane.queue.put_nowait((alert, time.time()))
                accepted = True
        if accepted:
            self._last[(alert.event, alert.key)] = now
        return accepted

    def _count(self, lane: _Lane, outcome: str) -> None:
        """One delivery's end, in the totals and per destination."""
        self.counts[f"alerts.{outcome}"] += 1
        self.counts[f"deliveries.{outcome}.{lane.name}"] += 1

    async def start(self) -> None:
        """Opens the one HTTP session and the sender tasks; call once in the worker's loop."""
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.cfg.timeout))
        self._session = session
        self._senders = [
            asyncio.create_task(self._send_loop(session, lane))
            for lane in self._lanes
            for _ in range(SENDERS_PER_WEBHOOK)
        ]

    async def close(self, timeout: float) -> None:
        """Delivers what is queued within `timeout`, then stops; the rest counts as dropped.

        Later `fire` calls are dropped. Bounded by `timeout` so shutdown never waits on a dead
        webhook's retries.
        """
        self._closed = True
        queued = asyncio.gather(*(lane.queue.join() for lane in self._lanes))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(queued, timeout)
        for task in self._senders:
            task.cancel()
        await asyncio.gather(*self._senders, return_exceptions=True)
        self._senders = []
        for lane in self._lanes:
            while not lane.queue.empty():
                lane.queue.get_nowait()
                self._count(lane, "dropped")
        if self._session is not None:
            await self._session.close()

    async def _send_loop(self, session: aiohttp.ClientSession, lane: _Lane) -> None:
        """One of a webhook's senders: takes its alerts one at a time until cancelled."""
        while True:
            alert, at = await lane.queue.get()
            key = (lane.name, alert.incident.key) if alert.incident else None
            try:
                if key is None:
                    await self._deliver(session, lane, alert, at)
                else:  # taken at once after get(): senders queue on it in the queue's order
                    lock, users = self._order.setdefault(key, (asyncio.Lock(), []))
                    users.append(None)
                    try:
                        async with lock:
                            await self._deliver(session, lane, alert, at)
                    finally:
                        users.pop()
                        if not users:
                            del self._order[key]
            except asyncio.CancelledError:  # close() gave up on this one
                self._count(lane, "dropped")
                raise
            except Exception as e:  # a payload that would not encode: counted, never fatal
                self._count(lane, "failed")
                logger.warning("alert %s to %s not sent: %s", alert.event, lane.name, e)
            finally:
                lane.queue.task_done()

    async def _deliver(
        self, session: aiohttp.ClientSession, lane: _Lane, alert: Alert, at: float
    ) -> None:
        """POSTs one alert to one destination, retrying with backoff; counts how it ended."""
        url, payload = destinations.payload(
            lane.kind, lane.url, lane.routing_key, alert, self.run, at
        )
        # default=str: a stray non-JSON value in `details` must not lose the alert.
        body = orjson.dumps(payload, default=str, option=orjson.OPT_NON_STR_KEYS)
        asked = 0.0  # what the last answer's Retry-After asked for
        for attempt in range(1, self.cfg.retries + 2):
            if attempt > 1:
                backoff = self.backoff * 2 ** (attempt - 2)
                await asyncio.sleep(min(max(backoff, asked), MAX_BACKOFF))
            reason, retry, asked = await self._post(session, url, body)
            if reason is None:
                self._count(lane, "sent")
                if self.on_sent is not None:
                    self.on_sent(alert, time.time())
                return
            if not retry:
                break
        self._count(lane, "failed")
        logger.warning(
            "alert %s to %s at %s failed after %d attempt(s): %s",
            alert.event,
            lane.name,
            lane.host,
            attempt,
            reason,
        )

    async def _post(
        self, session: aiohttp.ClientSession, url: str, body: bytes
    ) -> tuple[str | None, bool, float]:
        """One attempt: None on a 2xx, else why not; whether trying again may help, and the
        seconds its `Retry-After` asks to wait first (0 without one, or with a date). Never
        raises."""
        try:
            async with session.post(
                url,
                data=body,
                headers={"Content-Type": "application/json"},
                allow_redirects=False,
            ) as response:
                if 200 <= response.status < 300:
                    return None, False, 0.0
                reason = f"HTTP {response.status} {response.reason or ''}".rstrip()
                after = response.headers.get("Retry-After", "").strip()
                asked = float(after) if after.isascii() and after.isdigit() else 0.0
                return reason, response.status in RETRIED or response.status >= 500, asked
        except Exception as e:  # noqa: BLE001 - a delivery never raises: a failure is a reason
            return _reason(e), True, 0.0
