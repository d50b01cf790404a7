"""Prometheus exposition of one worker's books, for `GET /metrics`.

The counters are read at scrape time from the very numbers the worker writes to the store
(the tap's, the worker's and the recorder's), so a scrape and `shadowdiff summary` agree.
Per-route results and latency histograms are observed from each committed batch. Route labels
are the recorder's routes, already capped (`routes.max`, then `other`); a route regrouped
later by a collapse keeps its old series, so sum over routes when one moves.
Metrics are per process: Prometheus aggregates a fleet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shadowdiff.counts import by_reason
from shadowdiff.model import Exchange, result_of

PREFIX = "shadowdiff"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_TOTALS = {
    "seen": "Requests the tap saw.",
    "sampled": "Requests chosen for mirroring.",
    "recorded": "Exchanges written to the store.",
    "compared": "Exchanges compared.",
    "matched": "Compared exchanges where the shadow answered like the primary.",
    "ignored": "Compared exchanges whose only differences were ignored by a rule.",
    "divergent": "Compared exchanges where the shadow diverged.",
}
_BY = {
    "not_eligible": ("reason", "Requests never eligible for mirroring, by reason."),
    "not_sampled": ("reason", "Eligible requests not sampled, by reason (rate, paused, …)."),
    "dropped": ("reason", "Sampled requests dropped before recording, by reason."),
    "shadow_error": ("kind", "Shadow copies that failed, by error kind."),
    "secondary_error": ("kind", "Secondary copies that failed, by error kind."),
    "alerts": ("outcome", "Alerts sent, failed, debounced or dropped."),
}


@dataclass
class Gauges:
    """The live state shown as gauges, filled in by the worker at scrape time."""

    sample_rate: float
    paused: bool
    in_flight: int
    breakers: dict[str, str] = field(default_factory=dict)


class _Books(Collector):
    def __init__(
        self, counts: Callable[[], dict[str, int]], gauges: Callable[[], Gauges], run: str
    ) -> None:
        self.counts = counts
        self.gauges = gauges
        self.run = run

    def collect(self) -> Iterator[Metric]:
        counts = self.counts()
        info = GaugeMetricFamily(f"{PREFIX}_run", "The run this proxy records.", labels=["run"])
        info.add_metric([self.run], 1)
        yield info
        for name, help_text in _TOTALS.items():
            yield CounterMetricFamily(f"{PREFIX}_{name}", help_text, value=counts.get(name, 0))
        for prefix, (label, help_text) in _BY.items():
            family = CounterMetricFamily(f"{PREFIX}_{prefix}", help_text, labels=[label])
            for reason, value in sorted(by_reason(counts, prefix).items()):
                family.add_metric([reason], value)
            yield family
        g = self.gauges()
        yield GaugeMetricFamily(
            f"{PREFIX}_sample_rate",
            "The share being mirrored now (0 when paused).",
            value=0.0 if g.paused else g.sample_rate,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_paused", "1 while mirroring is paused (the kill switch).", value=g.paused
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_in_flight", "Copies sent or waiting for a slot.", value=g.in_flight
        )
        breaker = GaugeMetricFamily(
            f"{PREFIX}_breaker_open",
            "1 while a target's circuit breaker is open or half-open.",
            labels=["target", "state"],
        )
        for target, state in sorted(g.breakers.items()):
            breaker.add_metric([target, state], state != "closed")
        yield breaker


class Metrics:
    """One worker's registry: books read at scrape time, routes observed per batch."""

    def __init__(
        self, run: str, counts: Callable[[], dict[str, int]], gauges: Callable[[], Gauges]
    ) -> None:
        # `_created` series double the output and help no one here (untyped upstream)
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Books(counts, gauges, run))
        self.results = Counter(
            f"{PREFIX}_route_exchanges",
            "Compared exchanges per route and result (matched, ignored, divergent).",
            ["route", "result"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_latency_seconds",
            "Response time per route and side (primary, shadow, secondary); failures excluded.",
            ["route", "side"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe(self, batch: list[Exchange]) -> None:
        """Called from the store thread with each committed batch."""
        for x in batch:
            self.results.labels(x.route, result_of(x.shadow_diffs)).inc()
            sides = (("primary", x.primary), ("shadow", x.shadow), ("secondary", x.secondary))
            for side, outcome in sides:
                if outcome and outcome.error is None and outcome.latency is not None:
                    self.latency.labels(x.route, side).observe(outcome.latency)

    def render(self) -> bytes:
        return generate_latest(self.registry)
