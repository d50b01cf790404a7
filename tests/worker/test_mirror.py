"""Where an exchange's copies go, in which order, and on whose clock its primary is timed."""

from __future__ import annotations

import pytest
from factories import snapshot

from shadowdiff.config import load_config
from shadowdiff.model import Outcome
from shadowdiff.worker.mirror import plan, timed_by_copy


def config(**overrides: str):
    return load_config(None, {"shadow": "http://127.0.0.1:1", **overrides})


def test_copies_go_out_in_a_random_order():
    """A/A runs read the second-sent side 6 % slower: neither side may always be second."""
    cfg = config(secondary="http://127.0.0.1:2")
    targets = {"shadow": cfg.shadow, "secondary": cfg.secondary}
    firsts = {plan(cfg, targets, snapshot(), live=True)[0][0][0] for _ in range(200)}
    assert firsts == {"shadow", "secondary"}


@pytest.mark.parametrize(
    "overrides, method, live, reference, copied",
    [
        ({"secondary": "http://127.0.0.1:2"}, "POST", True, "secondary", False),
        ({"primary": "http://127.0.0.1:3"}, "GET", True, "primary", True),
        ({"primary": "http://127.0.0.1:3"}, "HEAD", True, "primary", True),
        ({"primary": "http://127.0.0.1:3"}, "POST", True, None, False),
        (
            {"primary": "http://127.0.0.1:3", "latency.reference": "proxy"},
            "GET",
            True,
            "proxy",
            False,
        ),
        ({}, "GET", True, "proxy", False),  # the primary's URL unknown (`mitmdump -s`)
        ({"primary": "http://127.0.0.1:3"}, "POST", False, "primary", False),  # a replay
    ],
)
def test_plan_names_what_times_the_baseline(overrides, method, live, reference, copied):
    cfg = config(**overrides)
    targets = {"shadow": cfg.shadow} | ({"secondary": cfg.secondary} if cfg.secondary else {})
    copies, timed = plan(cfg, targets, snapshot(method=method), live)
    assert timed == reference
    assert ("primary", "http://127.0.0.1:3") in copies if copied else "primary" not in dict(copies)
    assert set(dict(copies)) - {"primary"} == set(targets)


def test_the_primary_on_its_copy_clock():
    live = Outcome(200, [], b"{}", latency=0.5)
    assert timed_by_copy(live, None) is live
    assert timed_by_copy(live, Outcome(200, [], b"{}", latency=0.02)).latency == 0.02
    failed = timed_by_copy(live, Outcome(error="timeout", latency=5.0))
    assert failed.latency is None and (failed.status, failed.body) == (200, b"{}")


@pytest.mark.parametrize("secondary", [True, False])
def test_what_the_candidate_served_is_paired_on_the_copies_clock(secondary):
    """Served by the candidate: the primary gets the copy that is the pair's other side, the
    candidate a timed copy, the secondary its own; the reference is as configured. A fallback
    (the candidate failed, the primary served it): no copy to the candidate, no pair."""
    more = {"secondary": "http://127.0.0.1:2"} if secondary else {}
    cfg = config(primary="http://127.0.0.1:3", **more)
    targets = {"shadow": cfg.shadow, **({"secondary": cfg.secondary} if secondary else {})}
    served, fallback = snapshot(), snapshot()
    served.candidate, served.served = Outcome(200), True
    fallback.candidate = Outcome(503)
    copies, timed = plan(cfg, targets, served, live=True)
    assert timed == ("secondary" if secondary else "primary")
    assert set(dict(copies)) == {"shadow", "primary"} | ({"secondary"} if secondary else set())
    copies, timed = plan(cfg, targets, fallback, live=True)
    assert timed is None and set(dict(copies)) == set(targets) - {"shadow"}
