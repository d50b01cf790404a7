"""The verdict document's shape: the schema of `shadowdiff report --format json` and `/verdict`.

Types only, for mypy (no runtime cost): `evidence.document` builds these, the reports, the gate,
the CLI and the live verdict read them. A face imports them under TYPE_CHECKING, because this
package imports scipy.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

__all__ = [
    "CheckRow",
    "Counts",
    "EventRow",
    "IncidentRow",
    "Example",
    "ExampleSide",
    "Extras",
    "FieldRow",
    "Latency",
    "NeedsRow",
    "Percentiles",
    "RouteRow",
    "StatusCell",
    "VerdictDocument",
]


class Percentiles(TypedDict):
    """Latency percentiles of one side, in seconds."""

    p50: float
    p95: float
    p99: float


class Latency(TypedDict):
    """One route's timings: each side's percentiles (None without any) and the latency check's
    typical shadow / baseline ratio with its CI (None when the check has none)."""

    primary: Percentiles | None
    shadow: Percentiles | None
    secondary: Percentiles | None
    ratio: float | None
    ci: list[float] | None
    baseline: str
    """What the ratio's denominator is, and on which clock ("the primary's latency (a timed
    copy, same client)")."""


class FieldRow(TypedDict):
    """One divergence path of a route (a `noise.Field`), with its rate over the route's pairs.
    `body:…` and `header:…` (kind `more`) count the exchanges with more divergences there than
    are kept one by one."""

    path: str
    kind: str
    count: int
    rate: float
    noise_count: int
    noise: bool
    accepted: bool
    p_value: float | None
    """Fisher's one-sided p that the shadow differs more often than the secondary, adjusted
    over the route's paths; None without a secondary."""


class StatusCell(TypedDict):
    """How many exchanges went from the primary's outcome to the shadow's (a status or an error
    kind)."""

    primary: str
    shadow: str
    count: int


class RouteRow(TypedDict):
    route: str
    pairs: int
    divergent: int
    divergence_rate: float
    fields: list[FieldRow]
    noise_measured: bool
    """Whether a secondary ran: without one, every difference counts (none can be noise)."""
    status_matrix: list[StatusCell]
    latency: Latency


class NeedsRow(TypedDict):
    """What would decide an INCONCLUSIVE check: about `pairs` more of what its `n` counts, and
    the `seconds` they take at the route's rate so far (None when no rate is known)."""

    pairs: int
    seconds: float | None


class CheckRow(TypedDict):
    """A `checks.Check`, its CI as a list; `needs` is None unless the check is INCONCLUSIVE
    and more pairs would decide it (not for timings that cannot be compared)."""

    id: str
    route: str
    result: str
    value: float | None
    threshold: float | None
    n: int
    ci: list[float] | None
    critical: bool
    detail: str
    needs: NeedsRow | None


class Counts(TypedDict):
    """The run's counters; `dropped` and `shadow_errors` by reason (only those above zero)."""

    seen: int
    sampled: int
    recorded: int
    compared: int
    matched: int
    ignored: int
    divergent: int
    dropped: dict[str, int]
    shadow_errors: dict[str, int]


class EventRow(TypedDict):
    """A `model.Event`: what an operator (or the automatic kill switch) did."""

    ts: float
    kind: str
    actor: str
    old: str
    new: str


class Durations(TypedDict):
    """Seconds to detect, acknowledge, mitigate and resolve (`model.Incident.durations`)."""

    detect: float | None
    acknowledge: float | None
    mitigate: float | None
    resolve: float | None


class IncidentRow(TypedDict):
    """A `model.Incident` with its durations: a route's check that turned FAIL."""

    run: str
    key: str
    seq: int
    route: str
    check: str
    team: str
    severity: str
    summary: str
    started: float
    opened: float
    alerted: float | None
    acked: float | None
    acked_by: str | None
    mitigated: float | None
    mitigated_by: str | None
    resolved: float | None
    resolved_why: str | None
    durations: Durations


class VerdictDocument(TypedDict):
    """The verdict document. `accounting` is empty in a live one (the books balance only once
    every proxy has stopped)."""

    verdict: str
    checks: list[CheckRow]
    routes: list[RouteRow]
    counts: Counts
    accounting: list[str]
    events: list[EventRow]
    incidents: list[IncidentRow]
    run: str
    config_sha256: str
    tool_version: str
    generated_at: str


class ExampleSide(TypedDict):
    """One side of an example exchange, redacted: the status, or the error kind of a failure
    (which has no headers and an empty body)."""

    status: int | str | None
    headers: list[list[str]]
    body: str


class Example(TypedDict):
    """One example exchange of a divergent (route, path), redacted, bodies cut for showing."""

    method: str
    path: str
    request_headers: list[list[str]]
    request_body: str
    primary: ExampleSide | None
    shadow: ExampleSide | None
    secondary: ExampleSide | None


class Extras(TypedDict):
    """What the HTML report needs besides the document; empty for a live document."""

    latencies: NotRequired[dict[str, dict[str, list[float]]]]  # route → side → seconds
    examples: NotRequired[dict[str, dict[str, list[Example]]]]  # route → path ([*]) → examples
