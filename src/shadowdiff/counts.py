"""The accounting that always adds up: every request seen ends in exactly one bucket.

    seen    = not_eligible.* + not_sampled.* + sampled
    sampled = recorded + dropped.*

With a release, who served each request is counted too (a fallback is a safe request the
candidate failed, served by the primary):

    seen    = served.primary + served.candidate,   fallback.* ⊆ served.primary

A write the candidate serves is `not_sampled.served_write` (never copied to the primary);
`writes.candidate|primary.ok|failed`, the writes on the routes the candidate may serve them,
stand outside the books: the evidence of the `served_writes` check.

The tap owns seen, not_eligible, not_sampled, sampled, served, fallback and the drops at
hand-off; the worker owns recorded and the drops after it received a snapshot. Names are
disjoint, so the store can simply add them up.

Reasons that say whose fault a missing exchange is, apart from the shadow's errors:
`not_eligible.bad_header` (a control byte in a header name or value: no HTTP client sends
it, so it is never sampled), `dropped.unsendable` (a copy the client still refused to build;
outside the breaker and the shadow's error rate), `dropped.client_gone` (the client hung up
before the primary answered: the primary failed nothing), `dropped.worker_down` (sampled
while no worker ran) and `dropped.worker_died` (what a worker that died held, counted by the
next).
"""

from __future__ import annotations

RECORDED_PRIMARY = "replay.recorded_primary"
"""Counter of exchanges whose primary side is a recorded response (`replay
--from-recorded-primary`): their timings come from another time and place."""


LATENCY_REFERENCE = "latency_reference"
"""Worker counters (`latency_reference.secondary|primary|proxy`) of the exchanges whose
shadow latency had that baseline: outside the books, read by the judge to say which clock."""

SERVED_PAIRS = "release.served_pairs"
"""Recorder counter of the compared exchanges the candidate served (outside the books): the
pairs a cohort or percent stage's gate counts, so a stage that serves no one never passes."""

WORKER_RESTARTS = "worker.restarts"
"""Tap counter of workers started again after one died: outside the books (no bucket), shown
by `/healthz` and `/metrics`."""


def total(counts: dict[str, int], prefix: str) -> int:
    """The sum of every counter named `prefix.*`."""
    return sum(v for k, v in counts.items() if k.startswith(prefix + "."))


def by_reason(counts: dict[str, int], prefix: str) -> dict[str, int]:
    return {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith(prefix + ".") and v}


def imbalance(counts: dict[str, int]) -> list[str]:
    """What does not add up; empty when the books balance."""
    seen, sampled = counts.get("seen", 0), counts.get("sampled", 0)
    problems = []
    split = total(counts, "not_eligible") + total(counts, "not_sampled") + sampled
    if seen != split:
        problems.append(f"seen {seen} != not_eligible + not_sampled + sampled {split}")
    fate = counts.get("recorded", 0) + total(counts, "dropped")
    if sampled != fate:
        problems.append(f"sampled {sampled} != recorded + dropped {fate}")
    served = total(counts, "served")
    if served and seen != served:  # a release counts who served every request
        problems.append(f"seen {seen} != served.primary + served.candidate {served}")
    if total(counts, "fallback") > counts.get("served.primary", 0):
        problems.append("more fallbacks than requests the primary served")
    return problems


def replaced(
    run_counts: dict[str, int], stored: dict[str, int], fresh: dict[str, int]
) -> dict[str, int]:
    """A run's books with one instance's `stored` counters swapped for `fresh` ones: what the
    store would hold had that instance's last write gone through."""
    names = run_counts.keys() | fresh.keys()
    return {n: run_counts.get(n, 0) - stored.get(n, 0) + fresh.get(n, 0) for n in names}


def summary_line(run: str, counts: dict[str, int]) -> str:
    """The one-line summary printed at shutdown and by `shadowdiff summary`."""
    dropped = by_reason(counts, "dropped")
    detail = ", ".join(f"{k} {v}" for k, v in sorted(dropped.items()))
    errors = by_reason(counts, "shadow_error")
    error_text = ", ".join(f"{k} {v}" for k, v in sorted(errors.items()))
    compared = (
        f", compared {counts['compared']} (matched {counts.get('matched', 0)}, ignored "
        f"{counts.get('ignored', 0)}, differing {counts.get('divergent', 0)})"
        if counts.get("compared")
        else ""
    )
    return (
        f"run {run!r}: seen {counts.get('seen', 0)}, sampled {counts.get('sampled', 0)}, "
        f"recorded {counts.get('recorded', 0)}, dropped {total(counts, 'dropped')}"
        + (f" ({detail})" if detail else "")
        + (f", shadow errors {total(counts, 'shadow_error')} ({error_text})" if errors else "")
        + compared
    )
