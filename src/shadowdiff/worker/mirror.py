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

    A request the tap asked the candidate for itself (a release stage) is paired like any
    other, on this clock: served, it gets a copy to the primary (whose answer is the pair's
    other side) beside a timed copy to the candidate, whose time stands for the answer the
    tap got (timed on the proxy's busy loop, never on this clock); one the candidate failed
    (a fallback) gets no copy to it and no latency pair."""
    copies = list(targets.items())
    reference = paired_by(cfg, request.method)
    if request.served:
        assert cfg.primary is not None  # the config refuses a serving release without it
        copies.append(("primary", cfg.primary))
        if reference == "proxy":  # no proxy span here: the primary's copy times it
            reference = "primary"
    elif request.candidate is not None:
        copies = [(name, url) for name, url in copies if name != "shadow"]
        reference = None
    elif latency_reference(cfg) != "secondary" and not live:
        reference = "primary"
    elif reference == "primary":
        assert cfg.primary is not None  # the config refuses reference primary without it
        copies.append(("primary", cfg.primary))
    return random.sample(copies, len(copies)), reference


def timed_by_copy(answer: Outcome, copy: Outcome | None) -> Outcome:
    """An answer on its timed copy's clock (the primary's with reference `primary`, the one
    the candidate served): the copy's latency, or none if the copy failed; as it is when no
    copy was timed."""
    if copy is None:
        return answer
    return dataclasses.replace(answer, latency=None if copy.error else copy.latency)
