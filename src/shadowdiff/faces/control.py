"""The control server: metrics, the live verdict, health, the kill switch and the dashboard.

It runs in the worker process, on the worker's loop, never on the proxy's: a scrape, a verdict
or a dashboard left open cannot take a cycle from live traffic; what is slow (rendering the
metrics, judging) runs in threads, so it cannot hold up the copies timed on that loop either.
The switch reaches the tap over the worker's channel within milliseconds. A loopback server
answers only to loopback names; mutating endpoints refuse cross-origin browser requests, and
need the bearer token when one is set (mandatory beyond loopback).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from shadowdiff.faces.verdict import RETRY_AFTER, Busy, UnknownRoute
from shadowdiff.model import RELEASE_ACTIONS
from shadowdiff.store import StoreError, clean

if TYPE_CHECKING:
    from shadowdiff.faces.metrics import Metrics
    from shadowdiff.faces.verdict import LiveVerdict

logger = logging.getLogger("shadowdiff.control")

DIVERGENCES_SHOWN = 50

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_ASSETS = {
    "/": ("index.html", "text/html"),
    "/dashboard.js": ("dashboard.js", "text/javascript"),
    "/dashboard.css": ("dashboard.css", "text/css"),
}

_LOOPBACK_V4 = ipaddress.IPv4Network("127.0.0.0/8")
_HOST = re.compile(r"(?:\[([^\]]*)\]|([^:\[\]]*))(?::[0-9]*)?")
"""A Host header: a bracketed IPv6 literal or a name, and a port."""

_READ_ONLY = {"/gate"}
"""Paths a rollout controller may POST to without the token: they only read (Flagger's
webhooks always POST)."""
_SIGNED = {"/hooks/pagerduty"}
"""Paths whose callers sign the body instead of sending the token, once a signing secret
is set (PagerDuty's webhooks: `X-PagerDuty-Signature`)."""
MAX_HOOK = 256 * 1024
"""Largest request body read (PagerDuty's webhooks are a few kilobytes)."""


class Switch(Protocol):
    """The kill switch and the dial, as the server drives them (the worker's `Switch`)."""

    def state(self) -> dict[str, Any]: ...
    def pause(self, actor: str) -> object: ...
    def resume(self, actor: str) -> object: ...
    def dial(self, rate: float | None, actor: str) -> object: ...


class Release(Protocol):
    """The release controller, as the server drives it (the worker's `Rollout`)."""

    def status(self) -> dict[str, Any]: ...
    async def act(self, action: str, actor: str) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Sources:
    """What the server shows, as callables and objects handed in by the composition root:
    it reads them, never the worker itself."""

    switch: Switch
    verdicts: LiveVerdict
    metrics: Metrics
    status: Callable[[], dict[str, Any]]
    health: Callable[[], dict[str, Any]]
    release: Release | None = None


_SOURCES: web.AppKey[Sources] = web.AppKey("sources")
_TOKEN: web.AppKey[str | None] = web.AppKey("token")
_HOOK_SECRET: web.AppKey[str | None] = web.AppKey("hook_secret")
_LOOPBACK: web.AppKey[bool] = web.AppKey("loopback")


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _refusal(request: web.Request) -> web.Response | None:
    """Why a mutating request is refused, if it is."""
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        return _json({"error": f"cross-origin request from {origin} refused"}, 403)
    token = request.app[_TOKEN]
    if token is None:
        return None
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # the scheme is case-insensitive (RFC 7235); the token is compared in constant time
    if scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip(" ").encode(errors="backslashreplace"), token.encode()
    ):
        return None
    return web.Response(
        status=401,
        body=orjson.dumps({"error": "a bearer token is required (Authorization: Bearer …)"}),
        content_type="application/json",
        headers={"WWW-Authenticate": 'Bearer realm="shadowdiff"'},
    )


def _rebound(request: web.Request) -> bool:
    """A request to a loopback-only server under another host name: a web page that had its
    own name resolved to 127.0.0.1 (DNS rebinding) to reach the switch and the examples.
    Only `localhost` and loopback IP literals (127.0.0.0/8, `[::1]`) are names of ours."""
    if not request.app[_LOOPBACK]:
        return False
    host = _HOST.fullmatch(request.host)
    name = (host[1] or host[2] or "").lower() if host else ""
    if name == "localhost":
        return False
    try:
        address = ipaddress.ip_address(name)
    except ValueError:  # a name (`127.0.0.1.evil.example`), or no host at all
        return True
    return not (address == ipaddress.IPv6Address("::1") or address in _LOOPBACK_V4)


