"""Prometheus exposition of one worker's books, for `GET /metrics`.

The counters are read at scrape time from the very numbers the worker writes to the store
(the tap's, the worker's and the recorder's), so a scrape and `shadowdiff summary` agree.
Per-route results and latency histograms are observed from each committed batch. Route labels
are the recorder's routes, escaped as the store escapes them, and at most
`LABELS_PER_ROUTE` × `routes.max` of them over the worker's lifetime (the rest under `other`):
traffic cannot grow the exposition, nor Prometheus's series. A collapse drops the series of
the routes it merges; their exchanges are counted under the merged route from then on.
The exposition is rendered in a thread, never on the loop that times the copies.
Metrics are per process: Prometheus aggregates a fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from shadowdiff.compare import OTHER
from shadowdiff.counts import WORKER_RESTARTS, by_reason
from shadowdiff.model import DIVERGENT, IGNORED, MATCHED, Exchange, apply_merge, result_of
from shadowdiff.store import clean

PREFIX = "shadowdiff"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LABELS_PER_ROUTE = 2
"""Route labels a worker gives over its lifetime, per route of `routes.max`: room for the
routes that collapses merge away, whose labels stay spent."""
_SIDES = ("primary", "shadow", "secondary")

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
    "worker": ("event", "Worker processes started again by the proxy after one died."),
    "untimed": ("side", "Copies left untimed: the worker's loop stalled while they were out."),
    "latency_reference": ("reference", "Exchanges by what timed the shadow's baseline."),
    "served": ("side", "Requests by who served them, primary or candidate (a release)."),
    "fallback": ("kind", "Safe requests the candidate failed, served by the primary instead."),
    "writes": ("outcome", "Writes by who served them and whether they failed (a release)."),
}
_FROM_ZERO = {WORKER_RESTARTS}
"""Children exported before they first count, so that `increase()` sees the first one (a
series that appears at 1 has increased by nothing): what an alert rule counts from zero."""


@dataclass
class Gauges:
    """The live state shown as gauges, filled in by the worker at scrape time."""

    sample_rate: float
    paused: bool
    in_flight: int
    breakers: dict[str, str] = field(default_factory=dict)


class _Books(Collector):
    """The books and gauges of one scrape, as read on the loop that writes them: the render
    in its thread then sees numbers that no longer move."""

    def __init__(self, counts: dict[str, int], gauges: Gauges, run: str) -> None:
        self.counts = counts
        self.gauges = gauges
        self.run = run

    def collect(self) -> Iterator[Metric]:
        counts = self.counts
        info = GaugeMetricFamily(f"{PREFIX}_run", "The run this proxy records.", labels=["run"])
        info.add_metric([self.run], 1)
        yield info
        for name, help_text in _TOTALS.items():
            yield CounterMetricFamily(f"{PREFIX}_{name}", help_text, value=counts.get(name, 0))
        for prefix, (label, help_text) in _BY.items():
            family = CounterMetricFamily(f"{PREFIX}_{prefix}", help_text, labels=[label])
            zeros = {k.split(".", 1)[1]: 0 for k in _FROM_ZERO if k.startswith(prefix + ".")}
            for reason, value in sorted((zeros | by_reason(counts, prefix)).items()):
                family.add_metric([reason], value)
            yield family
        deliveries = CounterMetricFamily(
            f"{PREFIX}_alert_deliveries",
            "Alert and incident deliveries, by destination (team/kind) and outcome.",
            labels=["destination", "outcome"],
        )
        for key, value in sorted(counts.items()):  # zeros too: each child from the start
            if not key.startswith("deliveries."):
                continue
            outcome, _, destination = key.removeprefix("deliveries.").partition(".")
            deliveries.add_metric([destination, outcome], value)
        yield deliveries
        g = self.gauges
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
    """One worker's registry: books read at scrape time, routes observed per batch (in the
    store thread), the exposition rendered in a thread of its own."""

    def __init__(
        self,
        run: str,
        counts: Callable[[], dict[str, int]],
        gauges: Callable[[], Gauges],
        max_routes: int,
    ) -> None:
        # `_created` series double the output and help no one here (untyped upstream)
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.run = run
        self.counts = counts
        self.gauges = gauges
        self.max_labels = max_routes * LABELS_PER_ROUTE
        self.labels: set[str] = set()  # every route label ever given, merged ones included
        self.rendering: asyncio.Future[bytes] | None = None
        self.results = Counter(
            f"{PREFIX}_route_exchanges",
            "Compared exchanges per route and result (matched, ignored, divergent).",
            ["route", "result"],
            registry=None,
        )
        self.latency = Histogram(
            f"{PREFIX}_latency_seconds",
            "Response time per route and side (primary, shadow, secondary); failures excluded.",
            ["route", "side"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )

    def observe(self, batch: list[Exchange]) -> None:
        """Called from the store thread with each committed batch."""
        for x in batch:
            route = self._label(x.route)
            self.results.labels(route, result_of(x.shadow_diffs)).inc()
            for side in _SIDES:
                outcome = getattr(x, side)
                if outcome and outcome.error is None and outcome.latency is not None:
                    self.latency.labels(route, side).observe(outcome.latency)

    def _label(self, route: str) -> str:
        """The route's label while labels remain, else `other`."""
        label = clean(route)  # mitmproxy leaves undecodable path bytes as lone surrogates
        if label in self.labels or label == OTHER:
            return label
        if len(self.labels) >= self.max_labels:
            return OTHER
        self.labels.add(label)
        return label

    def forget(self, old: str, new: str) -> None:
        """Drops the series of route `old` and those under it, which a collapse merged into
        `new` (called from the store thread, as the route table merges)."""
        old, new = clean(old), clean(new)
        series: tuple[tuple[MetricWrapperBase, tuple[str, ...]], ...] = (
            (self.results, (MATCHED, IGNORED, DIVERGENT)),
            (self.latency, _SIDES),
        )
        for label in [label for label in self.labels if apply_merge(label, old, new) != label]:
            for metric, values in series:
                for value in values:
                    with contextlib.suppress(KeyError):  # raised before prometheus_client 0.22
                        metric.remove(label, value)

    async def scrape(self) -> bytes:
        """The exposition; scrapes that come together share one rendering."""
        if self.rendering is None:
            registry = CollectorRegistry(auto_describe=False)
            # read here, on the loop where the worker writes them
            registry.register(_Books(self.counts(), self.gauges(), self.run))
            registry.register(self.results)  # prometheus_client locks its own series
            registry.register(self.latency)
            self.rendering = asyncio.ensure_future(asyncio.to_thread(generate_latest, registry))
            self.rendering.add_done_callback(self._rendered)
        return await asyncio.shield(self.rendering)

    def _rendered(self, _: asyncio.Future[bytes]) -> None:
        self.rendering = None
