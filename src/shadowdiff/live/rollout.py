"""The rollout on the live path: does the candidate serve this request, and how.

The decision is cheap and synchronous, as sampling is: matchers parsed once, a hash of the
sticky key. The bucket of a key is fixed for the whole release (a hash salted apart from
sampling's), so a user stays on one side while the share only grows, and widening 5 % → 25 %
keeps the first 5 % in. The stage itself comes from the worker (`Serving`), which reads it
from the store.

A safe request the candidate serves is asked by the tap's own client, within a bounded time,
rather than forwarded by mitmproxy: when the candidate fails it, the request must still go on
to the primary before the client sees anything, which mitmproxy's upstream cannot do once it
has started (its `error` hook cannot replace a response, and it has no upstream timeout). A
write the release lets through is forwarded by mitmproxy itself (an upstream change), never
retried.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import random
import re
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from mitmproxy import http
from mitmproxy.net.http import status_codes

from shadowdiff.channel import Serving
from shadowdiff.client import HOP_BY_HOP, Mirror, Unsendable
from shadowdiff.config import Config, Latency, Release, Stage
from shadowdiff.live.sampling import Lookup, lookup, sticky_fraction, where
from shadowdiff.model import COMPLETE, HELD, RUNNING, Outcome, RequestSnapshot

Matcher = Callable[[Lookup, str], bool]
"""Whether a request (its header lookup, its client's address) is in a cohort."""

SERVING = frozenset({RUNNING, HELD, COMPLETE})
"""The states in which a stage serves its users from the candidate: not rolled back, and
not unknown (a controller that cannot read the store says `stale`: the primary then)."""


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
        if serving is not None and serving.state in SERVING:
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


class Candidate:
    """The candidate as the tap reaches it: its own client (no limit on connections, so no
    request waits for one and falls back for nothing of the candidate's), answers up to
    `release.max_body`, within `release.timeout`."""

    def __init__(self, cfg: Config) -> None:
        assert cfg.release is not None
        self.url = cfg.candidate()
        bounds = {"timeout": cfg.release.timeout, "max_body": cfg.release.max_body}
        self.client = Mirror(cfg.mirror.model_copy(update=bounds), pool=0)

    async def ask(self, flow: http.HTTPFlow) -> tuple[Outcome, str | None]:
        """Asks the candidate for a safe request; its answer becomes the response unless it
        failed, and why it did (`error` kind, `5xx`): the request then goes on to the
        primary as if never asked."""
        request = flow.request
        snapshot = RequestSnapshot(
            flow.id,
            request.method,
            request.path,
            list(request.headers.fields),
            request.raw_content or b"",
            request.timestamp_start,
        )
        try:
            outcome = await self.client.send(self.url, snapshot, served=True)
        except Unsendable:  # not_eligible.bad_header keeps these out; a guard all the same
            return Outcome(error="protocol"), "unsendable"
        failed = outcome.error or ("5xx" if (outcome.status or 0) >= 500 else None)
        if failed is None and flow.response is None and flow.live:  # the client may be gone
            flow.response = response(request.method, outcome)
        return outcome, failed

    def redirect(self, request: http.Request) -> None:
        """A write the candidate serves: mitmproxy forwards it there itself."""
        url = urlsplit(self.url)
        request.scheme = url.scheme
        request.host = url.hostname or ""
        request.port = url.port or (443 if url.scheme == "https" else 80)

    async def close(self) -> None:
        await self.client.close()


_FRAMING = HOP_BY_HOP - {"host", "expect"}
_BODILESS = frozenset({204, 304})


def response(method: str, outcome: Outcome) -> http.Response:
    """The candidate's answer as the client gets it: status, headers and body byte for byte
    (still content-encoded), framed afresh by mitmproxy: the connection's own headers (and
    those `Connection` names) dropped, the length of the body read. A HEAD, a 1xx, 204 or
    304 keeps the length as the candidate sent it, if any (it is not this body's)."""
    assert outcome.status is not None
    named = {
        token.strip().lower()
        for k, v in outcome.headers
        if k.lower() == b"connection"
        for token in v.decode("latin-1").split(",")
    }
    drop = _FRAMING | named
    fields = [(k, v) for k, v in outcome.headers if k.decode("latin-1").lower() not in drop]
    length = [v for k, v in outcome.headers if k.lower() == b"content-length"][:1]
    if method != "HEAD" and outcome.status >= 200 and outcome.status not in _BODILESS:
        length = [str(len(outcome.body)).encode()]
    fields += [(b"content-length", v) for v in length]
    now = time.time()
    return http.Response(
        b"HTTP/1.1",
        outcome.status,
        status_codes.RESPONSES.get(outcome.status, "").encode(),
        http.Headers(fields),
        outcome.body,
        None,
        now,
        now,
    )
