"""Records for tests, in one place (in the manner of mitmproxy's `test/tflow.py`): a snapshot,
an outcome, an exchange, with plain defaults that a test overrides where it matters."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import orjson

from shadowdiff.model import Divergence, Exchange, Headers, Outcome, RequestSnapshot

JSON: Headers = [(b"Content-Type", b"application/json")]


def snapshot(
    flow_id: str = "f1",
    method: str = "GET",
    path: str = "/",
    headers: Headers | None = None,
    body: bytes = b"",
    timestamp: float = 1.0,
) -> RequestSnapshot:
    return RequestSnapshot(flow_id, method, path, headers or [], body, timestamp)


def outcome(
    value: object = None, status: int = 200, latency: float | None = 0.01, headers: Headers = JSON
) -> Outcome:
    """A JSON response with `value` as its body (no body for None)."""
    body = b"" if value is None else orjson.dumps(value)
    return Outcome(status, list(headers), body, latency)


def exchange(
    request: RequestSnapshot | None = None,
    primary: Outcome | None = None,
    shadow: Outcome | None = None,
    secondary: Outcome | None = None,
    route: str = "",
    diffs: list[Divergence] | None = None,
) -> Exchange:
    """An exchange, unrouted unless `route` is given (the recorder routes it)."""
    return Exchange(
        request or snapshot(),
        primary or outcome({"a": 1}),
        shadow or outcome({"a": 1}),
        secondary,
        route,
        diffs or [],
    )


Array = npt.NDArray[np.float64]


def timings(
    n: int, ratio: float = 1.0, seed: int = 0, outliers: float = 0.02
) -> tuple[Array, Array]:
    """Paired timings like real traffic: a per-request cost both sides share (lognormal, median
    50 ms), independent jitter per side, and a few outliers (GC, cold connections) on either side;
    the shadow is `ratio` times slower."""
    rng = np.random.default_rng(seed)
    cost = rng.lognormal(math.log(0.05), 0.8, n)
    primary = cost * rng.lognormal(0.0, 0.25, n)
    shadow = ratio * cost * rng.lognormal(0.0, 0.25, n)
    hit = rng.random(n) < outliers
    on_shadow = rng.random(n) < 0.5
    spike = rng.uniform(3.0, 10.0, n)
    primary = np.where(hit & ~on_shadow, primary * spike, primary)
    shadow = np.where(hit & on_shadow, shadow * spike, shadow)
    return primary, shadow


def tally(rows: list[tuple[str, str, str, str, str, str | None, str, str]]) -> tuple[list, list]:
    """What the store's aggregates hold (path counts, signatures) for these divergence rows
    (route, side, exchange key, path, kind, rule, left, right): a test writes the rows."""
    from collections import Counter

    from shadowdiff.store.aggregates import signature

    first: dict[tuple[str, str, str], dict[str, str]] = {}
    for route, side, key, path, kind, rule, *_ in rows:
        if rule is None:
            first.setdefault((route, side, key), {}).setdefault(path, kind)
    paths: Counter[tuple[str, ...]] = Counter()
    signatures: Counter[tuple[str, str]] = Counter()
    for (route, side, _), kinds in first.items():
        for path, kind in kinds.items():
            paths[(route, side, path, kind)] += 1
        if side == "shadow":
            signatures[(route, signature(kinds)[1])] += 1
    return (
        [(*k, n) for k, n in sorted(paths.items())],
        [(*k, n) for k, n in sorted(signatures.items())],
    )
