"""Helpers shared by test modules (the process harness and fixtures are in conftest.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from conftest import Receiver
from shadowdiff.config import Config, load_config


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
