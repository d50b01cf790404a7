"""The mitmproxy addon: decide, snapshot, hand off. Nothing else happens on the live path.

Every hook is synchronous and cheap: a sampling decision, a snapshot of bytes mitmproxy already
holds, and a non-blocking write to the worker's channel. The live flow is never modified,
delayed or killed, but by the user's explicit choice: a release stage's users are served by
the candidate (`live.rollout`), asked in an awaited hook that holds only that flow. The tap
also supervises its worker: one that dies is noticed within a second and started again, and
stopping one never waits on the live loop. Knows mitmproxy; knows nothing of diffing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.proxy import mode_specs

from shadowdiff.channel import (
    STOP_MARGIN,
    Control,
    Final,
    PrimaryResult,
    Serving,
    Setup,
    TapCounts,
    Writer,
)
from shadowdiff.config import (
    SHADOW_MARKER,
    Config,
    access_token,
    destinations,
    load_config,
    paired_by,
)
from shadowdiff.counts import WORKER_RESTARTS
from shadowdiff.errors import ConfigError
from shadowdiff.live.rollout import Candidate, Router, safe
from shadowdiff.live.sampling import Sampler
from shadowdiff.model import Outcome, RequestSnapshot

logger = logging.getLogger("shadowdiff.tap")

COUNTS_EVERY = 1.0
"""Seconds between the tap's counter updates to the worker, and its checks that it lives."""
RESTART_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)
"""Seconds before each start of a worker after one died, deaths in a row; after the last
one, mirroring stays off (samples counted as `dropped.worker_down`) until the proxy restarts."""
STABLE = 60.0
"""Seconds a worker must live for its death to count as the first in a row again."""
_UNSENDABLE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
"""Bytes no HTTP client puts in a header (of the controls, RFC 9110 allows only HTAB)."""

_last_control = Control(paused=False, rate=None)
"""The switch and the dial as last set: mitmproxy re-creates the addon on a script reload,
but this module stays loaded, so a paused proxy stays paused."""


@dataclass
class _Stopping:
    """A worker handed its last records, finishing on its own."""

    process: subprocess.Popen[bytes]
    writer: Writer
    grace: float

    def reap(self) -> None:
        """Once the channel is over: collects the exit status, and says if it failed."""
        if self not in _stopping:
            return
        status = self.process.poll()
        if status is None:
            asyncio.get_running_loop().call_later(0.2, self.reap)
            return
        _stopping.remove(self)
        self.ended_with(status)

    def ended_with(self, status: int) -> None:
        if status:
            logger.error("shadowdiff: the stopped worker process %s", _exit_status(status))


_stopping: list[_Stopping] = []
"""Workers stopped by a script reload that are still finishing (this module outlives the
reloaded addon); the end of the process waits for them."""

_OPTIONS = {
    "shadowdiff_shadow": "shadow",
    "shadowdiff_secondary": "secondary",
    "shadowdiff_sample": "sampling.rate",
    "shadowdiff_run": "run",
    "shadowdiff_store": "store",
    "shadowdiff_control": "control.listen",
}
_NAMES = {key: "--" + option.removeprefix("shadowdiff_") for option, key in _OPTIONS.items()}
"""How a bad override is named in its one-line error: as the flag that set it."""


def _reverse_target(modes: Sequence[str]) -> str | None:
    """The primary's URL when mitmproxy proxies to one HTTP server in reverse mode: the live
    traffic goes there, so the primary's timed copies go there too, whatever the config says."""
    targets = set()
    for spec in modes:
        mode = mode_specs.ProxyMode.parse(spec)
        if isinstance(mode, mode_specs.ReverseMode) and mode.scheme in ("http", "https"):
            targets.add(mode.data)
    return targets.pop() if len(targets) == 1 else None


_NO_EVIDENCE = ("too_large", "unsendable")
"""Fallbacks that say nothing of the candidate: an answer too large to serve, a request the
client refuses to build."""
_CLIENT_GONE = ("client disconnected", "stream reset by client")
"""How mitmproxy's errors begin when the client went away (HTTP/1, HTTP/2)."""


def primary_error_kind(message: str) -> str:
    """An outcome error kind from mitmproxy's error message for the primary."""
    text = message.lower()
    if "timeout" in text or "timed out" in text:
        return "timeout"
    if "reset" in text or "disconnect" in text or "closed" in text:
        return "reset"
    if "refused" in text or "connect" in text or "resolve" in text:
        return "connect"
    return "protocol"


