"""The serving decision: cohorts match exactly, shares are sticky per key and only grow, a
key-less request is bucketed at random, writes go only where the release allows them; and
the candidate asked by the tap's own client: its answer framed afresh, byte for byte, or a
failure that lets the primary serve."""

from __future__ import annotations

import random

import pytest
from mitmproxy.test import tflow

from shadowdiff.channel import Serving
from shadowdiff.config import load_config
from shadowdiff.errors import ConfigError
from shadowdiff.live.rollout import Candidate, Router, bucket, response
from shadowdiff.model import Outcome


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


def test_the_candidates_answer_is_framed_afresh_byte_for_byte():
    headers = [
        (b"Content-Type", b"application/json"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Connection", b"keep-alive, X-Hop"),
        (b"X-Hop", b"1"),
        (b"Content-Encoding", b"gzip"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
    ]
    got = response("GET", Outcome(200, headers, b"\x1f\x8b raw"))
    assert (got.status_code, got.raw_content) == (200, b"\x1f\x8b raw")
    assert got.headers.fields == (
        (b"Content-Type", b"application/json"),
        (b"Content-Encoding", b"gzip"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"content-length", b"6"),
    )
    head = response("HEAD", Outcome(200, [(b"Content-Length", b"1234")], b""))
    assert head.headers.get_all("content-length") == ["1234"]
    assert "content-length" not in response("GET", Outcome(204, [], b"")).headers
    not_modified = response("GET", Outcome(304, [(b"Content-Length", b"77")], b""))
    assert not_modified.headers.get_all("content-length") == ["77"]


def served_flow(method: str = "GET", path: str = "/users/1"):
    flow = tflow.tflow()
    flow.request.method, flow.request.path = method, path
    flow.request.headers["X-User"] = "ada"
    return flow


async def test_asking_the_candidate_serves_its_answer_or_falls_back(shadow):
    cfg = load_config(
        None,
        {
            "shadow": shadow.url,
            "primary": "http://127.0.0.1:1",
            "release": {"stages": [{"percent": 100}], "timeout": "200ms", "max_body": "1MiB"},
        },
    )
    candidate = Candidate(cfg)
    try:
        flow = served_flow()
        answer, failed = await candidate.ask(flow)
        assert failed is None and flow.response is not None
        assert flow.response.status_code == 200 and flow.response.raw_content == answer.body
        assert flow.response.headers["X-Backend"] == "demo"
        assert shadow.seen[-1][2].get("X-Shadowdiff") is None  # the request itself, unmarked
        for mode, kind in (("error", "5xx"), ("hang", "timeout"), ("big", "too_large")):
            shadow.mode = mode
            flow = served_flow()
            _, failed = await candidate.ask(flow)
            assert (failed, flow.response) == (kind, None), mode
    finally:
        await candidate.close()
