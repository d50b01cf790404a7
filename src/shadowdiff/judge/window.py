"""The aggregates of a run's last minutes, to judge whether a route is healthy *now*.

The whole run's verdict remembers every divergence for good: a route that was broken for a
minute an hour ago still fails. Incidents need the recent past instead. The aggregates only
ever add up (`store.aggregates`), so what the exchanges written since an earlier reading add
is the difference of two readings, exactly, for every count the judge reads; and the latency
sample is a uniform sample of the route, so its pairs sampled since are a uniform sample of
the exchanges since. `Window` is that difference, read like a store.

A route merged into another since the earlier reading has its history under the new name:
its window then holds more than the window's exchanges (never less), until the earlier
reading ages out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from shadowdiff.store import AggregateReads, PathRow, SignatureRow
from shadowdiff.store.base import SampleRow


@dataclass(frozen=True)
class Reading:
    """A run's aggregates as they were at `at` (epoch seconds)."""

    at: float
    routes: dict[str, dict[str, int]]
    statuses: dict[str, dict[tuple[str, str], int]]
    paths: dict[tuple[str, str, str, str], int]
    signatures: dict[tuple[str, str], int]


def reading(store: AggregateReads, run: str, at: float) -> Reading:
    """What the store's aggregates of `run` hold now; `at`: the time taken just before."""
    return Reading(
        at,
        store.routes(run),
        store.statuses(run),
        {(r, side, p, k): n for r, side, p, k, n in store.path_counts(run)},
        {(r, paths): n for r, paths, n in store.signatures(run)},
    )


class Window:
    """The run's aggregates between reading `base` and reading `now` (the latency sample from
    `store`, since `base`), answering the reads the judge makes of a store."""

    def __init__(self, store: AggregateReads, base: Reading, now: Reading) -> None:
        self.store = store
        self.base = base
        self.now = now

    def routes(self, run: str, route: str | None = None) -> dict[str, dict[str, int]]:
        out = {}
        for name, stats in self.now.routes.items():
            before = self.base.routes.get(name, {})
            delta = {k: max(v - before.get(k, 0), 0) for k, v in stats.items()}
            if delta.get("exchanges") and route in (None, name):
                out[name] = delta
        return out

    def statuses(self, run: str, route: str | None = None) -> dict[str, dict[tuple[str, str], int]]:
        out: dict[str, dict[tuple[str, str], int]] = {}
        for name, matrix in self.now.statuses.items():
            before = self.base.statuses.get(name, {})
            for pair, n in matrix.items():
                if n > before.get(pair, 0) and route in (None, name):
                    out.setdefault(name, {})[pair] = n - before.get(pair, 0)
        return out

    def path_counts(self, run: str, route: str | None = None) -> list[PathRow]:
        return [
            (*key, n - self.base.paths.get(key, 0))
            for key, n in sorted(self.now.paths.items())
            if n > self.base.paths.get(key, 0) and route in (None, key[0])
        ]

    def signatures(self, run: str, route: str | None = None) -> list[SignatureRow]:
        return [
            (*key, n - self.base.signatures.get(key, 0))
            for key, n in sorted(self.now.signatures.items())
            if n > self.base.signatures.get(key, 0) and route in (None, key[0])
        ]

    def latency_sample(self, run: str, route: str | None = None) -> Iterator[SampleRow]:
        return (row for row in self.store.latency_sample(run, route) if row[1] >= self.base.at)


class Readings:
    """The readings a window needs, at most about ten: one kept every tenth of `seconds`,
    and the first (the start of the window while the run is shorter than it)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.kept: list[Reading] = []

    def window(self, store: AggregateReads, now: Reading) -> Window:
        """The window ending at `now`, which is kept for later windows as needed."""
        old = [r for r in self.kept if r.at <= now.at - self.seconds]
        base = old[-1] if old else (self.kept[0] if self.kept else now)
        if not self.kept or now.at - self.kept[-1].at >= self.seconds / 10:
            self.kept.append(now)
        self.kept = [r for r in self.kept if r.at >= base.at]
        return Window(store, base, now)
