"""The HTTP client both processes use: the worker's copies to the mirror targets, and the
tap's requests to a release's candidate. Sends a request and times its answer.

Knows aiohttp, nothing of mitmproxy. One pooled session for all targets; bodies are read raw
(no decompression) so both sides of a comparison are decoded the same way later. A response
body over the size limit is an outcome (`too_large`), never a truncated body.

One clock for every side: a copy is timed from the moment its request's last part was handed
to the kernel to the moment the kernel received its answer's last bytes (`stamps`), so the
pool, the headers' building, a connection's set-up and the worker's own stalls are no
latency; the copies of an exchange go out in a random order, so no target is always the one
whose request is built second. Where the kernel gives no stamps, the same span is read on the
worker's loop (aiohttp's trace hooks, then the body read), and the loop's stalls are watched.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import aiohttp
from yarl import URL

from shadowdiff import stamps
from shadowdiff.config import SHADOW_MARKER
from shadowdiff.config import Mirror as MirrorConfig
from shadowdiff.model import Headers, Outcome, RequestSnapshot

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "expect",
    }
)
"""Headers that belong to one connection, not to the request; aiohttp sets its own.
`Expect: 100-continue` was already answered to the client by the proxy."""


def copy_headers(headers: Headers, cfg: MirrorConfig | None) -> list[tuple[str, str]]:
    """The copy's headers: the original's minus hop-by-hop and removed ones, plus set ones
    and the marker. `cfg` None: a request the candidate serves, sent as the client sent it
    (hop-by-hop headers aside), unmarked."""
    drop = set(HOP_BY_HOP)
    if cfg is not None:
        drop |= {name.lower() for name in cfg.headers.remove}
        drop |= {name.lower() for name in cfg.headers.set}
    out = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in headers
        if name.decode("latin-1").lower() not in drop
    ]
    if cfg is not None:
        out.extend(cfg.headers.set.items())
        out.append(SHADOW_MARKER)
    return out


def error_kind(exc: BaseException) -> str:
    """Maps a client exception to an outcome error kind."""
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(
        exc,
        aiohttp.ServerDisconnectedError
        | aiohttp.ClientPayloadError
        | ConnectionResetError
        | aiohttp.ClientOSError,
    ):
        return "reset"
    return "protocol"


LAG_TICK = 0.005
"""Seconds between two looks of the lag watch at the event loop."""
LAG_SLACK = 0.001
"""Seconds late a look may be before its lateness counts as a stall of the loop."""
LAG_SHARE = 0.2
"""Share of a copy's time the loop may have been stalled before its latency is not trusted."""
HELD = 32 * 1024
"""Bytes of an answer's body the kernel surely holds unread for a stalled loop: a connection's
first receive window is about 64 KiB (half of `tcp_rmem`'s default 128 KiB), and it cannot
grow while nobody reads; the rest is room for the headers and the framing. A larger answer
waits for the reader to make room, so a stall delays its last bytes even on the kernel's
clock."""


class LagWatch:
    """How long the worker's event loop has been stalled in all (`stalled`, seconds): a look
    every LAG_TICK, its lateness beyond LAG_SLACK counted. A clock read on the loop is late by
    a stall (a starved CPU, the store thread holding the GIL) for every copy in flight alike:
    their ratios drift to 1 and a real slowdown can PASS. A copy in flight across a stall that
    long, whose time the kernel's stamps do not give (none here, or an answer over HELD), is
    given no latency (`untimed`), and left unjudged."""

    def __init__(self) -> None:
        self.past = 0.0  # the stalls of the looks already taken
        self.due = 0.0  # when the look in progress is due (loop time)
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._watch())

    @property
    def stalled(self) -> float:
        """The stalls so far, the one in progress included: a copy whose answer is read
        before the watch's overdue look still sees the stall it went through."""
        if self.task is None:
            return self.past
        late = asyncio.get_running_loop().time() - self.due - LAG_SLACK
        return self.past + max(0.0, late)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.due = loop.time() + LAG_TICK
            await asyncio.sleep(LAG_TICK)
            self.past += max(0.0, loop.time() - self.due - LAG_SLACK)

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


