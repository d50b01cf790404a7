"""The serving decision: cohorts match exactly, shares are sticky per key and only grow, a
key-less request is bucketed at random, writes go only where the release allows them."""

from __future__ import annotations

import random

import pytest

from shadowdiff.channel import Serving
from shadowdiff.config import load_config
from shadowdiff.errors import ConfigError
from shadowdiff.live.rollout import Router, bucket


def release(stages, **more):
    doc = {"shadow": "http://c:1", "primary": "http://p:1", "release": {"stages": stages, **more}}
    return load_config(None, doc).release


def headers(**values: str):
    lowered = {k.lower().replace("_", "-"): v for k, v in values.items()}
    return lambda name: lowered.get(name.lower())


def test_a_cohort_is_exactly_its_matching_requests():
    plan = release(
        [{"cohort": {"match": ["header:X-Internal=1", "cookie:staff=1", "client:10.0.0.0/8"]}}]
    )
    router = Router(plan, Serving(0, "running"))
    assert router.serves("/a", headers(x_internal="1"), "192.0.2.1")
    assert not router.serves("/a", headers(x_internal="0"), "192.0.2.1")
    assert router.serves("/a", headers(cookie="a=b; staff=1"), "192.0.2.1")
    assert not router.serves("/a", headers(cookie="staff=10"), "192.0.2.1")
    assert not router.serves("/a", headers(cookie="\x00bad;;=="), "192.0.2.1")
    assert router.serves("/a", headers(), "10.1.2.3")
    assert router.serves("/a", headers(), "::ffff:10.1.2.3")
    assert not router.serves("/a", headers(), "not an address")


def test_shares_are_sticky_and_only_grow():
    plan = release([{"percent": 5}, {"percent": 25}], sticky_key="header:X-User")
    five, quarter = (Router(plan, Serving(i, "running")) for i in (0, 1))
    users = [f"user-{i}" for i in range(20_000)]
    at_5 = {u for u in users if five.serves("/a", headers(x_user=u), "")}
    at_25 = {u for u in users if quarter.serves("/a", headers(x_user=u), "")}
    assert at_5 <= at_25
    assert abs(len(at_5) - 1_000) < 4 * (20_000 * 0.05 * 0.95) ** 0.5
    assert abs(len(at_25) - 5_000) < 4 * (20_000 * 0.25 * 0.75) ** 0.5
    assert all(five.serves("/b", headers(x_user=u), "") for u in sorted(at_5)[:50])
    assert bucket("user-1") == bucket("user-1") != bucket("user-2")


def test_no_key_is_random_per_request_and_rolled_back_serves_nobody():
    plan = release([{"percent": 50}], sticky_key="query:u")
    router = Router(plan, Serving(0, "running"), random.Random(1))
    draws = [router.serves("/a", headers(), "") for _ in range(2_000)]
    assert 900 < sum(draws) < 1_100
    assert len({router.serves("/a?u=7", headers(), "") for _ in range(50)}) == 1
    for gone in (Router(plan, Serving(0, "rolled_back")), Router(plan, None)):
        assert not gone.serving and not gone.serves("/a?u=7", headers(), "")


def test_writes_go_to_the_candidate_only_where_allowed():
    router = Router(release([{"percent": 100}], writes=["POST /orders*"]), Serving(0, "running"))
    assert router.writable("POST", "/orders/1?x=1")
    assert not router.writable("DELETE", "/orders/1")
    assert not Router(release([{"percent": 100}]), Serving(0, "running")).writable("POST", "/a")


@pytest.mark.parametrize(
    "stages, more, message",
    [
        ([], {}, "release.stages: List should have at least 1 item"),
        ([{"percent": 25}, {"percent": 5}], {}, "percent stages must not shrink"),
        ([{"percent": 0}], {}, "greater than 0"),
        ([{"cohort": {"match": ["header:X"]}}], {}, "is not header:NAME=VALUE"),
        ([{"shadow": {}, "percent": 5}], {}, "exactly one of shadow, cohort or percent"),
        (
            [{"percent": 5}],
            {"sticky_key": "body:x"},
            "is not header:NAME, cookie:NAME or query:NAME",
        ),
    ],
)
def test_a_bad_plan_is_one_line(stages, more, message):
    with pytest.raises(ConfigError, match=message) as caught:
        release(stages, **more)
    assert "\n" not in str(caught.value)
