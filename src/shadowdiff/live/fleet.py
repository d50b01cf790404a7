"""Several proxy processes on one host: mitmproxy uses one core, so a busy service gets one
proxy per core, each on its own port, behind a load balancer (configs/nginx.conf), all writing
one store and one run. Each process has its own worker and its own instance id; the gate, the
reports and `/verdict` read the whole run from the store.

This module only starts, watches and stops the processes: each is a plain `shadowdiff proxy`.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from types import FrameType

logger = logging.getLogger("shadowdiff.fleet")


def shifted(listen: str, offset: int) -> str:
    """`HOST:PORT` moved `offset` ports up: process i of a fleet listens on PORT + i."""
    host, _, port = listen.rpartition(":")
    return f"{host}:{int(port) + offset}"


def run(args: list[str], listen: str, control: str | None, processes: int) -> int:
    """Runs `processes` proxies (each `shadowdiff proxy` with `args` and its own listen and
    control address) until a signal arrives or all have exited; the worst exit status.

    A proxy that dies is logged and the others go on: the load balancer sends its share to
    them, and its worker has already counted what it lost.
    """
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shadowdiff",
                "proxy",
                *args,
                f"--listen={shifted(listen, i)}",
                f"--control={shifted(control, i) if control else 'off'}",
            ]
        )
        for i in range(processes)
    ]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    running = set(range(processes))
    while running:
        time.sleep(0.2)
        for i in sorted(running):
            status = children[i].poll()
            if status is None:
                continue
            running.discard(i)
            if not stopping:
                logger.error(
                    "proxy %d of %d on %s exited with status %s; the others go on",
                    i + 1,
                    processes,
                    shifted(listen, i),
                    status,
                )
    return max(abs(int(child.returncode or 0)) for child in children)
