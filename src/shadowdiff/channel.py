"""The bounded, non-blocking hand-off from the tap (proxy process) to the worker process.

A Unix socket pair carries length-prefixed pickled records. The writing side never blocks and
never awaits: it writes what the kernel takes at once, keeps the rest in a buffer drained by the
event loop when the socket is writable, and refuses a record (the caller counts a drop) when
that buffer would exceed its byte budget. Both ends are our own processes, so pickle is safe.
What travels back is small and rare: the worker's one-byte greeting (it is up and reading),
then framed control records (the kill switch and the sampling dial, the release's stage) for
the tap to apply, and at the end its final books. Closing never blocks either: the tap hands
over what it holds, ends its side, and the worker answers and closes its own once it has
finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shadowdiff.config import Config
from shadowdiff.model import Outcome

_HEADER = struct.Struct("!I")

# -- how long a worker's stop may take, which the tap waits for ------------------------

FLUSH_BUDGET = 1.0
"""Seconds of comparison one flush does at most, so a flush in progress never holds the end
of the worker (or its counters' next write) for longer."""
FINAL_ANALYSIS = 5.0
"""Seconds a stopping worker spends comparing the exchanges it holds: with bodies that are
slow to compare, more could be held than any stop can wait for."""
FINAL_WRITE = 5.0
"""Seconds a stopping worker keeps retrying a store that refuses its last batch."""
STORE_ATTEMPT = 10.0
"""Seconds one store write may block at most: SQLite's lock timeout, PostgreSQL's statement
timeout (a test holds the stores to it)."""
STOP_MARGIN = FLUSH_BUDGET + FINAL_ANALYSIS + FINAL_WRITE + 3 * STORE_ATTEMPT + 2.0
"""Seconds beyond `mirror.grace` that the end of the process gives a stopping worker: the
flush in progress, the comparison of what it holds and the final write's retries, each
ending with one store attempt that may wait its longest, and a margin for the books' reply.
Beyond, the worker is killed, and said so."""


# -- the records only the channel carries ---------------------------------------------


@dataclass(slots=True)
class PrimaryResult:
    """The primary's outcome for a snapshot the tap handed off earlier.

    `skip` names a reason the exchange cannot be compared (a streamed or oversized response):
    the worker then drops it, counted under that reason.
    """

    flow_id: str
    outcome: Outcome
    skip: str | None = None


@dataclass(slots=True)
class TapCounts:
    """The tap's cumulative counters, sent periodically so the store can reconcile them."""

    instance: str
    counts: dict[str, int]
    ending: bool = False
    """Set on the last record when the proxy process ends (not a script reload, whose next
    worker goes on with the run)."""


@dataclass(frozen=True, slots=True)
class Control:
    """Worker → tap: the kill switch and the dial. `rate` None: the config's rates apply."""

    paused: bool
    rate: float | None


@dataclass(frozen=True, slots=True)
class Serving:
    """Worker → tap: the release's stage (an index into `release.stages`) and its state as
    the store holds it. The tap serves the stage's users from the candidate only while it is
    running, held or complete: neither when rolled back nor when `stale` (the controller
    cannot read the state)."""

    stage: int
    state: str


@dataclass(frozen=True, slots=True)
class Setup:
    """The first record on the channel: what the worker needs to know, including the
    switch and dial a restarted worker must keep.

    `generation`: workers of this tap that died before this one; above 0 the worker first
    takes over their books in the store. `counts`: the tap's counters as it started the
    worker, the line between what the dead ones were handed and what this one will be.
    `handover`: a worker the proxy stopped is still finishing and may hold the control port
    for a moment."""

    config: Config
    instance: str
    control: Control = Control(paused=False, rate=None)
    generation: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    handover: bool = False


@dataclass(frozen=True, slots=True)
class Final:
    """Worker → tap, its last word: this tap instance's whole books as the worker knows them,
    `unwritten` exchanges it could not write (counted in them as `dropped.store`), and
    whether the store's counts for the instance are `stale` (its last writes failed)."""

    counts: dict[str, int]
    unwritten: int
    stale: bool


def frame(record: Any) -> bytes:
    payload = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


class Writer:
    """Sends records without ever blocking the loop; `send` says whether the record was taken."""

    def __init__(
        self,
        sock: socket.socket,
        budget: int,
        on_message: Callable[[Any], None] = lambda record: None,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.budget = budget
        self.buffer = bytearray()
        self.inbox = bytearray()
        self.on_message = on_message
        self.broken = False
        self.closing = False
        self.loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[bool] = self.loop.create_future()
        self.ended: asyncio.Future[None] = self.loop.create_future()
        """Resolves once the channel is over: the worker closed its side (it finished, or it
        died), or `finish` stopped waiting."""
        self.loop.add_reader(sock, self._readable)

    def send(self, record: Any) -> bool:
        if self.broken or self.closing:
            return False
        data = frame(record)
        if self.buffer and len(self.buffer) + len(data) > self.budget:
            return False
        self._put(data)
        return not self.broken

    def _put(self, data: bytes) -> None:
        """Writes what the kernel takes now and buffers the rest: a frame the kernel took in
        part is always finished, to keep the framing whole."""
        if self.buffer:
            self.buffer += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.abandon()
            return
        if sent < len(data):
            self.buffer += memoryview(data)[sent:]
            self.loop.add_writer(self.sock, self._drain)

    def _readable(self) -> None:
        """The greeting, then control records; end of stream before the greeting means the
        worker died first."""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._end()
            return
        self._received(data)

    def _received(self, data: bytes) -> None:
        if not self.ready.done():
            self.ready.set_result(True)
            data = data[1:]
        self.inbox += data
        while len(self.inbox) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(self.inbox)
            if len(self.inbox) < _HEADER.size + length:
                break
            payload = bytes(self.inbox[_HEADER.size : _HEADER.size + length])
            del self.inbox[: _HEADER.size + length]
            self.on_message(pickle.loads(payload))

    @property
    def backlog(self) -> int:
        return len(self.buffer)

    def _drain(self) -> None:
        try:
            sent = self.sock.send(self.buffer)
        except BlockingIOError:
            return
        except OSError:
            self.abandon()
            return
        del self.buffer[:sent]
        if not self.buffer:
            self.loop.remove_writer(self.sock)
            if self.closing:
                self._shut()

    def abandon(self) -> None:
        """The worker is gone: refuse every record from now on."""
        if self.broken:
            return
        self.broken = True
        self.buffer.clear()
        self.loop.remove_writer(self.sock)

    def close(self, last: Any = None) -> None:
        """Hands over what is buffered and the `last` record, whatever the budget, then ends
        our side; never blocks. The worker reads to the end, sends its final records and
        closes its side, and `ended` resolves; `finish` waits for that where no loop will."""
        if self.closing:
            return
        self.closing = True
        if self.broken:
            return
        if last is not None:
            self._put(frame(last))
        if not self.buffer:
            self._shut()

    def finish(self, timeout: float) -> bool:
        """Blocks until the worker has ended its side, at most `timeout` seconds: for the
        end of the process, where the loop will not run again. Whether it did."""
        if self.ended.done():
            return True
        self.close()
        self.loop.remove_writer(self.sock)
        self.loop.remove_reader(self.sock)
        deadline = time.monotonic() + timeout
        ended = True
        try:
            while self.buffer and not self.broken:
                self.sock.settimeout(_left(deadline))
                del self.buffer[: self.sock.send(self.buffer)]
            self._shut()
            while data := self._recv(deadline):
                self._received(data)
        except TimeoutError:
            ended = False
        except OSError:
            pass  # the worker died: nothing more will come
        self._end()
        return ended

    def _recv(self, deadline: float) -> bytes:
        self.sock.settimeout(_left(deadline))
        return self.sock.recv(65536)

    def _shut(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def _end(self) -> None:
        """Nothing more goes either way."""
        self.broken = True
        self.buffer.clear()
        self.loop.remove_writer(self.sock)
        self.loop.remove_reader(self.sock)
        self.sock.close()
        if not self.ready.done():
            self.ready.set_result(False)
        if not self.ended.done():
            self.ended.set_result(None)


def _left(deadline: float) -> float:
    """Seconds until `deadline`, for a socket timeout (0 would mean non-blocking)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


class Reader:
    """The worker's end: yields records until the tap closes its side."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer  # held: a collected StreamWriter closes the connection
        self.early: list[bytes] | None = []  # records sent before the greeting

    @classmethod
    async def open(cls, sock: socket.socket) -> Reader:
        return cls(*await asyncio.open_unix_connection(sock=sock))

    def greet(self) -> None:
        """The byte that says the worker reads, then what was sent before it."""
        self.writer.write(b"R" + b"".join(self.early or []))
        self.early = None

    def send(self, record: Any) -> None:
        """A control record back to the tap (buffered by the stream, never awaited); held
        until the greeting, which must be the first byte the tap reads (the control server
        takes a pause before it)."""
        if self.early is not None:
            self.early.append(frame(record))
        elif not self.writer.is_closing():
            self.writer.write(frame(record))

    async def close(self) -> None:
        """Ends the worker's side once what was sent is out: the tap then sees the end."""
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()

    async def read(self) -> Any | None:
        """The next record, or None at end of stream."""
        try:
            header = await self.reader.readexactly(_HEADER.size)
            (length,) = _HEADER.unpack(header)
            payload = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return pickle.loads(payload)
