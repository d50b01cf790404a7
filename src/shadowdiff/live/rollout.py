"""The rollout's decision on the live path: does the candidate serve this request?

Cheap and synchronous, as sampling is: matchers parsed once, a hash of the sticky key. The
bucket of a key is fixed for the whole release (a hash salted apart from sampling's), so a
user stays on one side while the share only grows, and widening 5 % → 25 % keeps the first
5 % in. The stage itself comes from the worker (`Serving`), which reads it from the store.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import random
import re
from collections.abc import Callable

from shadowdiff.channel import Serving
from shadowdiff.config import Latency, Release, Stage
from shadowdiff.live.sampling import Lookup, lookup, sticky_fraction, where

Matcher = Callable[[Lookup, str], bool]
"""Whether a request (its header lookup, its client's address) is in a cohort."""

ROLLED_BACK = "rolled_back"


def bucket(key: str) -> float:
    """A key's place in [0, 100): the candidate serves it while the share is above it."""
    return 100.0 * sticky_fraction("shadowdiff-release\0" + key)


def _matcher(spec: str) -> Matcher:
    kind, _, rest = spec.partition(":")
    if kind == "client":
        network = ipaddress.ip_network(rest, strict=False)

        def client(header: Lookup, address: str) -> bool:
            try:
                return ipaddress.ip_address(address.removeprefix("::ffff:")) in network
            except ValueError:
                return False

        return client
    name, _, value = rest.partition("=")

    return lambda header, address: lookup((kind, name), "", header) == value


class Router:
    """The serving decision of one stage (None: the primary serves everyone)."""

    def __init__(
        self, release: Release, serving: Serving | None, rng: random.Random | None = None
    ) -> None:
        stage: Stage | None = None
        if serving is not None and serving.state != ROLLED_BACK:
            stage = release.stages[min(serving.stage, len(release.stages) - 1)]
        self.cohort = [_matcher(m) for m in stage.cohort.match] if stage and stage.cohort else []
        self.share = stage.percent.share if stage and stage.percent else 0.0
        self.sticky = where(release.sticky_key)
        patterns = [fnmatch.translate(p) for p in release.writes]
        self.writes = re.compile("|".join(patterns)) if patterns else None
        self.random = (rng or random.Random()).random

    @property
    def serving(self) -> bool:
        """Whether the stage serves anyone from the candidate."""
        return bool(self.cohort) or self.share > 0

    def serves(self, path: str, header: Lookup, client: str) -> bool:
        """Whether the request is in the stage's cohort or share."""
        if self.cohort:
            return any(match(header, client) for match in self.cohort)
        if self.share <= 0:
            return False
        key = lookup(self.sticky, path.partition("?")[2], header) if self.sticky else None
        draw = bucket(key) if key is not None else 100.0 * self.random()
        return draw < self.share

    def writable(self, method: str, path: str) -> bool:
        """Whether an unsafe request may go to the candidate (`release.writes`)."""
        return self.writes is not None and bool(
            self.writes.match(f"{method} {path.partition('?')[0]}")
        )


def safe(method: str) -> bool:
    """GET, HEAD, OPTIONS: retried on the primary when the candidate fails them."""
    return Latency.copied(method)