class ShadowDiff:
    """Mirrors sampled requests to the shadow through a worker process."""

    def __init__(self, config: Config | None = None) -> None:
        self.preset = config
        self.cfg: Config | None = config
        self.sampler: Sampler | None = Sampler(config.sampling) if config else None
        self.counts: Counter[str] = Counter()
        self.pending: set[str] = set()
        # Unique per tap object: a reloaded script starts its counters afresh under a new id.
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.writer: Writer | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.ticker: asyncio.TimerHandle | None = None
        self.restart: asyncio.TimerHandle | None = None
        self.deaths = 0  # in a row: since a worker last lived STABLE seconds
        self.started_at = 0.0
        self.stopping = False
        self.final: Final | None = None  # the last worker's final books, once it answered
        self.last_exit: int | None = None  # the exit status of the last worker that died
        self.control = _last_control  # a reloaded script keeps the switch and the dial
        self.serving: Serving | None = None
        """The stage as the running worker's controller last said it; None: not said yet,
        and the primary serves everyone (a new worker says it once it read the store)."""
        self.released: Config | None = config if config and config.release else None
        """The config the running worker's controller has the plan from: the tap routes by
        the same plan and candidate (a configure while it runs changes neither)."""
        self.router: Router | None = None
        self.candidate: Candidate | None = None
        self.writes: set[str] = set()  # flows of writes the candidate serves
        self.closing: set[asyncio.Task[None]] = set()

    # -- options ---------------------------------------------------------------------------

    def load(self, loader: Any) -> None:
        loader.add_option(
            "shadowdiff_config", str | None, None, "Path of a shadowdiff YAML config file."
        )
        loader.add_option(
            "shadowdiff_shadow", str | None, None, "Shadow base URL (overrides the file)."
        )
        loader.add_option(
            "shadowdiff_secondary", str | None, None, "Secondary base URL (overrides the file)."
        )
        loader.add_option(
            "shadowdiff_sample",
            str | None,
            None,
            "Share of eligible requests to mirror, 0..1, as a string such as 0.1 "
            "(mitmproxy cannot --set float options).",
        )
        loader.add_option("shadowdiff_run", str | None, None, "Run name (overrides the file).")
        loader.add_option("shadowdiff_store", str | None, None, "Store path (overrides the file).")
        loader.add_option(
            "shadowdiff_control",
            str | None,
            None,
            "HOST:PORT of the control server (metrics, verdict, kill switch), or off.",
        )

    def configure(self, updated: set[str]) -> None:
        if not updated & ({"shadowdiff_config", "mode"} | set(_OPTIONS)):
            return
        path = ctx.options.shadowdiff_config
        overrides: dict[str, Any] = {
            key: getattr(ctx.options, opt) for opt, key in _OPTIONS.items()
        }
        if not path and not any(overrides.values()):
            return  # embedded with a preset config, or not configured yet
        overrides["primary"] = _reverse_target(ctx.options.mode)
        base = self.preset.model_dump() if self.preset else None
        try:
            cfg = load_config(path, overrides, base=None if path else base, names=_NAMES)
            access_token(cfg.control)
            destinations(cfg)  # a named secret missing stops the proxy now
        except ConfigError as e:
            raise exceptions.OptionsError(f"shadowdiff: {e}") from None  # type: ignore[no-untyped-call]
        if self.worker is not None and self.cfg is not None and _fixed(cfg) != _fixed(self.cfg):
            logger.warning("shadowdiff: only sampling changes apply at once; the rest on restart")
        self.cfg = cfg
        self.sampler = Sampler(cfg.sampling)
        self._apply(self.control)  # the switch and the dial outlive a config reload
        if self.worker is None:  # the running worker's controller keeps the plan it has
            self.released = cfg if cfg.release else None
        self._route(self.serving)

    # -- lifecycle (sync, so a reloaded script restarts its worker cleanly) ---------------

    def running(self) -> None:
        if self.cfg is None:
            logger.error(
                "shadowdiff: no shadow configured (set shadowdiff_config or shadowdiff_shadow); "
                "traffic passes through unmirrored"
            )
            return
        self.start_worker(self.cfg)

    def start_worker(self, cfg: Config) -> asyncio.Future[bool]:
        """Starts the worker unless it runs; the future turns True once it reads, False if
        it died first. `shadowdiff proxy` awaits it before taking traffic."""
        if self.writer is None:
            self._route(None)  # until this worker's controller has read the release's state
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "shadowdiff.worker", "--fd", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
            )
            theirs.close()
            loop = asyncio.get_running_loop()
            self.writer = Writer(ours, cfg.mirror.max_backlog, self._apply)
            # its end of the channel closing is the first sign of a death
            self.writer.ended.add_done_callback(lambda _: loop.call_later(0.1, self._check))
            self.writer.send(
                Setup(
                    config=cfg,
                    instance=self.instance,
                    control=self.control,
                    generation=self.counts[WORKER_RESTARTS],
                    counts=dict(self.counts),
                    handover=any(s.process.poll() is None for s in _stopping),
                )
            )
            self.started_at = loop.time()
            if self.ticker is None:
                self.ticker = loop.call_later(COUNTS_EVERY, self._tick)
        return self.writer.ready

    def done(self) -> None:
        # The end of the process waits for its workers; a script reload never does.
        self.stop(wait=ctx.master.should_exit.is_set())

    def stop(self, wait: bool) -> None:
        """Hands the worker its last records and lets it finish on its own. `wait`: at the
        end of the process, every stopping worker is waited for (within its bound) first."""
        self.stopping = True
        if self.candidate is not None:  # its connections: the loop may not run much longer
            task = asyncio.get_running_loop().create_task(self.candidate.close())
            self.closing.add(task)
            task.add_done_callback(self.closing.discard)
            self.candidate = None
        for timer in (self.ticker, self.restart):
            if timer:
                timer.cancel()
        self.ticker = self.restart = None
        if self.writer is not None and self.worker is not None and self.cfg is not None:
            self.pending.clear()  # the worker counts what it holds without a primary result
            self.writer.close(last=TapCounts(self.instance, dict(self.counts), ending=wait))
            stopping = _Stopping(self.worker, self.writer, self.cfg.mirror.grace)
            _stopping.append(stopping)
            self.writer.ended.add_done_callback(lambda _: stopping.reap())
            self.writer = self.worker = None
        if wait:
            _wait_for_stopping()

    def _tick(self) -> None:
        self._check()
        self._send_counts()
        self.ticker = asyncio.get_running_loop().call_later(COUNTS_EVERY, self._tick)

    def _check(self) -> None:
        """Notices a worker that died: says so, counts the samples from then on as
        `worker_down`, and starts another after a delay; after RESTART_DELAYS deaths in a
        row, traffic passes through unmirrored."""
        if self.stopping or self.worker is None or (status := self.worker.poll()) is None:
            return
        assert self.writer is not None
        self.writer.abandon()
        self.writer = self.worker = None
        self.last_exit = status
        self.pending.clear()  # the next worker counts what the dead one held
        loop = asyncio.get_running_loop()
        if loop.time() - self.started_at >= STABLE:
            self.deaths = 0
        if self.deaths == len(RESTART_DELAYS):
            logger.error(
                "shadowdiff: the worker process %s, %d times in a row; giving up: traffic "
                "passes through unmirrored, its samples counted as dropped.worker_down",
                _exit_status(status),
                self.deaths + 1,
            )
            return
        delay = RESTART_DELAYS[self.deaths]
        self.deaths += 1
        logger.error(
            "shadowdiff: the worker process %s; samples are counted as dropped.worker_down "
            "until another starts in %.1fs",
            _exit_status(status),
            delay,
        )
        self.restart = loop.call_later(delay, self._restart)

    def _restart(self) -> None:
        self.restart = None
        if self.stopping or self.cfg is None:
            return
        self.counts[WORKER_RESTARTS] += 1
        self.start_worker(self.cfg)
        logger.warning(
            "shadowdiff: worker started again (restart %d)", self.counts[WORKER_RESTARTS]
        )

    def _apply(self, record: object) -> None:
        """A record from the worker: the kill switch and the dial, the release's stage, at
        once; its final books."""
        global _last_control
        if isinstance(record, Final):
            self.final = record
            return
        if isinstance(record, Serving):
            if not self.stopping:  # a stopping worker's last word is not this addon's
                self._route(record)
            return
        if not isinstance(record, Control) or self.sampler is None:
            return
        self.control = _last_control = record
        self.sampler.paused = record.paused
        self.sampler.dial = record.rate

    def _route(self, serving: Serving | None) -> None:
        """The release's stage applies from the very next request."""
        self.serving = serving
        released = self.released
        self.router = Router(released.release, serving) if released and released.release else None
        if released and self.router and self.router.serving and self.candidate is None:
            self.candidate = Candidate(released)

    def _send_counts(self) -> None:
        if self.writer:
            self.writer.send(TapCounts(self.instance, dict(self.counts)))

    # -- hooks -----------------------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """Counts the request, decides who serves it (the release's stage) and whether to
        mirror it, at once. Only a safe request the candidate serves returns a coroutine
        (mitmproxy awaits it, holding only that flow) that asks the candidate first; it is
        counted once the candidate answered, so the books balance at any moment."""
        if self.sampler is None:
            return None
        reason = self._not_eligible(flow)
        if reason is None and self._to_candidate(flow):
            if safe(flow.request.method):
                return self._from_candidate(flow)
            # a write the release lets the candidate take: never copied to the primary
            self.counts["seen"] += 1
            self.counts["served.candidate"] += 1
            self.counts["not_sampled.served_write"] += 1
            return None
        self.counts["seen"] += 1
        self._sample(flow, reason, None)
        return None

    async def _from_candidate(self, flow: http.HTTPFlow) -> None:
        assert self.candidate is not None
        answer: Outcome | None
        answer, failed = await self.candidate.ask(flow)
        if self.stopping:  # its books went to the worker already (a script reload)
            return
        self.counts["seen"] += 1
        if flow.response is not None and not self._serves(flow):
            # rolled back (or the worker died) while the candidate answered: the primary
            flow.response, answer, failed = None, None, None
        if failed:
            self.counts[f"fallback.{failed}"] += 1
        if failed in _NO_EVIDENCE:
            answer = None
        self._sample(flow, None, answer)

    def _sample(self, flow: http.HTTPFlow, reason: str | None, candidate: Outcome | None) -> None:
        """Counts who served the request, then mirrors it if it is sampled. `candidate`: what
        the candidate answered when it was asked (served, or it failed and the primary will)."""
        assert self.sampler is not None and self.cfg is not None
        request = flow.request
        served = candidate is not None and flow.response is not None
        self.counts["served.candidate" if served else "served.primary"] += 1
        if reason:
            self.counts[f"not_eligible.{reason}"] += 1
            return
        # a fallback is rare evidence against the candidate: kept whatever the sample rate
        fallback = candidate is not None and not served
        reason = self.sampler.decide(request.method, request.path, request.headers.get, fallback)
        if reason:
            self.counts[f"not_sampled.{reason}"] += 1
            return
        self.counts["sampled"] += 1
        body = request.raw_content or b""
        answer = candidate.body if served and candidate else b""
        if max(len(body), len(answer)) > self.cfg.mirror.max_body:  # the primary's copy too
            self.counts["dropped.too_large"] += 1
            return
        if self._down():
            self.counts["dropped.worker_down"] += 1
            return
        snapshot = RequestSnapshot(
            flow_id=flow.id,
            method=request.method,
            path=request.path,
            headers=list(request.headers.fields),
            body=body,
            timestamp=request.timestamp_start,
            candidate=candidate,
            served=served,
        )
        if self._hand_off(snapshot):
            if not served:  # the primary's result follows in the response hook
                self.pending.add(flow.id)
        else:
            self.counts["dropped.worker_down" if self._down() else "dropped.backlog"] += 1

    def _serves(self, flow: http.HTTPFlow) -> bool:
        """Whether the stage serves the request from the candidate: never while no worker
        runs (no controller could roll it back)."""
        router, request = self.router, flow.request
        if router is None or self.candidate is None or not router.serving or self._down():
            return False
        peer = flow.client_conn.peername
        return router.serves(request.path, request.headers.get, peer[0] if peer else "")

    def _to_candidate(self, flow: http.HTTPFlow) -> bool:
        """Whether the candidate serves the request; a write goes there only where
        `release.writes` allows it, forwarded by mitmproxy itself."""
        request = flow.request
        if not self._serves(flow):
            return False
        if safe(request.method):
            return True
        assert self.router is not None and self.candidate is not None
        if not self.router.writable(request.method, request.path):
            return False
        self.candidate.redirect(request)
        self.writes.add(flow.id)
        return True

    def _count_write(self, flow: http.HTTPFlow, failed: bool) -> None:
        """A write's outcome, by who served it, on the routes whose writes the candidate may
        serve: the served writes' evidence, and the primary's to compare it with."""
        assert self.router is not None
        request = flow.request
        if flow.id in self.writes:
            self.writes.discard(flow.id)
            side = "candidate"
        elif self.router.writable(request.method, request.path) and not flow.is_replay:
            side = "primary"
        else:
            return
        self.counts[f"writes.{side}.{'failed' if failed else 'ok'}"] += 1

    def response(self, flow: http.HTTPFlow) -> None:
        if self.router is not None and flow.response and not safe(flow.request.method):
            self._count_write(flow, flow.response.status_code >= 500)
        if flow.id not in self.pending or flow.response is None:
            return
        self.pending.discard(flow.id)
        assert self.cfg is not None
        response = flow.response
        raw = response.raw_content
        skip = None
        if raw is None:
            skip = "streamed"
        elif len(raw) > self.cfg.mirror.max_body:
            skip = "too_large"
        # The proxy's span (it includes the proxy's own queueing) is the latency reference
        # only for `proxy`; for `primary` the worker's timed copy replaces it, and a request
        # no copy is sent for gets none: it is never paired across two clocks.
        latency = None
        if (
            paired_by(self.cfg, flow.request.method)
            and response.timestamp_end
            and flow.request.timestamp_end
        ):
            latency = response.timestamp_end - flow.request.timestamp_end
        outcome = Outcome(
            status=response.status_code,
            headers=list(response.headers.fields),
            body=b"" if skip else raw or b"",
            latency=latency,
        )
        self._hand_off(PrimaryResult(flow.id, outcome, skip))

    def error(self, flow: http.HTTPFlow) -> None:
        if flow.error is None:
            return
        message = flow.error.msg
        # the client hung up (or the flow was killed): nothing the server did, so no outcome
        gone = message.lower().startswith(_CLIENT_GONE) or message == flow.error.KILLED_MESSAGE
        if self.router is not None and not safe(flow.request.method):
            if gone or flow.response is not None:  # nobody's failure, or counted already
                self.writes.discard(flow.id)
            else:
                self._count_write(flow, True)
        if flow.id not in self.pending:
            return
        self.pending.discard(flow.id)
        outcome = Outcome(error=primary_error_kind(message))
        self._hand_off(PrimaryResult(flow.id, outcome, "client_gone" if gone else None))

    def _not_eligible(self, flow: http.HTTPFlow) -> str | None:
        request = flow.request
        if flow.is_replay:
            return "replay"
        if request.method == "CONNECT":
            return "connect"
        if not request.path.startswith("/"):  # `*`, or an HTTP/2 :path that would aim elsewhere
            return "target"
        if request.headers.get(SHADOW_MARKER[0]) is not None:
            return "loop"
        if "upgrade" in request.headers:
            return "upgrade"
        if request.raw_content is None:
            return "streamed"
        if flow.response is not None:
            return "answered"
        if _UNSENDABLE.search(b"\t".join(itertools.chain.from_iterable(request.headers.fields))):
            return "bad_header"
        return None

    def _down(self) -> bool:
        """No worker reads: none runs, or one started again after a death is not reading
        yet (what waited for it would reach it as one burst, too many to take)."""
        writer = self.writer
        if writer is None or writer.broken:
            return True
        return self.counts[WORKER_RESTARTS] > 0 and not (
            writer.ready.done() and writer.ready.result()
        )

    def _hand_off(self, record: RequestSnapshot | PrimaryResult) -> bool:
        """Never blocks: says whether the channel took the record.

        Who counts a failure: a snapshot refused here was never the worker's, so the tap
        counts it; once a snapshot is taken, the worker owns its fate and counts a primary
        result that never reaches it (`primary_lost`, or `shutdown`)."""
        return self.writer is not None and self.writer.send(record)


def _exit_status(status: int) -> str:
    """How a worker process ended, for a log line."""
    if status < 0:
        return f"was killed by {signal.Signals(-status).name}"
    return f"exited with status {status}"


def _wait_for_stopping() -> None:
    """At the end of the process: every stopping worker finishes within its bound (its
    grace, then STOP_MARGIN) or is killed, and said so."""
    start = time.monotonic()
    while _stopping:
        stopping = _stopping.pop(0)
        bound = stopping.grace + STOP_MARGIN
        stopping.writer.finish(max(0.0, start + bound - time.monotonic()))
        try:
            status = stopping.process.wait(timeout=max(0.1, start + bound - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.error(
                "shadowdiff: the worker did not finish within %.0fs; killing it: the samples "
                "it still held are lost",
                bound,
            )
            stopping.process.kill()
            stopping.process.wait()
            continue
        stopping.ended_with(status)


def _fixed(cfg: Config) -> dict[str, Any]:
    """The part of a config that a running worker cannot change."""
    return cfg.model_dump(exclude={"sampling"})
