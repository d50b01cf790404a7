"""Alerts to webhooks when something a person should know about happens in the worker.

The contract, because the caller is the worker's event loop and must never suffer for it:

- `Alerter.fire` never blocks and never raises: it only decides and enqueues. Delivery
  happens later in sender tasks, never on the caller's stack.
- Debounced: at most one alert per (event, key) per `debounce` seconds; repeats are counted
  `alerts.debounced` and not sent.
- Bounded: each webhook has its own queue of at most `max_queue` alerts and a few concurrent
  senders, so a dead webhook delays only its own deliveries, and only for as long as its
  retries take. An alert that finds a webhook's queue full is counted `alerts.dropped`.
- Retried: a POST that may succeed later (408, 429, 5xx, connection error, timeout) is
  retried `retries` times with exponential backoff, waiting at least what a `Retry-After` in
  seconds asks (up to MAX_BACKOFF); any other answer (a 4xx: a bad URL or payload, a revoked
  key) would fail the same way again and is not. Then it is counted `alerts.failed`
  and logged once, naming only the host (a Slack webhook URL is a secret).
- Counted per delivery (one alert to one webhook): each ends `alerts.sent`, `alerts.failed`
  or `alerts.dropped` (queue full, or still undelivered when `close` gives up).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from shadowdiff import config

logger = logging.getLogger("shadowdiff.alerts")

SENDERS_PER_WEBHOOK = 4
"""Deliveries in flight per webhook: enough that one slow alert does not delay the next."""

MAX_BACKOFF = 30.0
"""The longest wait between two attempts, however many retries are configured (or however
long a `Retry-After` asks)."""
RETRIED = frozenset({408, 429})
"""The 4xx answers that may pass later (a timeout, a rate limit); every 5xx may too."""


@dataclass(frozen=True, slots=True)
class Alert:
    """One thing that happened; `key` is what debouncing is per (a route, a target, "mirror")."""

    event: str
    key: str
    text: str
    details: dict[str, Any]


@dataclass(slots=True)
class _Lane:
    """One webhook with its own queue, so a dead webhook cannot starve the others."""

    webhook: config.Webhook
    host: str
    queue: asyncio.Queue[tuple[Alert, str]]


def _host(url: str) -> str:
    """What a log line may name: the host and port, never the path (it holds the secret)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


def _slack_escape(text: str) -> str:
    """Live-traffic text made inert for Slack: one line, and no `<!channel>` or `<url|link>`."""
    line = " ".join(text.split())
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_payload(alert: Alert, run: str) -> dict[str, Any]:
    text = _slack_escape(alert.text)
    context = f"run {_slack_escape(run)} · event {_slack_escape(alert.event)}"
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        ],
    }


def _generic_payload(alert: Alert, run: str, at: str) -> dict[str, Any]:
    return {
        "event": alert.event,
        "run": run,
        "key": alert.key,
        "text": alert.text,
        "details": alert.details,
        "at": at,
    }


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
    ) -> None:
        self.cfg = cfg
        self.run = run
        self.counts = counts
        self.clock = clock
        self.backoff = backoff
        self._lanes = [
            _Lane(hook, _host(hook.url), asyncio.Queue(cfg.max_queue)) for hook in cfg.webhooks
        ]
        self._last: dict[tuple[str, str], float] = {}
        self._session: aiohttp.ClientSession | None = None
        self._senders: list[asyncio.Task[None]] = []
        self._closed = False

    def fire(self, alert: Alert) -> bool:
        """Enqueues `alert` for every webhook; False if nothing was enqueued.

        Sync, never blocks, never raises. No webhooks configured: False, counts nothing.
        A repeat of (event, key) within `debounce` seconds of the last accepted one is counted
        `alerts.debounced`. A webhook whose queue holds `max_queue` alerts (or any webhook
        once closed) counts `alerts.dropped`. Alerts fired before `start` wait in the queue.
        """
        if not self._lanes:
            return False
        now = self.clock()
        last = self._last.get((alert.event, alert.key))
        if last is not None and now - last < self.cfg.debounce:
            self.counts["alerts.debounced"] += 1
            return False
        at = datetime.now(UTC).isoformat(timespec="milliseconds")
        accepted = False
        for lane in self._lanes:
            if self._closed or lane.queue.full():
                self.counts["alerts.dropped"] += 1
            else:
                lane.queue.put_nowait((alert, at))
                accepted = True
        if accepted:
            self._last[(alert.event, alert.key)] = now
        return accepted

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
                self.counts["alerts.dropped"] += 1
        if self._session is not None:
            await self._session.close()

    async def _send_loop(self, session: aiohttp.ClientSession, lane: _Lane) -> None:
        """One of a webhook's senders: takes its alerts one at a time until cancelled."""
        while True:
            alert, at = await lane.queue.get()
            try:
                await self._deliver(session, lane, alert, at)
            except asyncio.CancelledError:  # close() gave up on this one
                self.counts["alerts.dropped"] += 1
                raise
            finally:
                lane.queue.task_done()

    async def _deliver(
        self, session: aiohttp.ClientSession, lane: _Lane, alert: Alert, at: str
    ) -> None:
        """POSTs one alert to one webhook, retrying with backoff; counts how it ended."""
        if lane.webhook.format == "slack":
            payload = _slack_payload(alert, self.run)
        else:
            payload = _generic_payload(alert, self.run, at)
        # default=str: a stray non-JSON value in `details` must not lose the alert.
        body = orjson.dumps(payload, default=str, option=orjson.OPT_NON_STR_KEYS)
        asked = 0.0  # what the last answer's Retry-After asked for
        for attempt in range(1, self.cfg.retries + 2):
            if attempt > 1:
                backoff = self.backoff * 2 ** (attempt - 2)
                await asyncio.sleep(min(max(backoff, asked), MAX_BACKOFF))
            reason, retry, asked = await self._post(session, lane.webhook.url, body)
            if reason is None:
                self.counts["alerts.sent"] += 1
                return
            if not retry:
                break
        self.counts["alerts.failed"] += 1
        logger.warning(
            "alert %s to webhook at %s failed after %d attempt(s): %s",
            alert.event,
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