@web.middleware
async def _guard(request: web.Request, handler: Any) -> web.StreamResponse:
    if _rebound(request):
        return _json({"error": f"host {request.host!r} refused: use 127.0.0.1 or localhost"}, 403)
    signing = request.app[_HOOK_SECRET]
    if request.path in _SIGNED and signing is not None:
        if not _signed(await request.read(), request, signing):
            return _json({"error": "the signature (X-PagerDuty-Signature) does not match"}, 401)
    elif request.method not in ("GET", "HEAD", "OPTIONS") and request.path not in _READ_ONLY:
        refusal = _refusal(request)
        if refusal is not None:
            return refusal
    response: web.StreamResponse = await handler(request)
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def _signed(body: bytes, request: web.Request, secret: str) -> bool:
    """PagerDuty's v3 webhook signature: `v1=` HMAC-SHA256 of the body in hex, one of a
    comma-separated list (several while a secret is rotated)."""
    want = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    given = request.headers.get("X-PagerDuty-Signature", "")
    return any(
        hmac.compare_digest(
            part.strip().removeprefix("v1=").encode(errors="replace"), want.encode()
        )
        for part in given.split(",")
        if part.strip().startswith("v1=")
    )


def _actor(request: web.Request) -> str:
    """Who asked: the name a client gave (`X-Shadowdiff-Actor`), and where from."""
    name = clean(request.headers.get("X-Shadowdiff-Actor", "").strip()[:80])  # any bytes
    peer = request.remote or "unknown"
    return f"{name} from {peer}" if name else peer


async def _pause(request: web.Request) -> web.Response:
    switch = request.app[_SOURCES].switch
    switch.pause(_actor(request))
    return _json(switch.state())


async def _resume(request: web.Request) -> web.Response:
    switch = request.app[_SOURCES].switch
    switch.resume(_actor(request))
    return _json(switch.state())


async def _sample_rate(request: web.Request) -> web.Response:
    """The dial: a number 0..1 replaces every configured rate; null gives them back."""
    switch = request.app[_SOURCES].switch
    text = (await request.text()).strip()
    wrong = (
        "body must be a number between 0 and 1, or null for the configured rates, "
        f"got {text[:40]!r}"
    )
    try:
        value: Any = orjson.loads(text) if text else ""
    except orjson.JSONDecodeError:
        return _json({"error": wrong}, 400)
    if isinstance(value, dict):
        value = value.get("rate", "")
    number = isinstance(value, int | float) and not isinstance(value, bool)  # `true` is no 1.0
    if value is not None and not (number and 0.0 <= value <= 1.0):
        return _json({"error": wrong}, 400)
    rate = None if value is None else float(value)
    switch.dial(rate, _actor(request))
    return _json(switch.state())


async def _metrics(request: web.Request) -> web.Response:
    body = await request.app[_SOURCES].metrics.scrape()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


_Judged = tuple[Mapping[str, object], int, Mapping[str, str] | None]


async def _judged(request: web.Request) -> _Judged:
    """The live verdict document (of `?route=`), or why there is none: no such route (404),
    too many judgements pending (503, Retry-After), an unreadable store (503)."""
    route = request.query.get("route") or None
    try:
        return await request.app[_SOURCES].verdicts.verdict(route), 200, None
    except UnknownRoute:
        error = f"the run has no route {(route or '')[:200]!r}"
        return {"verdict": "INCONCLUSIVE", "error": error}, 404, None
    except Busy:
        error = "too many routes being judged at once; retry shortly"
        return {"verdict": "INCONCLUSIVE", "error": error}, 503, {"Retry-After": RETRY_AFTER}
    except Exception as e:  # an unreadable store: say so, the worker goes on
        return {"verdict": "INCONCLUSIVE", "error": f"cannot judge the run: {e}"}, 503, None


async def _verdict(request: web.Request) -> web.Response:
    return _json(*await _judged(request))


async def _gate(request: web.Request) -> web.Response:
    """For Flagger's webhooks (and anyone who gates on a status code): 200 when the live
    verdict is PASS, 412 when FAIL or INCONCLUSIVE (503 when busy or unreadable), with the
    verdict document either way."""
    doc, status, headers = await _judged(request)
    return _json(doc, 200 if doc["verdict"] == "PASS" else max(status, 412), headers)


async def _healthz(request: web.Request) -> web.Response:
    report = request.app[_SOURCES].health()
    return _json(report, 200 if report["status"] == "ok" else 503)


async def _status(request: web.Request) -> web.Response:
    """Everything `shadowdiff ctl status` and the dashboard show besides the verdict."""
    sources = request.app[_SOURCES]
    status = sources.status()
    return _json(
        {
            "run": status["run"],
            "instance": status["instance"],
            **sources.switch.state(),
            "counts": status["counts"],
            "health": sources.health(),
            "release": sources.release.status() if sources.release else None,
        }
    )


async def _divergences(request: web.Request) -> web.Response:
    rows = await request.app[_SOURCES].verdicts.divergences(DIVERGENCES_SHOWN)
    names = ("route", "path", "kind", "primary", "shadow")
    return _json([dict(zip(names, row, strict=True)) for row in rows])


async def _examples(request: web.Request) -> web.Response:
    route, path = request.query.get("route"), request.query.get("path")
    if not route or not path:
        return _json({"error": "route and path are required"}, 400)
    return _json(await request.app[_SOURCES].verdicts.examples(route, path))


