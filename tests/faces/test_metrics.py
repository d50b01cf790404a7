"""Prometheus exposition: the books as counters, the live state as gauges, routes per batch,
all read back with prometheus_client's own parser."""

from __future__ import annotations

import factories
from prometheus_client.parser import text_string_to_metric_families

from shadowdiff.faces.metrics import Gauges, Metrics
from shadowdiff.model import Divergence, Exchange, Outcome


def parsed(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }


def exchange(route: str, diverged: bool, shadow_error: str | None = None) -> Exchange:
    shadow = Outcome(error=shadow_error) if shadow_error else Outcome(200, latency=0.02)
    diffs = [Divergence("body:$.a", "changed", "1", "2")] if diverged else []
    return factories.exchange(
        primary=Outcome(200, latency=0.01), shadow=shadow, route=route, diffs=diffs
    )


def test_books_gauges_and_routes():
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
    metrics = Metrics("rc1", lambda: counts, lambda: gauges)
    metrics.observe(
        [exchange("GET /a", True), exchange("GET /a", False), exchange("GET /b", False, "timeout")]
    )
    got = parsed(metrics)
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
    assert parsed(metrics)[("shadowdiff_sample_rate", ())] == 0.0
