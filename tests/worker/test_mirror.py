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


@pytest.mark.parametrize("served", [True, False])
def test_what_the_tap_asked_the_candidate_gets_no_shadow_copy_and_no_pair(served):
    """Served by the candidate: the primary gets the copy that pairs it; a fallback (the
    primary served it): only the secondary. Neither has a latency pair."""
    cfg = config(secondary="http://127.0.0.1:2", primary="http://127.0.0.1:3")
    targets = {"shadow": cfg.shadow, "secondary": cfg.secondary}
    asked = snapshot()
    asked.candidate, asked.served = Outcome(200 if served else 503), served
    copies, timed = plan(cfg, targets, asked, live=True)
    assert timed is None
    want = {"secondary", "primary"} if served else {"secondary"}
    assert set(dict(copies)) == want
