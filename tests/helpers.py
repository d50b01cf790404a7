"""Helpers shared by test modules: ports, waiting, alert settings. The process harness and
the fixtures are in conftest.py, the records in factories.py. Tests import no helper from
product code."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shadowdiff.config import Config, load_config
from shadowdiff.store import Store

if TYPE_CHECKING:
    from conftest import Receiver


_GIVEN: set[int] = set()
"""Ports handed out in this test process: the kernel may give a port just closed again, and
a proxy told the same port twice (to listen on and for its control server) answers its
clients from the wrong server."""


def free_port() -> int:
    """A loopback port nobody listens on now (for a process that must be told its port),
    never one this process handed out before."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


async def until(condition: Any, timeout: float = 10.0, every: float = 0.02) -> None:
    """Returns once `condition()` holds; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(every)


async def wait_listening(port: int, timeout: float = 30.0) -> None:
    """Returns once something accepts connections on 127.0.0.1:`port`; fails the test after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port}") from None
            await asyncio.sleep(0.1)


async def written(client: Any, control: str, n: int, timeout: float = 30.0) -> None:
    """Returns once the proxy whose control server is `control` has recorded `n` exchanges
    (so a stop that follows bounds nothing): fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        async with client.get(control + "/api/status") as r:
            counts = (await r.json())["counts"]
        if counts.get("recorded", 0) >= n:
            return
        assert time.monotonic() < deadline, counts
        await asyncio.sleep(0.1)


def aggregates(store: Store, run: str) -> tuple[object, ...]:
    """Everything a store's aggregates answer for `run`, to compare two stores or two moments."""
    return (
        store.routes(run),
        store.statuses(run),
        store.path_counts(run),
        store.signatures(run),
        list(store.latency_sample(run)),
    )


def alerting_config(receiver: Receiver, tmp_path: Path, **auto: Any) -> Config:
    """A config whose alerts go to `receiver` at once; `auto`: alerts.auto_pause settings."""
    return load_config(
        None,
        {
            "shadow": "http://127.0.0.1:9",
            "store": str(tmp_path / "l.db"),
            "judge.min_pairs": 5,
            "alerts.webhooks": [{"url": receiver.url, "format": "generic"}],
            "alerts.debounce": "1ms",
            **{f"alerts.auto_pause.{k}": v for k, v in auto.items()},
        },
    )


async def delivered(receiver: Receiver, n: int) -> list[str]:
    """The events of the first `n` alerts `receiver` got (waiting up to 5 s), once no more come."""
    deadline = time.monotonic() + 5
    while len(receiver.got) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # and nothing more
    return [a["event"] for a in receiver.got]
