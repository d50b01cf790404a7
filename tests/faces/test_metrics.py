"""Prometheus exposition: the books as counters, the live state as gauges, routes per batch,
all read back with prometheus_client's own parser; route labels capped, escaped and dropped
when merged; the rendering off the loop."""

from __future__ import annotations

import asyncio
import time

import factories
from factories import snapshot
from prometheus_client.parser import text_string_to_metric_families

from shadowdiff.compare import OTHER, RouteTable
from shadowdiff.config import Routes
from shadowdiff.faces.metrics import LABELS_PER_ROUTE, Gauges, Metrics
from shadowdiff.model import Divergence, Exchange, Outcome

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def parsed(metrics: Metrics) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families((await metrics.scrape()).decode())
        for s in family.samples
    }


def idle() -> Metrics:
    gauges = Gauges(sample_rate=1.0, paused=False, in_flight=0)
    return Metrics("rc1", dict, lambda: gauges, max_routes=500)


def route_labels(got: Samples) -> set[str]:
    return {dict(labels)["route"] for name, labels in got if name.startswith("shadowdiff_route")}


def matched(got: Samples, route: str) -> float:
    return got[("shadowdiff_route_exchanges_total", (("result", "matched"), ("route", route)))]


def exchange(route: str, diverged: bool, shadow_error: str | None = None) -> Exchange:
    shadow = Outcome(error=shadow_error) if shadow_error else Outcome(200, latency=0.02)
    diffs = [Divergence("body:$.a", "changed", "1", "2")] if diverged else []
    return factories.exchange(
        primary=Outcome(200, latency=0.01), shadow=shadow, route=route, diffs=diffs
    )


async def test_books_gauges_and_routes():
    counts = {
        "seen": 10,
        "sampled": 6,
        "not_sampled.rate": 4,
        "recorded": 5,
        "dropped.backlog": 1,
        "compared": 5,
        "matched": 3,
        "divergent": 2,
        "shadow_error.timeout": 1,
        "alerts.sent": 2,
    }
    gauges = Gauges(sample_rate=0.25, paused=False, in_flight=3, breakers={"shadow": "open"})
    metrics = Metrics("rc1", lambda: counts, lambda: gauges, max_routes=500)
    metrics.observe(
        [exchange("GET /a", True), exchange("GET /a", False), exchange("GET /b", False, "timeout")]
    )
    got = await parsed(metrics)
    assert got[("shadowdiff_run", (("run", "rc1"),))] == 1
    assert got[("shadowdiff_seen_total", ())] == 10
    assert got[("shadowdiff_ignored_total", ())] == 0  # present before it ever happens
    assert got[("shadowdiff_dropped_total", (("reason", "backlog"),))] == 1
    assert got[("shadowdiff_not_sampled_total", (("reason", "rate"),))] == 4
    assert got[("shadowdiff_shadow_error_total", (("kind", "timeout"),))] == 1
    assert got[("shadowdiff_alerts_total", (("outcome", "sent"),))] == 2
    assert got[("shadowdiff_sample_rate", ())] == 0.25
    assert got[("shadowdiff_in_flight", ())] == 3
    assert got[("shadowdiff_breaker_open", (("state", "open"), ("target", "shadow")))] == 1
    route_a = (("result", "divergent"), ("route", "GET /a"))
    assert got[("shadowdiff_route_exchanges_total", route_a)] == 1
    primary_a = (("route", "GET /a"), ("side", "primary"))
    assert got[("shadowdiff_latency_seconds_count", primary_a)] == 2
    assert got[("shadowdiff_latency_seconds_bucket", (("le", "0.01"), *primary_a))] == 2
    # a failed side's time-to-failure is no latency
    failed = (("route", "GET /b"), ("side", "shadow"))
    assert ("shadowdiff_latency_seconds_count", failed) not in got
    assert not any(name.endswith("_created") for name, _ in got)

    gauges.paused = True
    assert (await parsed(metrics))[("shadowdiff_sample_rate", ())] == 0.0


async def test_a_workers_restarts_are_exported_from_zero():
    """`increase()` sees no first restart in a series that is born at 1 (the shipped alert)."""
    got = await parsed(idle())
    assert got[("shadowdiff_worker_total", (("event", "restarts"),))] == 0


async def test_route_labels_are_capped_for_the_workers_lifetime():
    metrics = Metrics("rc1", dict, lambda: Gauges(1.0, False, 0), max_routes=10)
    cap = 10 * LABELS_PER_ROUTE
    metrics.observe([exchange(f"GET /r{i}", False) for i in range(cap + 30)])
    for i in range(cap):  # a merge drops series, but never gives their labels back
        metrics.forget(f"GET /r{i}", "GET /{id}")
    metrics.observe([exchange("GET /late", False)])
    got = await parsed(metrics)
    assert route_labels(got) == {OTHER} and matched(got, OTHER) == 31


async def test_a_merged_routes_series_are_dropped():
    metrics = idle()
    table = RouteTable(Routes(collapse_after=3))
    table.on_merge = metrics.forget
    for name in ("alice", "bob", "carol", "dave", "erin"):
        x = exchange("", False)
        x.route = table.route("GET", f"/users/{name}/posts")
        metrics.observe([x])
    got = await parsed(metrics)
    assert route_labels(got) == {"GET /users/{id}/posts"}
    assert matched(got, "GET /users/{id}/posts") == 2  # counted afresh from the collapse
    assert not any(dict(labels).get("route") == "GET /users/bob/posts" for _, labels in got)


async def test_an_undecodable_path_byte_keeps_the_exposition_valid():
    metrics = idle()
    table = RouteTable(Routes())
    x = factories.exchange(snapshot(path="/caf\udcff"), Outcome(200, latency=0.01))
    x.route = table.route("GET", x.request.path)  # mitmproxy's surrogateescape decoding
    metrics.observe([x, exchange("GET /ok", False)])
    got = await parsed(metrics)
    assert route_labels(got) == {"GET /caf\\udcff", "GET /ok"}  # escaped as the store does


async def test_a_big_exposition_is_rendered_off_the_loop():
    metrics = Metrics("rc1", dict, lambda: Gauges(1.0, False, 0), max_routes=1000)
    metrics.observe([exchange(f"GET /r{i}", i % 2 == 0) for i in range(2000)])
    scrape = asyncio.create_task(metrics.scrape())
    again = asyncio.create_task(metrics.scrape())  # a second scraper shares the rendering
    ticks, started = [], time.monotonic()
    while not scrape.done():
        ticks.append(time.monotonic())
        await asyncio.sleep(0.002)
    took = time.monotonic() - started
    body = await scrape
    assert await again is body and len(body) > 1_000_000
    gaps = [b - a for a, b in zip([started, *ticks], ticks, strict=False)]
    assert len(ticks) >= 5 and max(gaps) < took / 2, (len(ticks), max(gaps), took)
