"""Offline replay: recorded traffic (mitmproxy flow files, HAR) through the worker's pipeline,
with the primary called too. The names load lazily (reading a file needs no worker)."""

from typing import TYPE_CHECKING

from shadowdiff.lazy import exports

if TYPE_CHECKING:
    from shadowdiff.replay.flowfiles import Recording, read
    from shadowdiff.replay.replay import replay

__all__ = ["Recording", "read", "replay"]
__getattr__ = exports(__name__, {"Recording": "flowfiles", "read": "flowfiles", "replay": "replay"})
