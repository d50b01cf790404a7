"""The mitmproxy addon: decide, snapshot, hand off. Nothing else happens on the live path.

Every hook is synchronous and cheap: a sampling decision, a snapshot of bytes mitmproxy already
holds, and a non-blocking write to the worker's channel. The live flow is never modified,
delayed or killed. Knows mitmproxy; knows nothing of diffing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import subprocess
import sys
from collections import Counter
from typing import Any

from mitmproxy import ctx, exceptions, http

from shadowdiff.channel import Control, PrimaryResult, Setup, TapCounts, Writer
from shadowdiff.config import SHADOW_MARKER, Config, access_token, load_config
from shadowdiff.errors import ConfigError
from shadowdiff.live.sampling import Sampler
from shadowdiff.model import Outcome, RequestSnapshot

logger = logging.getLogger("shadowdiff.tap")

COUNTS_EVERY = 1.0
"""Seconds between the tap's counter updates to the worker."""

_last_control = Control(paused=False, rate=None)
"""The switch and the dial as last set: mitmproxy re-creates the addon on a script reload,
but this module stays loaded, so a paused proxy stays paused."""

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
        self.control = _last_control  # a reloaded script keeps the switch and the dial

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
        if not updated & ({"shadowdiff_config"} | set(_OPTIONS)):
            return
        path = ctx.options.shadowdiff_config
        overrides: dict[str, Any] = {
            key: getattr(ctx.options, opt) for opt, key in _OPTIONS.items()
        }
        if not path and not any(overrides.values()):
            return  # embedded with a preset config, or not configured yet
        base = self.preset.model_dump() if self.preset else None
        try:
            cfg = load_config(path, overrides, base=None if path else base, names=_NAMES)
            access_token(cfg.control)
        except ConfigError as e:
            raise exceptions.OptionsError(f"shadowdiff: {e}") from None  # type: ignore[no-untyped-call]
        if self.worker is not None and self.cfg is not None and _fixed(cfg) != _fixed(self.cfg):
            logger.warning("shadowdiff: only sampling changes apply at once; the rest on restart")
        self.cfg = cfg
        self.sampler = Sampler(cfg.sampling)
        self._apply(self.control)  # the switch and the dial outlive a config reload

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
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "shadowdiff.worker", "--fd", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
            )
            theirs.close()
            self.writer = Writer(ours, cfg.mirror.max_backlog, self._apply)
            self.writer.send(Setup(config=cfg, instance=self.instance, control=self.control))
            self.ticker = asyncio.get_running_loop().call_later(COUNTS_EVERY, self._tick)
        return self.writer.ready

    def done(self) -> None:
        if self.ticker:
            self.ticker.cancel()
            self.ticker = None
        if self.writer is None or self.worker is None or self.cfg is None:
            return
        self.pending.clear()  # the worker counts what it holds without a primary result
        # Generous: a worker still starting up reads nothing yet; what it holds is lost if not sent.
        self.writer.close(
            timeout=self.cfg.mirror.grace + 5.0,
            last=TapCounts(self.instance, dict(self.counts)),
        )
        try:
            self.worker.wait(timeout=self.cfg.mirror.grace + 10.0)
        except subprocess.TimeoutExpired:
            logger.error("shadowdiff: worker did not stop in time; terminating it")
            self.worker.kill()
            self.worker.wait(timeout=5.0)
        self.writer = None
        self.worker = None

    def _tick(self) -> None:
        self._send_counts()
        status = self.worker.poll() if self.worker is not None else None
        if status is not None and self.writer and not self.writer.broken:
            logger.error("shadowdiff: worker exited with status %s", status)
            self.writer.abandon()
        self.ticker = asyncio.get_running_loop().call_later(COUNTS_EVERY, self._tick)

    def _apply(self, record: object) -> None:
        """A control record from the worker: the kill switch and the dial, at once."""
        global _last_control
        if not isinstance(record, Control) or self.sampler is None:
            return
        self.control = _last_control = record
        self.sampler.paused = record.paused
        self.sampler.dial = record.rate

    def _send_counts(self) -> None:
        if self.writer:
            self.writer.send(TapCounts(self.instance, dict(self.counts)))

    # -- hooks -----------------------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> None:
        if self.sampler is None:
            return
        self.counts["seen"] += 1
        request = flow.request
        reason = self._not_eligible(flow)
        if reason:
            self.counts[f"not_eligible.{reason}"] += 1
            return
        reason = self.sampler.decide(request.method, request.path, request.headers.get)
        if reason:
            self.counts[f"not_sampled.{reason}"] += 1
            return
        self.counts["sampled"] += 1
        body = request.raw_content or b""
        assert self.cfg is not None
        if len(body) > self.cfg.mirror.max_body:
            self.counts["dropped.too_large"] += 1
            return
        snapshot = RequestSnapshot(
            flow_id=flow.id,
            method=request.method,
            path=request.path,
            headers=list(request.headers.fields),
            body=body,
            timestamp=request.timestamp_start,
        )
        if self._hand_off(snapshot):
            self.pending.add(flow.id)
        else:
            broken = self.writer is None or self.writer.broken
            self.counts["dropped.worker_down" if broken else "dropped.backlog"] += 1

    def response(self, flow: http.HTTPFlow) -> None:
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
        latency = None
        if response.timestamp_end and flow.request.timestamp_end:
            latency = response.timestamp_end - flow.request.timestamp_end
        outcome = Outcome(
            status=response.status_code,
            headers=list(response.headers.fields),
            body=b"" if skip else raw or b"",
            latency=latency,
        )
        self._hand_off(PrimaryResult(flow.id, outcome, skip))

    def error(self, flow: http.HTTPFlow) -> None:
        if flow.id not in self.pending or flow.error is None:
            return
        self.pending.discard(flow.id)
        outcome = Outcome(error=primary_error_kind(flow.error.msg))
        self._hand_off(PrimaryResult(flow.id, outcome))

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
        return None

    def _hand_off(self, record: RequestSnapshot | PrimaryResult) -> bool:
        """Never blocks: says whether the channel took the record.

        Who counts a failure: a snapshot refused here was never the worker's, so the tap
        counts it; once a snapshot is taken, the worker owns its fate and counts a primary
        result that never reaches it (`primary_lost`, or `shutdown`)."""
        return self.writer is not None and self.writer.send(record)


def _fixed(cfg: Config) -> dict[str, Any]:
    """The part of a config that a running worker cannot change."""
    return cfg.model_dump(exclude={"sampling"})
