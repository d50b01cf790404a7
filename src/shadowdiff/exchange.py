"""The data that flows tap → worker → store: snapshots, outcomes and exchanges.

Plain, picklable records with no behaviour, so every module downstream can read them without
knowing mitmproxy or aiohttp. Headers are kept as raw (name, value) byte pairs, in order,
repeats included; bodies as the bytes on the wire (still content-encoded).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shadowdiff.config import Config

Headers = list[tuple[bytes, bytes]]

ERROR_KINDS = ("timeout", "connect", "reset", "too_large", "protocol")


@dataclass(slots=True)
class RequestSnapshot:
    """What the tap copies from a sampled request, before the primary is even contacted."""

    flow_id: str
    method: str
    path: str
    headers: Headers
    body: bytes
    timestamp: float


@dataclass(slots=True)
class Outcome:
    """One side's answer: a response, or an error kind from ERROR_KINDS."""

    status: int | None = None
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    latency: float | None = None
    error: str | None = None


@dataclass(slots=True)
class PrimaryResult:
    """The primary's outcome for a snapshot the tap handed off earlier.

    `skip` names a reason the exchange cannot be compared (a streamed or oversized response):
    the worker then drops it, counted under that reason.
    """

    flow_id: str
    outcome: Outcome
    skip: str | None = None


@dataclass(slots=True)
class TapCounts:
    """The tap's cumulative counters, sent periodically so the store can reconcile them."""

    instance: str
    counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class Divergence:
    """A difference at `path`: `status`, `outcome`, `header:<name>`, `body` or `body:$...`.

    `rule` names the rule that neutralised it (ignore, tolerance, normalize); None: it counts.
    """

    path: str
    kind: str
    left: str
    right: str
    rule: str | None = None


@dataclass(slots=True)
class Exchange:
    """One sampled request with every side's outcome: the unit the store records.

    The divergences are the shadow's and the secondary's against the primary, filled in by
    the comparison before the exchange is stored.
    """

    request: RequestSnapshot
    primary: Outcome
    shadow: Outcome
    secondary: Outcome | None
    route: str
    shadow_diffs: list[Divergence] = field(default_factory=list)
    secondary_diffs: list[Divergence] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Control:
    """Worker → tap: the kill switch and the dial. `rate` None: the config's rates apply."""

    paused: bool
    rate: float | None


@dataclass(frozen=True, slots=True)
class Event:
    """Something an operator (or the automatic kill switch) did, kept in the store."""

    ts: float
    kind: str
    actor: str
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class Setup:
    """The first record on the channel: what the worker needs to know, including the
    switch and dial a restarted worker must keep."""

    config: Config
    instance: str
    control: Control = Control(paused=False, rate=None)