async def _incidents(request: web.Request) -> web.Response:
    listed = await request.app[_SOURCES].verdicts.incident_list()
    return _json([i.row() for i in listed])


async def _ack(request: web.Request) -> web.Response:
    """`{"key": …}`: acknowledges the open incident of that dedup key (or a unique prefix
    of at least 6 characters)."""
    try:
        key = orjson.loads(await request.read() or b"{}").get("key")
    except (orjson.JSONDecodeError, AttributeError):
        key = None
    if not isinstance(key, str) or not key:
        return _json({"error": 'body must be {"key": "<dedup key of an open incident>"}'}, 400)
    incident = await request.app[_SOURCES].verdicts.ack(key, _actor(request))
    if incident is None:
        return _json(
            {"error": f"no open incident has the key {key[:80]!r} (or it is ambiguous)"}, 404
        )
    return _json(incident.row())


async def _pagerduty(request: web.Request) -> web.Response:
    """PagerDuty's v3 webhook: `incident.acknowledged` acknowledges the incident of its
    `incident_key` (our dedup key). Anything else is taken and ignored: PagerDuty retries
    what is not answered 2xx."""
    body = await request.read()
    try:
        event = orjson.loads(body).get("event") or {}
        kind, data = event.get("event_type"), event.get("data") or {}
        key = data.get("incident_key")
        who = str((event.get("agent") or {}).get("summary") or "someone")[:80]
    except (orjson.JSONDecodeError, AttributeError):
        return _json({"error": "not a PagerDuty v3 webhook"}, 400)
    acked = None
    if kind == "incident.acknowledged" and isinstance(key, str) and key:
        acked = await request.app[_SOURCES].verdicts.ack(key, f"{who} (PagerDuty)", page=False)
    return _json({"acknowledged": acked.key if acked else None})


async def _release(request: web.Request) -> web.Response:
    release = request.app[_SOURCES].release
    if release is None:
        return _json({"error": "this run has no release plan (`release:` in the config)"}, 404)
    return _json(release.status())


async def _release_action(request: web.Request) -> web.Response:
    """`POST /release/promote|hold|resume|rollback`: a person moves the release (the token, as for
    the kill switch); 409 with the reason when its state does not allow it."""
    release = request.app[_SOURCES].release
    if release is None:
        return _json({"error": "this run has no release plan (`release:` in the config)"}, 404)
    try:
        return _json(await release.act(request.match_info["action"], _actor(request)))
    except ValueError as e:  # the controller's Refused
        return _json({"error": str(e)}, 409)
    except StoreError as e:
        return _json({"error": f"cannot move the release: {e}"}, 503)


async def _asset(request: web.Request) -> web.Response:
    name, kind = _ASSETS[request.path]
    text = resources.files("shadowdiff.faces").joinpath("dashboard", name).read_bytes()
    return web.Response(
        body=text, content_type=kind, charset="utf-8", headers={"Content-Security-Policy": CSP}
    )


def build(
    switch: Switch,
    verdicts: LiveVerdict,
    metrics: Metrics,
    status: Callable[[], dict[str, Any]],
    health: Callable[[], dict[str, Any]],
    token: str | None,
    loopback: bool,
    hook_secret: str | None = None,
    release: Release | None = None,
) -> web.Application:
    """`status` gives run, instance and counts; `health` the worker's health report.
    `loopback`: the server listens on loopback only, so only loopback names may ask.
    `hook_secret`: PagerDuty's webhooks sign with it instead of sending the token."""
    app = web.Application(middlewares=[_guard], client_max_size=MAX_HOOK)
    app[_SOURCES] = Sources(switch, verdicts, metrics, status, health, release)
    app[_TOKEN] = token
    app[_LOOPBACK] = loopback
    app[_HOOK_SECRET] = hook_secret
    for path in _ASSETS:
        app.router.add_get(path, _asset)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/verdict", _verdict)
    app.router.add_route("GET", "/gate", _gate)
    app.router.add_route("POST", "/gate", _gate)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/api/status", _status)
    app.router.add_get("/api/divergences", _divergences)
    app.router.add_get("/api/examples", _examples)
    app.router.add_post("/mirror/pause", _pause)
    app.router.add_post("/mirror/resume", _resume)
    app.router.add_put("/mirror/sample-rate", _sample_rate)
    app.router.add_get("/api/incidents", _incidents)
    app.router.add_post("/incidents/ack", _ack)
    app.router.add_post("/hooks/pagerduty", _pagerduty)
    app.router.add_get("/api/release", _release)
    app.router.add_post(f"/release/{{action:{'|'.join(RELEASE_ACTIONS)}}}", _release_action)
    return app


async def serve(app: web.Application, listen: str) -> web.AppRunner:
    """Starts listening; raises OSError (port taken) for the caller to report."""
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.TCPSite(runner, host.strip("[]"), int(port)).start()
    except OSError:
        await runner.cleanup()
        raise
    return runner
