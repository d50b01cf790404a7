"""Offline replay: recorded traffic (mitmproxy flow files, HAR) through the worker's pipeline,
with the primary called too."""

from shadowdiff.replay.flowfiles import Recording, read
from shadowdiff.replay.replay import replay

__all__ = ["Recording", "read", "replay"]
