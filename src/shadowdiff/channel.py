"""The bounded, non-blocking hand-off from the tap (proxy process) to the worker process.

A Unix socket pair carries length-prefixed pickled records. The writing side never blocks and
never awaits: it writes what the kernel takes at once, keeps the rest in a buffer drained by the
event loop when the socket is writable, and refuses a record (the caller counts a drop) when
that buffer would exceed its byte budget. Both ends are our own processes, so pickle is safe.
What travels back is small and rare: the worker's one-byte greeting (it is up and reading),
then framed control records (the kill switch and the sampling dial) for the tap to apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shadowdiff.config import Config
from shadowdiff.model import Outcome

_HEADER = struct.Struct("!I")


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


@dataclass(frozen=True, slots=True)
class Control:
    """Worker → tap: the kill switch and the dial. `rate` None: the config's rates apply."""

    paused: bool
    rate: float | None


@dataclass(frozen=True, slots=True)
class Setup:
    """The first record on the channel: what the worker needs to know, including the
    switch and dial a restarted worker must keep."""

    config: Config
    instance: str
    control: Control = Control(paused=False, rate=None)


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
        self.loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[bool] = self.loop.create_future()
        self.loop.add_reader(sock, self._readable)

    def send(self, record: Any) -> bool:
        if self.broken:
            return False
        data = frame(record)
        if self.buffer:
            if len(self.buffer) + len(data) > self.budget:
                return False
            self.buffer += data
            return True
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.abandon()
            return False
        if sent < len(data):
            # A frame the kernel took in part is always finished, to keep the framing whole.
            self.buffer += memoryview(data)[sent:]
            self.loop.add_writer(self.sock, self._drain)
        return True

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
            self.loop.remove_reader(self.sock)
            if not self.ready.done():
                self.ready.set_result(False)
            return
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

    def abandon(self) -> None:
        self.broken = True
        self.buffer.clear()
        self.loop.remove_writer(self.sock)

    def close(self, timeout: float, last: Any = None) -> None:
        """Flush what is buffered and the `last` record, whatever the budget (blocking,
        bounded by `timeout`), then close. Shutdown only."""
        self.loop.remove_writer(self.sock)
        self.loop.remove_reader(self.sock)
        if not self.ready.done():
            self.ready.set_result(False)
        if last is not None and not self.broken:
            self.buffer += frame(last)
        if self.buffer and not self.broken:
            self.sock.settimeout(timeout)
            with contextlib.suppress(OSError):
                self.sock.sendall(self.buffer)
        self.buffer.clear()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        self.sock.close()


class Reader:
    """The worker's end: yields records until the tap closes its side."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer  # held: a collected StreamWriter closes the connection

    @classmethod
    async def open(cls, sock: socket.socket) -> Reader:
        return cls(*await asyncio.open_unix_connection(sock=sock))

    def greet(self) -> None:
        self.writer.write(b"R")

    def send(self, record: Any) -> None:
        """A control record back to the tap (buffered by the stream, never awaited)."""
        if not self.writer.is_closing():
            self.writer.write(frame(record))

    async def read(self) -> Any | None:
        """The next record, or None at end of stream."""
        try:
            header = await self.reader.readexactly(_HEADER.size)
            (length,) = _HEADER.unpack(header)
            payload = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return pickle.loads(payload)
