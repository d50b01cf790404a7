"""The hand-off: records arrive whole and in order; a full buffer refuses, never blocks."""

from __future__ import annotations

import asyncio
import socket
import time

from factories import snapshot

from shadowdiff.channel import STORE_ATTEMPT, Control, Reader, Writer, frame
from shadowdiff.model import RequestSnapshot


def numbered(i: int, size: int = 10) -> RequestSnapshot:
    return snapshot(f"f{i}", path=f"/{i}", headers=[(b"a", b"b")], body=b"x" * size)


async def test_records_arrive_in_order_and_whole():
    ours, theirs = socket.socketpair()
    writer = Writer(ours, budget=64 * 1024 * 1024)
    reader = await Reader.open(theirs)
    sent = [numbered(i, size=i * 1000) for i in range(200)]
    assert all(writer.send(s) for s in sent)  # more than the kernel buffer: some wait in ours
    received = [await reader.read() for _ in sent]
    assert received == sent
    writer.close()
    assert await reader.read() is None


async def test_full_buffer_refuses_without_blocking():
    ours, theirs = socket.socketpair()
    writer = Writer(ours, budget=1024 * 1024)
    started = time.perf_counter()
    results = [writer.send(numbered(i, size=100_000)) for i in range(100)]
    assert time.perf_counter() - started < 0.5
    assert results.count(False) > 50 and results[:5] == [True] * 5
    assert writer.backlog <= 1024 * 1024
    # once the reader catches up, the buffer drains and sends are taken again
    reader = await Reader.open(theirs)
    accepted = results.count(True)
    for _ in range(accepted):
        assert (await reader.read()).body == b"x" * 100_000
    await asyncio.sleep(0.05)
    assert writer.backlog == 0 and writer.send(numbered(1))
    writer.close()


async def test_dead_reader_breaks_the_writer():
    ours, theirs = socket.socketpair()
    writer = Writer(ours, budget=1024)
    theirs.close()
    assert not writer.send(numbered(1))
    assert writer.broken and not writer.send(numbered(2))
    writer.close()


async def test_greeting_says_the_worker_reads():
    ours, theirs = socket.socketpair()
    writer = Writer(ours, budget=1024)
    reader = await Reader.open(theirs)
    assert not writer.ready.done()
    reader.greet()
    assert await asyncio.wait_for(writer.ready, 5) is True
    writer.close()

    ours, theirs = socket.socketpair()
    writer = Writer(ours, budget=1024)
    theirs.close()  # died before greeting
    assert await asyncio.wait_for(writer.ready, 5) is False
    writer.close()


async def test_control_records_travel_back_to_the_tap():
    ours, theirs = socket.socketpair()
    got: list[object] = []
    writer = Writer(ours, budget=1024, on_message=got.append)
    reader = await Reader.open(theirs)
    reader.greet()
    for paused in (True, False, True):  # sent at once: they may arrive in one read
        reader.send(Control(paused=paused, rate=0.5))
    assert await asyncio.wait_for(writer.ready, 5) is True
    deadline = time.monotonic() + 5
    while len(got) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert got == [Control(True, 0.5), Control(False, 0.5), Control(True, 0.5)]
    writer.close()


async def test_close_never_blocks_and_hands_over_everything():
    """A script reload closes the channel on mitmproxy's loop: with a worker that reads
    nothing yet, closing still returns at once, and the worker later gets every record."""
    ours, theirs = socket.socketpair()
    got: list[object] = []
    writer = Writer(ours, budget=64 * 1024 * 1024, on_message=got.append)
    sent = [numbered(i, size=50_000) for i in range(100)]  # far more than the kernel takes
    assert all(writer.send(s) for s in sent) and writer.backlog > 0
    started = time.perf_counter()
    writer.close(last=Control(paused=True, rate=None))
    assert time.perf_counter() - started < 0.05
    assert not writer.send(numbered(101))  # closing: nothing more is taken
    reader = await Reader.open(theirs)
    reader.greet()
    received = [await reader.read() for _ in range(101)]
    assert received == [*sent, Control(paused=True, rate=None)]
    assert await reader.read() is None  # our side ended once the buffer was out
    reader.send(Control(paused=False, rate=0.5))  # the worker's last word
    await reader.close()
    await asyncio.wait_for(writer.ended, 5)
    assert got == [Control(paused=False, rate=0.5)]


def _worker_end(sock: socket.socket, answer: Control | None) -> int:
    """A worker's end in a thread of its own: reads to the end, answers, closes; how many
    bytes it read."""
    read = 0
    while data := sock.recv(65536):
        read += len(data)
    if answer is not None:
        sock.sendall(b"R" + frame(answer))
        sock.close()
    return read


async def test_finish_waits_for_the_worker_and_reads_its_answer():
    """At the end of the process no loop runs: `finish` pumps both ways, bounded."""
    ours, theirs = socket.socketpair()
    got: list[object] = []
    writer = Writer(ours, budget=64 * 1024 * 1024, on_message=got.append)
    assert all(writer.send(numbered(i, size=50_000)) for i in range(40))
    writer.close(last=Control(paused=False, rate=None))
    worker = asyncio.get_running_loop().run_in_executor(
        None, _worker_end, theirs, Control(True, 0.1)
    )
    assert writer.finish(timeout=10) is True
    assert await worker > 40 * 50_000
    assert got == [Control(True, 0.1)] and writer.ended.done()


async def test_finish_gives_up_on_a_worker_that_never_ends():
    ours, theirs = socket.socketpair()
    writer = Writer(ours, budget=1024)
    started = time.perf_counter()
    assert writer.finish(timeout=0.3) is False
    assert 0.25 < time.perf_counter() - started < 2
    theirs.close()


def test_the_stop_bound_covers_the_longest_store_attempt():
    """The tap's STOP_MARGIN counts on no store write blocking longer than STORE_ATTEMPT."""
    from shadowdiff.store import postgres, sqlite

    assert max(sqlite.LOCK_TIMEOUT, postgres.STATEMENT_TIMEOUT) <= STORE_ATTEMPT
