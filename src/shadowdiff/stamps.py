"""The kernel's clock on a connection: when a request's last part was handed to the kernel,
and when the kernel received the last bytes read back.

Why: a copy's answer is read on the worker's event loop, and a loop that is stalled (a
starved CPU, another thread holding the GIL) reads every answer in flight late by the same
stall, so a pair's ratio drifts to 1 and a real slowdown can PASS. The kernel stamps each
packet as it arrives (`SO_TIMESTAMPNS`), whatever the reader is doing, so a copy timed by its
socket is timed as the wire saw it. Hand-written because neither asyncio nor aiohttp reads a
socket's ancillary data: `Stamped` is the socket aiohttp's connector creates (its
`socket_factory`), and asyncio's transport calls its `send`/`sendmsg` and `recv`/`recv_into`
(TLS's reads) like any socket's.

The stamps are the copy's (`Stamps`), not the connection's: aiohttp hands a connection back
to its pool as the answer's last bytes are read, before the copy's task resumes, so the next
copy may write on it first; what the earlier copy was timed by stays its own.

Linux only: elsewhere, or on a Linux whose socket constants are not the generic ones,
`factory()` is None and copies are timed on the loop (see `client.Clock`).
"""

from __future__ import annotations

import functools
import logging
import platform
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

logger = logging.getLogger("shadowdiff.stamps")

SO_TIMESTAMPNS = 35
"""`SO_TIMESTAMPNS` (and its message type) in <asm-generic/socket.h>; Python's socket module
does not name it."""
GENERIC = frozenset(
    {"x86_64", "aarch64", "armv7l", "armv8l", "i686", "ppc64le", "riscv64", "s390x"}
)
"""Machines whose Linux socket constants are the generic ones (sparc, parisc, alpha and mips
number theirs apart, so 35 would set another option there)."""
STAMP = struct.Struct("@ll")
"""The kernel's struct timespec under this option: two native longs (seconds, nanoseconds),
so 32-bit machines read theirs too."""
ROOM = socket.CMSG_SPACE(STAMP.size) if hasattr(socket, "CMSG_SPACE") else 0


class Stamped(socket.socket):
    """A socket that credits its sends and reads to the copy whose request it carries
    (`owner`): a copy becomes it by its first write here (told by `_writing`); each send
    notes the wall-clock time (`Stamps.sent`), each read the kernel's arrival time of the
    last bytes it returned (`Stamps.received`)."""

    owner: Stamps | None = None

    def _sending(self) -> None:
        stamps = _writing.get()
        if stamps is not None and stamps.sock is not self:  # a copy's first write here
            stamps.sock, stamps.received, self.owner = self, 0.0, stamps
        elif stamps is not None and stamps is not self.owner:
            return  # an earlier copy's context writing (TLS's own records): no request's part
        if self.owner is not None:
            self.owner.sent = time.time()  # the kernel's stamps are wall-clock time too

    def send(self, data: Any, flags: int = 0) -> int:
        self._sending()
        return super().send(data, flags)

    def sendmsg(self, *args: Any) -> int:  # asyncio's buffered writes on 3.12
        self._sending()
        return super().sendmsg(*args)

    def recv(self, size: int, flags: int = 0) -> bytes:
        data, ancillary, _, _ = self.recvmsg(size, ROOM, flags)
        self._arrived(len(data), ancillary)
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:  # TLS reads
        with memoryview(buffer) as whole, whole.cast("B") as view:
            if not 0 <= nbytes <= len(view):
                raise ValueError("nbytes is out of the buffer's range")
            got, ancillary, _, _ = self.recvmsg_into([view[: nbytes or len(view)]], ROOM, flags)
        self._arrived(got, ancillary)
        return got

    def _arrived(self, got: int, ancillary: list[tuple[int, int, bytes]]) -> None:
        if self.owner is None or not got:  # nobody's, or the end of the stream: no bytes
            return
        self.owner.received = 0.0  # bytes read without a stamp (cut short) leave no time
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= STAMP.size:
                seconds, nanoseconds = STAMP.unpack_from(data)
                self.owner.received = seconds + nanoseconds / 1e9


class Stamps:
    """One copy's times on the connection its request was written on (`sock`)."""

    __slots__ = ("received", "sent", "sock")

    def __init__(self) -> None:
        self.sock: Stamped | None = None
        self.sent = self.received = 0.0

    def elapsed(self) -> float | None:
        """Seconds from the request's last part sent to the answer's last bytes received, by
        the kernel; None without stamps, or when the last read predates the last send."""
        if not (self.sent and self.received):
            return None
        took = self.received - self.sent
        return took if took >= 0 else None


_writing: ContextVar[Stamps | None] = ContextVar("shadowdiff_writing", default=None)
"""The copy whose request the current task writes: each copy is a task of its own, and its
request's first part is written from that task (the rest, if the kernel's buffer was full,
from the loop's callbacks, which still update the socket's `sent`)."""


@contextmanager
def writing(stamps: Stamps) -> Iterator[None]:
    token = _writing.set(stamps)
    try:
        yield
    finally:
        _writing.reset(token)


def _stamped(address: tuple[Any, ...]) -> socket.socket:
    family, kind, protocol, _, _ = address
    sock = Stamped(family, kind, protocol)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        sock.close()
        raise
    return sock


@functools.cache
def factory() -> Callable[[tuple[Any, ...]], socket.socket] | None:
    """aiohttp's `socket_factory` for stamped sockets, or None where the kernel has no
    stamps for us (said once in the log)."""
    if sys.platform == "linux" and platform.machine() in GENERIC and ROOM:
        try:
            _stamped((socket.AF_INET, socket.SOCK_STREAM, 0, "", ())).close()
            return _stamped
        except OSError:
            pass
    logger.info("no kernel receive timestamps here: copies are timed on the worker's loop")
    return None