class Clock:
    """One copy's stopwatch: the kernel's (`stamps`) where it has them; else started on the
    loop when its request's last part (headers, or a chunk of the body) was handed to the
    connection, and until then at its creation (a copy that never went out is timed from its
    start, a time to failure). It notes the loop's stalls meanwhile."""

    __slots__ = ("lag", "sent", "stalled", "stamps")

    def __init__(self, lag: LagWatch) -> None:
        self.lag = lag
        self.stamps = stamps.Stamps()
        self.restart()

    def restart(self) -> None:
        self.sent, self.stalled = time.perf_counter(), self.lag.stalled

    def elapsed(self) -> float:
        return time.perf_counter() - self.sent

    def trusted(self, size: int) -> float | None:
        """The kernel's time of an answer of `size` bytes, else the loop's; None when the loop
        stalled for more than LAG_SHARE of it and the kernel's time does not rule the stall
        out. A kernel time longer than the loop's (the wall clock was set meanwhile) is none."""
        took = self.elapsed()
        stalled = self.lag.stalled - self.stalled > LAG_SHARE * took
        kernel = self.stamps.elapsed()
        if kernel is not None and kernel <= took + LAG_SLACK:
            return None if stalled and size > HELD else kernel
        return None if stalled else took


async def _sent(session: aiohttp.ClientSession, context: SimpleNamespace, params: object) -> None:
    """Trace hook: part of the request went out; its clock starts (again) now."""
    clock = context.trace_request_ctx
    if isinstance(clock, Clock):
        clock.restart()


def _tracing() -> aiohttp.TraceConfig:
    """The trace hooks that start a copy's clock. aiohttp has no "request fully sent" hook:
    the headers' hook fires as they are written (with the body, if it is small), each body
    chunk's as it is written, so the last one to fire is the request's last part."""
    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(_sent)
    trace.on_request_chunk_sent.append(_sent)
    return trace


class TooLarge(Exception):
    pass


class Unsendable(Exception):
    """A copy the HTTP client refuses to build (a control byte in a header, a method that is
    no token): the client's request is at fault, never the shadow, so it is no outcome."""


class Mirror:
    """Sends copies; the session lives as long as the worker. `pool`: connections at most
    (default: twice `max_in_flight`; 0: no limit, for requests that must never wait for one)."""

    def __init__(self, cfg: MirrorConfig, pool: int | None = None) -> None:
        self.cfg = cfg
        limit = cfg.max_in_flight * 2 if pool is None else pool
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=limit, force_close=False, socket_factory=stamps.factory()
            ),
            timeout=aiohttp.ClientTimeout(total=cfg.timeout),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
            trace_configs=[_tracing()],
        )
        self.lag = LagWatch()

    async def close(self) -> None:
        self.lag.stop()
        await self.session.close()

    async def send(self, base: str, request: RequestSnapshot, served: bool = False) -> Outcome:
        """One copy to `base + path`, timed from its request sent to its answer (`Clock`);
        every failure is an outcome, but a copy that cannot be built raises `Unsendable`.
        `served`: the request itself, for the candidate to serve (see `copy_headers`); its
        time is never paired, so the loop's stalls are not watched for it."""
        if not request.path.startswith("/"):  # `@host/…` would make `base` a user name
            return Outcome(error="protocol", latency=0.0)
        if not served:
            self.lag.start()
        clock = Clock(self.lag)
        try:
            with stamps.writing(clock.stamps):
                async with self.session.request(
                    request.method,
                    # encoded: the request target goes out byte for byte as the client sent
                    # it, never re-quoted or normalised (`/a/../b`, `%7e`, a raw `<` stay)
                    URL(base + request.path, encoded=True),
                    headers=copy_headers(request.headers, None if served else self.cfg),
                    data=request.body or None,
                    allow_redirects=False,
                    compress=None,
                    trace_request_ctx=clock,
                ) as response:
                    body = await self._read(response)
                    return Outcome(
                        status=response.status,
                        headers=list(response.raw_headers),
                        body=body,
                        latency=clock.trusted(len(body)),
                    )
        except TooLarge:
            return Outcome(error="too_large", latency=clock.elapsed())
        except ValueError as e:  # aiohttp's refusal to build it (InvalidURL is one too)
            raise Unsendable(str(e)) from None
        except Exception as e:  # noqa: BLE001 - a copy never raises: every failure is an outcome
            return Outcome(error=error_kind(e), latency=clock.elapsed())

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        limit = self.cfg.max_body
        if response.content_length is not None and response.content_length > limit:
            raise TooLarge
        body = bytearray()
        async for chunk in response.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > limit:
                raise TooLarge
        return bytes(body)
