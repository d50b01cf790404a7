"""What copies an exchange gets, and on whose clock its primary is timed."""

from __future__ import annotations

import dataclasses
import random

from shadowdiff.config import Config, Reference, latency_reference, paired_by
from shadowdiff.model import Outcome, RequestSnapshot


def plan(
    cfg: Config, targets: dict[str, str], request: RequestSnapshot, live: bool
) -> tuple[list[tuple[str, str]], Reference | None]:
    """An exchange's copies (name, base URL) in a random order, and what times its latency
    baseline (None: it has no latency pair). That is the configured reference, except that a
    replay (not `live`) calls the primary itself, timed on this same clock, and that only a
    safe request gets a timed copy to the primary.

    A request the tap asked the candidate for itself (a release stage) gets no copy to the
    shadow, and no latency pair: that answer was timed on the proxy's busy loop, never this
    clock. When the candidate served it, the primary gets the copy that pairs it."""
    copies = list(targets.items())
    reference = paired_by(cfg, request.method)
    if request.candidate is not None:
        copies = [(name, url) for name, url in copies if name != "shadow"]
        reference = None
        if request.served:
            assert cfg.primary is not None  # the config refuses a serving release without it
            copies.append(("primary", cfg.primary))
    elif latency_reference(cfg) != "secondary" and not live:
        reference = "primary"
    elif reference == "primary":
        assert cfg.primary is not None  # the config refuses reference primary without it
        copies.append(("primary", cfg.primary))
    return random.sample(copies, len(copies)), reference


def timed_by_copy(primary: Outcome, copy: Outcome | None) -> Outcome:
    """The primary's outcome on its timed copy's clock (reference `primary`): the copy's
    latency, or none if the copy failed; as it is when no copy was timed."""
    if copy is None:
        return primary
    return dataclasses.replace(primary, latency=None if copy.error else copy.latency)
