"""The accounting that always adds up: every request seen ends in exactly one bucket.

    seen    = not_eligible.* + not_sampled.* + sampled
    sampled = recorded + dropped.*

The tap owns seen, not_eligible, not_sampled, sampled and the drops at hand-off; the worker
owns recorded and the drops after it received a snapshot. Names are disjoint, so the store
can simply add them up.
"""

from __future__ import annotations

RECORDED_PRIMARY = "replay.recorded_primary"
"""Counter of exchanges whose primary side is a recorded response (`replay
--from-recorded-primary`): their timings come from another time and place."""


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
    return problems


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
