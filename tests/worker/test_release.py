"""The release's gate and a person's actions on it, as pure decisions on a verdict."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from shadowdiff.channel import Serving
from shadowdiff.config import load_config
from shadowdiff.faces import Alerter
from shadowdiff.model import ReleaseState
from shadowdiff.worker.release import Refused, Rollout, act, decide, stage_pairs, waits_for

STAGES = [
    {"shadow": {"min_pairs": 100, "min_duration": "1m", "max_duration": "3m"}},
    {"percent": {"share": 5, "min_pairs": 50, "min_duration": "10s"}},
    {"percent": 100},
]


def plan(**more):
    doc = {"shadow": "http://c:1", "primary": "http://p:1", "release": {"stages": STAGES, **more}}
    return load_config(None, doc).release


def verdict(result: str) -> dict:
    checks = [{"id": "status", "route": "GET /a", "result": result, "detail": "5xx 3 %"}]
    return {"verdict": result, "checks": checks}


def counts(compared: int, served: int = 0) -> dict[str, int]:
    return {"compared": compared, "release.served_pairs": served}


START = ReleaseState(0, "running", 1000.0, 20, "proxy", "the run started", version=1)


def test_a_stage_waits_for_its_minimums_then_a_pass_promotes():
    p = plan()
    assert decide(p, START, verdict("PASS"), counts(119), 2000.0) is None  # 99 pairs of its own
    assert decide(p, START, verdict("PASS"), counts(120), 1059.0) is None  # 59 s in the stage
    moved = decide(p, START, verdict("PASS"), counts(120), 1060.0)
    assert moved is not None
    assert (moved.stage, moved.state, moved.since, moved.base) == (1, "running", 1060.0, 0)
    assert moved.version == 1 and moved.actor == "auto" and "100 pairs in 60 s" in moved.why
    assert decide(plan(promote="manual"), START, verdict("PASS"), counts(500), 5000.0) is None


def test_a_fail_rolls_back_from_any_stage_or_holds():
    for state in ("running", "held", "complete"):
        start = ReleaseState(1, state, 1000.0, 20, "x", "y", version=3)
        moved = decide(plan(), start, verdict("FAIL"), counts(21), 1001.0)
        assert moved is not None and moved.state == "rolled_back" and moved.stage == 1
        assert moved.since == 1000.0 and "GET /a status: 5xx 3 %" in moved.why
    held = decide(plan(on_fail="hold"), START, verdict("FAIL"), counts(21), 1001.0)
    assert held is not None and held.state == "held"
    gone = ReleaseState(1, "rolled_back", 1000.0, 20, "x", "y")
    assert decide(plan(), gone, verdict("FAIL"), counts(21), 1001.0) is None


def test_inconclusive_extends_up_to_max_duration_then_holds():
    assert decide(plan(), START, verdict("INCONCLUSIVE"), counts(500), 1179.0) is None
    held = decide(plan(), START, verdict("INCONCLUSIVE"), counts(500), 1180.0)
    assert held is not None and held.state == "held" and "INCONCLUSIVE" in held.why
    at_once = decide(
        plan(on_inconclusive="hold"), START, verdict("INCONCLUSIVE"), counts(500), 1060.0
    )
    assert at_once is not None and at_once.state == "held"


def test_the_last_stage_completes():
    last = ReleaseState(2, "running", 1000.0, 20, "x", "y")
    assert decide(plan(), last, verdict("PASS"), counts(500, 119), 1100.0) is None
    done = decide(plan(), last, verdict("PASS"), counts(500, 120), 1100.0)
    assert done is not None and done.state == "complete" and done.stage == 2


def test_a_person_promotes_holds_and_rolls_back():
    p = plan()
    promoted = act(p, START, "promote", "ada", 1500.0, counts(90, 7))
    assert (promoted.stage, promoted.state, promoted.base) == (1, "running", 7)  # served ones
    assert promoted.actor == "ada"
    assert act(p, START, "hold", "ada", 1500.0, counts(90)).state == "held"
    assert act(p, START, "rollback", "ada", 1500.0, counts(90)).state == "rolled_back"
    last = ReleaseState(2, "running", 1000.0, 20, "x", "y")
    with pytest.raises(Refused, match="last stage"):
        act(p, last, "promote", "ada", 1500.0, counts(90))
    with pytest.raises(Refused, match="rolled back"):
        act(p, ReleaseState(1, "rolled_back", 1.0, 0, "x", "y"), "promote", "ada", 2.0, {})


def test_what_the_gate_waits_for():
    p = plan()
    assert waits_for(p, START, "INCONCLUSIVE", counts(70), 1030.0) == (
        "50 more pairs, 30 s more, then a PASS verdict (now INCONCLUSIVE)"
    )
    assert waits_for(p, START, "PASS", counts(500), 2000.0) == "a PASS verdict"
    assert "promote" in waits_for(plan(promote="manual"), START, "PASS", counts(500), 2000.0)
    at_5 = ReleaseState(1, "running", 1000.0, 3, "x", "y")
    assert waits_for(p, at_5, "PASS", counts(500, 13), 1003.0).startswith(
        "40 more pairs served by the candidate, 7 s more"
    )


def test_a_serving_stage_counts_only_what_the_candidate_served():
    """Mirrored traffic alone never passes a cohort's gate: a cohort that matches no one
    stays where it is."""
    p = plan()
    at_5 = ReleaseState(1, "running", 1000.0, 3, "x", "y")
    assert stage_pairs(p, 0, counts(100, 5)) == 100 and stage_pairs(p, 1, counts(100, 5)) == 5
    assert decide(p, at_5, verdict("PASS"), counts(10_000, 52), 2000.0) is None
    moved = decide(p, at_5, verdict("PASS"), counts(10_000, 53), 2000.0)
    assert moved is not None and (moved.stage, moved.base) == (2, 53)


def test_no_promotion_while_mirroring_is_stopped_but_a_fail_still_rolls_back():
    p = plan()
    assert decide(p, START, verdict("PASS"), counts(500), 2000.0, stopped=True) is None
    moved = decide(p, START, verdict("FAIL"), counts(500), 2000.0, stopped=True)
    assert moved is not None and moved.state == "rolled_back"


def test_a_held_stage_resumes_its_gate_counting_afresh():
    held = ReleaseState(1, "held", 1000.0, 3, "x", "y")
    resumed = act(plan(), held, "resume", "ada", 1500.0, counts(0, 9))
    assert (resumed.stage, resumed.state, resumed.since, resumed.base) == (1, "running", 1500.0, 9)
    # its extension ran out before the hold: it counts afresh, not held again at once
    assert decide(plan(), resumed, verdict("INCONCLUSIVE"), counts(0, 100), 1520.0) is None
    with pytest.raises(Refused, match="not held"):
        act(plan(), START, "resume", "ada", 1500.0, counts(0))


async def test_a_controller_that_cannot_read_the_store_says_stale(tmp_path):
    """No read of the release's state for 2 s: the tap is told `stale` (the primary serves),
    whatever the controller knew before."""
    doc = {
        "shadow": "http://c:1",
        "primary": "http://p:1",
        "store": str(tmp_path / "missing.db"),
        "release": {"stages": STAGES, "poll": "100ms"},
    }
    cfg = load_config(None, doc)
    told: list[Serving] = []
    rollout = Rollout(cfg, told.append, Alerter(cfg.alerts, "r", Counter()), print, None, dict)
    stop = asyncio.Event()
    running = asyncio.create_task(rollout.run(stop))
    await asyncio.sleep(1.5)
    assert told == []  # never read: the tap routes nobody to the candidate anyway
    await asyncio.sleep(1.0)
    assert told == [Serving(0, "stale")]
    stop.set()
    await running
    await rollout.close()
