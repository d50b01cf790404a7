"""The wait between two rounds of every periodic task of the worker and the faces (the
flusher, the release controller, the incidents' watch): a period at most, and no longer once
the process is stopping, so a shutdown never waits out a period."""

from __future__ import annotations

import asyncio
import contextlib


async def pause(stop: asyncio.Event, seconds: float) -> bool:
    """Waits `seconds`, or until `stop` is set; True when it is (the task should leave)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
