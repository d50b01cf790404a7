"""The sampling decision: rates within bounds, stickiness, the cap, method and path rules."""

from __future__ import annotations

import random

from shadowdiff.config import Sampling
from shadowdiff.live.sampling import RateCap, Sampler, sticky_fraction


def no_headers(name: str) -> str | None:
    return None


def sampler(**kw) -> Sampler:
    return Sampler(Sampling(**kw), rng=random.Random(1))


def test_rate_within_bounds():
    s = sampler(rate=0.2)
    hits = sum(s.decide("GET", f"/x/{i}", no_headers) is None for i in range(10_000))
    # binomial(10000, 0.2): sd = 40; 5 sd either way
    assert 1800 <= hits <= 2200


def test_rate_zero_and_one():
    assert all(sampler(rate=0).decide("GET", "/", no_headers) == "rate" for _ in range(1000))
    assert all(sampler(rate=1).decide("GET", "/", no_headers) is None for _ in range(1000))


def test_methods_default_to_reads():
    s = sampler(rate=1)
    assert [s.decide(m, "/", no_headers) for m in ("GET", "HEAD", "OPTIONS", "POST", "DELETE")] == [
        None,
        None,
        None,
        "method",
        "method",
    ]


def test_include_exclude_globs_ignore_query():
    s = sampler(rate=1, include=["/api/*"], exclude=["/api/admin*"])
    assert s.decide("GET", "/api/users?x=/admin", no_headers) is None
    assert s.decide("GET", "/api/admin/x", no_headers) == "path"
    assert s.decide("GET", "/static/a.css", no_headers) == "path"


def test_route_override_allows_post_and_sets_rate():
    s = sampler(
        rate=1,
        routes=[
            {"path": "/search", "methods": ["post", "GET"], "rate": 1.0},
            {"path": "/slow/*", "rate": 0.0},
        ],
    )
    assert s.decide("POST", "/search?q=1", no_headers) is None
    assert s.decide("POST", "/orders", no_headers) == "method"
    assert s.decide("GET", "/slow/1", no_headers) == "rate"


def test_sticky_header_same_key_same_decision():
    s = sampler(rate=0.3, sticky_key="header:X-User-Id")
    decisions = {}
    for round_ in range(3):
        for user in range(2000):
            lookup = {"x-user-id": f"u{user}"}.get
            d = s.decide("GET", f"/p/{round_}", lambda n, lookup=lookup: lookup(n.lower()))
            assert decisions.setdefault(user, d) == d
    hits = sum(d is None for d in decisions.values())
    assert 480 <= hits <= 720  # 30 % of 2000, sd ≈ 20.5


def test_sticky_cookie_and_query():
    cookie = sampler(rate=0.5, sticky_key="cookie:session")
    query = sampler(rate=0.5, sticky_key="query:uid")
    for key in ("a", "b", "c", "d", "e"):
        expected = None if sticky_fraction(key) < 0.5 else "rate"
        headers = {"cookie": f"theme=dark; session={key}"}.get
        assert cookie.decide("GET", "/", headers) == expected
        assert query.decide("GET", f"/?x=1&uid={key}", no_headers) == expected


def test_sticky_without_key_falls_back_to_random():
    s = sampler(rate=0.5, sticky_key="header:X-User-Id")
    hits = sum(s.decide("GET", "/", no_headers) is None for _ in range(4000))
    assert 1800 <= hits <= 2200
    bad_cookie = sampler(rate=1.0, sticky_key="cookie:s")
    assert bad_cookie.decide("GET", "/", {"cookie": '"""'}.get) is None


def test_rate_cap_token_bucket():
    now = [0.0]
    cap = RateCap(10, clock=lambda: now[0])
    assert sum(cap.take() for _ in range(100)) == 10  # a burst of one second's worth
    now[0] += 0.5
    assert sum(cap.take() for _ in range(100)) == 5
    now[0] += 100
    assert sum(cap.take() for _ in range(100)) == 10  # never more than the bucket


def test_rate_cap_in_sampler():
    s = sampler(rate=1, max_per_second=5)
    results = [s.decide("GET", "/", no_headers) for _ in range(50)]
    assert results.count(None) in (5, 6) and results.count("rate_cap") >= 44


def test_pause_stops_everything_and_the_dial_overrides_every_rate():
    s = sampler(rate=1, routes=[{"path": "/hot/*", "rate": 1.0}])
    s.paused = True
    assert {s.decide("GET", p, no_headers) for p in ("/", "/hot/1")} == {"paused"}
    s.paused = False
    s.dial = 0.0
    assert {s.decide("GET", p, no_headers) for p in ("/", "/hot/1")} == {"rate"}
    s.dial = 0.3
    hits = sum(s.decide("GET", f"/hot/{i}", no_headers) is None for i in range(10_000))
    assert 2800 <= hits <= 3200  # binomial sd 46
    assert s.decide("POST", "/", no_headers) == "method"  # the dial never widens the rules


def test_a_kept_request_skips_only_the_rate_and_the_cap():
    """A release's fallback is kept whatever the rate; not when paused, dialled to 0, or
    ruled out by method or path."""
    s = sampler(rate=0.0001, max_per_second=0.001, exclude=["/private*"])
    assert [s.decide("GET", "/a", no_headers, kept=True) for _ in range(5)] == [None] * 5
    assert s.decide("GET", "/private/1", no_headers, kept=True) == "path"
    assert s.decide("POST", "/a", no_headers, kept=True) == "method"
    s.dial = 0.0
    assert s.decide("GET", "/a", no_headers, kept=True) == "rate"
    s.paused = True
    assert s.decide("GET", "/a", no_headers, kept=True) == "paused"
