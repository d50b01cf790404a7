"""The data that flows tap → worker → store: snapshots, outcomes, exchanges and events.

Plain, picklable records with no behaviour, so every module downstream can read them without
knowing mitmproxy or aiohttp. Headers are kept as raw (name, value) byte pairs, in order,
repeats included; bodies as the bytes on the wire (still content-encoded).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

Headers = list[tuple[bytes, bytes]]

ERROR_KINDS = ("timeout", "connect", "reset", "too_large", "protocol")

WHOLE, ROW, COUNTED = "whole", "row", "counted"
"""How much of an exchange the store keeps (`Exchange.kept`): its whole row with headers and
bodies, the row without them, or nothing beyond the route's aggregates and latency sample."""

MATCHED, IGNORED, DIVERGENT = "matched", "ignored", "divergent"
"""What became of a compared exchange (Scientist's vocabulary): counted apart, so nothing
hides behind an ignore rule."""


@dataclass(slots=True)
class RequestSnapshot:
    """What the tap copies from a sampled request, before the primary is even contacted."""

    flow_id: str
    method: str
    path: str
    headers: Headers
    body: bytes
    timestamp: float
    candidate: Outcome | None = None
    """The candidate's answer when the tap asked it itself (a release stage serves this
    request from the candidate): no copy goes to the shadow then."""
    served: bool = False
    """The candidate's answer went to the client; the primary gets a copy instead. False
    with a `candidate`: it failed, and the primary served the request (a fallback)."""


@dataclass(slots=True)
class Outcome:
    """One side's answer: a response, or an error kind from ERROR_KINDS."""

    status: int | None = None
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    latency: float | None = None
    error: str | None = None


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
    kept: str = WHOLE
    """WHOLE, ROW or COUNTED: what the recorder chose to store of it (`storage.bodies`)."""


@dataclass(frozen=True, slots=True)
class Event:
    """Something an operator (or the automatic kill switch) did, kept in the store."""

    ts: float
    kind: str
    actor: str
    old: str
    new: str


RUNNING, HELD, ROLLED_BACK, COMPLETE = "running", "held", "rolled_back", "complete"
"""A release's states: judged and promoted when its gate is met; judged but waiting for a
person (`promote` or `rollback`); rolled back (the primary serves everyone, for good); at
its last stage with the gate met."""
RELEASE_ACTIONS = ("promote", "hold", "resume", "rollback")
"""What a person may do to a release (`ctl release`, the control server, the dashboard)."""


@dataclass(frozen=True, slots=True)
class ReleaseState:
    """Where a run's release is, as every proxy of the run reads it from the store."""

    stage: int
    state: str
    since: float
    """When the stage began (or was resumed), epoch seconds: its gate's clock."""
    base: int
    """The run's pairs compared when the stage began: the stage's own are those beyond."""
    actor: str
    why: str
    version: int = 0
    """Bumped by every change: a change is made only on the version it was decided on, so
    two proxies deciding at once cannot both move the release."""


@dataclass(slots=True)
class Incident:
    """A check of a route that turned FAIL, from its first bad exchange to its resolution:
    one per (run, route, check) at a time, however often the route flaps meanwhile. Times
    are epoch seconds; None: not (yet) happened."""

    run: str
    key: str
    """The dedup key every destination groups by: stable for (run, route, check)."""
    seq: int
    """Which incident of that key this is: 1, then 2 once the first resolved, …"""
    route: str
    check: str
    team: str
    severity: str
    summary: str
    started: float
    """The first bad exchange of the route within the window that failed (else: opened)."""
    opened: float
    """The judgement that found the check FAIL."""
    alerted: float | None = None
    acked: float | None = None
    acked_by: str | None = None
    mitigated: float | None = None
    mitigated_by: str | None = None
    resolved: float | None = None
    resolved_why: str | None = None

    def durations(self) -> dict[str, float | None]:
        """Seconds to detect (first bad exchange → page), to acknowledge (page → ack), to
        mitigate and to resolve (first bad exchange → either); None: not (yet) happened."""

        def since(start: float | None, end: float | None) -> float | None:
            return None if start is None or end is None else max(end - start, 0.0)

        return {
            "detect": since(self.started, self.alerted),
            "acknowledge": since(self.alerted, self.acked),
            "mitigate": since(self.started, self.mitigated),
            "resolve": since(self.started, self.resolved),
        }

    def row(self) -> dict[str, Any]:
        """As the verdict document, the control server and `shadowdiff incidents` show it."""
        return {**asdict(self), "durations": self.durations()}


def span(seconds: float | None) -> str:
    """An incident's duration as its timeline shows it ("—": not happened)."""
    if seconds is None:
        return "—"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def result_of(divergences: list[Divergence]) -> str:
    """matched (no difference), ignored (only where rules say), or divergent."""
    if not divergences:
        return MATCHED
    return IGNORED if all(d.rule for d in divergences) else DIVERGENT


def apply_merge(route: str, old: str, new: str) -> str:
    """`route` with its prefix `old` replaced by `new` (whole segments only)."""
    if route == old or route.startswith(old + "/"):
        return new + route[len(old) :]
    return route
