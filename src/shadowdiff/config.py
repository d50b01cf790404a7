"""The configuration schema: every option, its default and its validation, in one place.

A config comes from a YAML file, overridden by command-line flags. Any error becomes a
`ConfigError` whose message is one line naming the source, the key path and what is wrong.
"""

from __future__ import annotations

import copy
import difflib
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)

from shadowdiff.errors import ConfigError

SHADOW_MARKER = ("X-Shadowdiff", "shadow")
"""Header set on every copy; a request that carries it is never mirrored again."""


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*$")

MAX_DURATION = 7 * 24 * 3600.0
"""Seconds (168h), the longest duration an option takes: far beyond what any of them needs,
and within every timer's range (an infinite grace overflowed the platform's time_t)."""


def _seconds(value: Any) -> float:
    """Seconds from `5s`, `250ms`, `1m`, `2h` or a bare number of seconds, finite (`.inf`
    and `.nan` from YAML are floats, not durations)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration (use e.g. 5s, 250ms, 1m)")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{str(value)!r} is not a duration (use e.g. 5s, 250ms, 1m)")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    if not math.isfinite(seconds):
        raise ValueError(f"duration must be a finite number of seconds (got {value!r})")
    return seconds


def parse_duration(value: Any) -> float:
    """A duration (`_seconds`), positive and at most MAX_DURATION."""
    seconds = _seconds(value)
    if seconds <= 0:
        raise ValueError(f"duration must be positive (got {value!r})")
    if seconds > MAX_DURATION:
        raise ValueError(f"duration must be at most 168h (got {value!r})")
    return seconds


def check_size(value: Any, handler: ValidatorFunctionWrapHandler) -> ByteSize:
    """pydantic's `ByteSize` (`1MiB`, `512KB`, `100b`, a bare number of bytes), positive,
    with this module's one-line messages."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size (use e.g. 1MiB, 512KB)")
    try:
        size: ByteSize = handler(value)
    except ValidationError as e:
        if e.errors()[0]["type"] == "greater_than" or (
            isinstance(value, int | float) and value <= 0
        ):
            raise ValueError(f"size must be positive (got {value!r})") from None
        raise ValueError(f"{str(value)!r} is not a size (use e.g. 1MiB, 512KB, 4096)") from None
    return size


def check_url(value: Any) -> str:
    """An absolute http(s) URL without a trailing slash, so paths can be appended."""
    text = str(value).strip()
    if not re.match(r"^https?://[^/\s]+", text):
        raise ValueError(f"{text!r} is not a URL with an http:// or https:// scheme and a host")
    return text.rstrip("/")


def parse_listen(value: Any) -> str:
    """`HOST:PORT` or a bare port (then on 127.0.0.1)."""
    text = str(value).strip()
    if re.fullmatch(r"[0-9]+", text):
        text = f"127.0.0.1:{text}"
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:8080)")
    return text


Duration = Annotated[float, BeforeValidator(parse_duration)]


def parse_stagger(value: Any) -> float:
    """`latency.stagger`: a duration up to 1 s, or 0 (`0`, `0s`, `0ms`: none). Longer would
    only hold exchanges in memory: the live traffic's rhythm is milliseconds."""
    seconds = _seconds(value)
    if seconds < 0:
        raise ValueError(f"stagger must be 0 or more (got {value!r})")
    if seconds > 1.0:
        raise ValueError(f"stagger must be at most 1s (got {value!r})")
    return seconds


Size = Annotated[ByteSize, Field(gt=0), WrapValidator(check_size)]
Url = Annotated[str, BeforeValidator(check_url)]
Rate = Annotated[float, Field(ge=0.0, le=1.0)]
Method = Annotated[str, BeforeValidator(lambda v: str(v).upper())]


def check_sticky_key(value: str | None) -> str | None:
    """`header:NAME`, `cookie:NAME` or `query:NAME`: where a request's sticky key is."""
    if value is None:
        return None
    kind, sep, name = value.partition(":")
    if not sep or kind not in ("header", "cookie", "query") or not name:
        raise ValueError(f"{value!r} is not header:NAME, cookie:NAME or query:NAME")
    return value


StickyKey = Annotated[str | None, AfterValidator(check_sticky_key)]


class Strict(BaseModel):
    """Unknown keys are errors: a typo must never silently fall back to a default. Every
    number is finite: YAML's `.inf` and `.nan` are floats, and no option means either."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class RouteRule(Strict):
    """A per-route override: a path glob, and the methods and rate that apply to it."""

    path: str
    methods: list[Method] | None = None
    rate: Rate | None = None


class Sampling(Strict):
    rate: Rate = 0.1
    sticky_key: StickyKey = None
    max_per_second: Annotated[float, Field(gt=0)] | None = None
    methods: list[Method] = ["GET", "HEAD", "OPTIONS"]
    include: list[str] = []
    exclude: list[str] = []
    routes: list[RouteRule] = []


class HeaderRewrites(Strict):
    set: dict[str, str] = {}
    remove: list[str] = []


class Breaker(Strict):
    """Trips when the error rate over `window` exceeds `error_rate`; probes after `cool_down`."""

    error_rate: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    window: Duration = 10.0
    min_requests: Annotated[int, Field(ge=1)] = 20
    cool_down: Duration = 5.0
    probes: Annotated[int, Field(ge=1)] = 3


class Mirror(Strict):
    timeout: Duration = 5.0
    max_in_flight: Annotated[int, Field(ge=1)] = 100
    max_body: Size = ByteSize(1024 * 1024)
    max_backlog: Size = ByteSize(16 * 1024 * 1024)
    grace: Duration = 2.0
    headers: HeaderRewrites = HeaderRewrites()
    breaker: Breaker = Breaker()


Reference = Literal["secondary", "primary", "proxy"]


class Latency(Strict):
    """What the shadow's latency is compared with (`reference`), so that both sides of a pair
    are timed by the same kind of clock:

    - `secondary`: the secondary's copy, timed by the worker's client as the shadow's is
      (the default when a secondary is configured);
    - `primary`: a timed copy of each sampled safe request (COPIED) that the worker sends to
      `primary` with the same client and clock; the live response is untouched, other methods
      get no latency pair (the default without a secondary when `primary` is set, as
      `shadowdiff proxy` requires);
    - `proxy`: mitmproxy's time from the request's last byte to the response's last byte. It
      includes the proxy's own queueing, so under load the primary looks slower than it is and
      a slower shadow can pass (the default only when the primary's URL is unknown).
    """

    reference: Reference | None = None
    stagger: Annotated[float, BeforeValidator(parse_stagger)] = 0.005
    """Seconds at most, drawn at random per exchange, that the copies of a pair timed against
    the primary (`primary`) wait after the live answer. That answer is when its client sends
    the next request: copies sent at once met that request at the primary every time, a load
    the shadow's copy never has (A/A: a 2 ms route read a few per cent apart). 0: at once."""

    COPIED: ClassVar[frozenset[str]] = frozenset({"GET", "HEAD", "OPTIONS"})
    """Methods whose copy may go to the primary: safe ones (RFC 9110 §9.2.1), which a second
    call does not change."""

    @staticmethod
    def copied(method: str) -> bool:
        """Whether a `method` request may get a timed copy to the primary."""
        return method in Latency.COPIED


def check_reference(latency: Latency, info: ValidationInfo) -> Latency:
    """Refuses a reference the config cannot give: a secondary that is not configured, a
    primary copy without the primary's URL, or another clock while a secondary runs (the
    judge compares with the secondary whenever there is one)."""
    secondary, primary = info.data.get("secondary"), info.data.get("primary")
    if latency.reference == "secondary" and not secondary:
        raise ValueError("reference secondary needs a secondary (set `secondary`)")
    if latency.reference == "primary" and not primary:
        raise ValueError("reference primary needs the primary's URL (set `primary`)")
    if latency.reference in ("primary", "proxy") and secondary:
        raise ValueError(
            f"reference {latency.reference} with a secondary configured: the secondary is the "
            "reference (remove `secondary`, or the reference)"
        )
    return latency


def latency_reference(cfg: Config) -> Reference:
    """The latency reference `cfg` gives, its `latency.reference` or the default for it."""
    if cfg.latency.reference is not None:
        return cfg.latency.reference
    if cfg.secondary:
        return "secondary"
    return "primary" if cfg.primary else "proxy"


def paired_by(cfg: Config, method: str) -> Reference | None:
    """What times the latency baseline of a live `method` request; None: it has no pair (the
    primary's timed copy goes only with a safe request, and no other clock stands in)."""
    reference = latency_reference(cfg)
    return None if reference == "primary" and not Latency.copied(method) else reference


DEFAULT_IGNORED_HEADERS = [
    "date",
    "server",
    "age",
    "expires",
    "via",
    "x-request-id",
    "x-correlation-id",
    "x-trace-id",
    "traceparent",
    "tracestate",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-amzn-trace-id",
    "x-cloud-trace-context",
    "etag",
    "content-length",
    "content-encoding",
    "connection",
    "keep-alive",
    "transfer-encoding",
]
"""Headers that differ between any two instances; bodies are compared decoded, so their
length and encoding headers say nothing more. Set-Cookie is compared by cookie names only."""


def check_rule_path(value: str) -> str:
    """`status`, `header:NAME` or `body:$...` (a JSON path), the places a divergence can be.
    The JSON path goes through the parser the comparison and the judge use, so a bad one
    stops the config here instead of every exchange in the worker."""
    from shadowdiff.jsonpath import Rules as PathRules

    text = str(value).strip()
    if text == "status" or (text.startswith("header:") and len(text) > 7):
        return text.lower() if text.startswith("header:") else text
    if text == "body":
        return text
    if text.startswith("body:$"):
        try:
            PathRules(ignore=(text.removeprefix("body:"),))
        except ValueError as e:
            raise ValueError(f"{text!r} is not a valid JSON path: {e}") from None
        return text
    raise ValueError(f"{text!r} is not status, header:NAME, body or body:$.json.path")


RulePath = Annotated[str, BeforeValidator(check_rule_path)]


def check_pattern(value: str) -> str:
    try:
        re.compile(value)
    except re.error as e:
        raise ValueError(f"{value!r} is not a regular expression: {e}") from None
    return value


class Tolerance(Strict):
    """Numbers at `path` within `absolute` or `relative` of each other count as equal."""

    path: RulePath
    absolute: Annotated[float, Field(ge=0)] = 0.0
    relative: Annotated[float, Field(ge=0)] = 0.0


class Normalizer(Strict):
    """Strings at `path` are compared after `pattern` is replaced by `replace` in both."""

    path: RulePath = "body:$..*"
    pattern: Annotated[str, BeforeValidator(check_pattern)]
    replace: str = ""


class Rules(Strict):
    """What to leave out of a comparison; differences it hides are counted as ignored."""

    ignore: list[RulePath] = []
    tolerance: list[Tolerance] = []
    unordered: list[RulePath] = []
    normalize: list[Normalizer] = []


class RouteRules(Rules):
    """Rules added to the global ones for one route (`GET /users/{id}`)."""

    route: str


class Compare(Rules):
    ignored_headers: list[str] = DEFAULT_IGNORED_HEADERS
    unordered_all: bool = False
    routes: list[RouteRules] = []
    examples: Annotated[int, Field(ge=0, le=100)] = 5


class Routes(Strict):
    """Route templates: configured ones win, the rest are inferred from traffic."""

    templates: list[str] = []
    max: Annotated[int, Field(ge=1)] = 500
    collapse_after: Annotated[int, Field(ge=2)] = 50


class Noise(Strict):
    """Diffy's thresholds, the practical floor of the noise test: a path is a real divergence
    only if the shadow differs there more often than the secondary both significantly (Fisher's
    exact test at `judge.confidence`: `shadowdiff.judge.noise`) and by more than both."""

    relative: Annotated[float, Field(ge=0, le=1)] = 0.20
    """(s − q) / (s + q) must exceed it, s and q the shadow's and the secondary's rates there."""
    absolute: Annotated[float, Field(ge=0, le=1)] = 0.0003
    """s − q must exceed it: at least one unexplained difference per 3,333 exchanges."""


class Storage(Strict):
    """What the store keeps of each exchange beyond the aggregates the verdict is judged from
    (counts, status matrix, a uniform latency sample per route)."""

    bodies: Literal["examples", "divergent", "all"] = "examples"
    """Whose headers and bodies are kept: `examples`, only the example exchanges (per route
    and divergent path, and a few matched ones), every other exchange with a real divergence
    as a row without them, and matched ones in the aggregates alone; `divergent`, every
    exchange with a real divergence whole; `all`, every exchange whole."""
    max_rows: Annotated[int, Field(ge=1)] | None = None
    """Exchange rows a run keeps at most; beyond, the oldest that are no example are deleted
    with their divergences (the aggregates keep counting them). None: no cap."""


class Judge(Strict):
    """Thresholds of the release verdict; too little data is INCONCLUSIVE, never PASS."""

    allowed_divergence_rate: Rate = 0.0
    accepted_routes: list[str] = []
    accepted_paths: list[RulePath] = []
    min_pairs: Annotated[int, Field(ge=1)] = 50
    latency_tolerance: Annotated[float, Field(ge=0)] = 0.10
    p99_tolerance: Annotated[float, Field(ge=0)] = 0.25
    p99_min_pairs: Annotated[int, Field(ge=1)] = 300
    error_rate_margin: Rate = 0.0
    confidence: Annotated[float, Field(gt=0.5, lt=1)] = 0.95


DEFAULT_REDACTED_HEADERS = ["authorization", "proxy-authorization", "cookie", "set-cookie"]


def check_json_path(value: str) -> str:
    from shadowdiff.jsonpath import Rules as PathRules

    try:
        PathRules(ignore=(str(value),))
    except ValueError as e:
        raise ValueError(str(e)) from None
    return str(value)


DEFAULT_SECRET_NAMES = [
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "new_password",
    "newpassword",
    "old_password",
    "oldpassword",
    "current_password",
    "secret",
    "client_secret",
    "clientsecret",
    "private_key",
    "privatekey",
    "token",
    "access_token",
    "accesstoken",
    "refresh_token",
    "refreshtoken",
    "id_token",
    "idtoken",
    "auth_token",
    "authtoken",
    "session_token",
    "sessiontoken",
    "auth",
    "authorization",
    "api_key",
    "apikey",
    "api-key",
]
"""Names whose values are secrets, whatever their case: JSON keys at any depth, form, query
and multipart fields, and headers named so or ending in one after `-` or `_` (`X-Api-Key`)."""


class Redact(Strict):
    """What never appears in a report or a stored example: the values under secret names, the
    listed headers' values, and the values at JSON paths."""

    names: list[Annotated[str, Field(min_length=1)]] = DEFAULT_SECRET_NAMES
    headers: list[str] = DEFAULT_REDACTED_HEADERS
    paths: list[Annotated[str, BeforeValidator(check_json_path)]] = []


def parse_control_listen(value: Any) -> str | None:
    """`HOST:PORT`, a bare port, or `off` (no control server)."""
    if value is None or str(value).strip().lower() in ("off", "none", ""):
        return None
    return parse_listen(value)


class Control(Strict):
    """The live control server (metrics, verdict, kill switch, dashboard) in the worker.

    Mutating endpoints need a bearer token (`token`, or the environment variable named by
    `token_env`) unless the server listens on loopback only.
    """

    listen: Annotated[str | None, BeforeValidator(parse_control_listen)] = "127.0.0.1:9464"
    token: str | None = None
    token_env: str = "SHADOWDIFF_TOKEN"
    verdict_every: Duration = 5.0


def loopback(host: str) -> bool:
    """Is `host` (a listen address) reachable from this machine only?"""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def access_token(control: Control) -> str | None:
    """The bearer token the mutating control endpoints require (None: loopback, no token).

    A control server reachable beyond loopback without a token is refused outright.
    """
    token = control.token or os.environ.get(control.token_env) or None
    if token is None and control.listen and not loopback(control.listen.rpartition(":")[0]):
        raise ConfigError(
            f"control.listen: {control.listen} is reachable beyond loopback; set control.token "
            f"or the environment variable {control.token_env} (the kill switch needs a token)"
        )
    return token


def secret(env: str | None, file: Path | None, where: str) -> str | None:
    """The secret an environment variable or a file holds; named but missing is an error."""
    if env is not None:
        value = os.environ.get(env, "").strip()
        if not value:
            raise ConfigError(f"{where}: the environment variable {env} is not set")
        return value
    if file is not None:
        try:
            value = file.read_text(errors="replace").strip()
        except OSError as e:
            raise ConfigError(f"{where}: cannot read {file}: {e.strerror}") from None
        if not value:
            raise ConfigError(f"{where}: {file} is empty")
        return value
    return None


@dataclass(frozen=True)
class Target:
    """A team's destination with its secrets read: `name` (`team/kind`, numbered when a
    team has two of a kind) is what logs and metrics call it."""

    name: str
    team: str
    kind: str
    url: str
    routing_key: str | None


def destinations(cfg: Config) -> list[Target]:
    """Every team's destinations, secrets read now: a named secret that is missing (or a
    URL in a variable that is not one) stops the proxy at start, not at the first
    incident."""
    out = []
    for team, spec in cfg.incidents.teams.items():
        kinds = [d.kind for d in spec.destinations]
        for i, d in enumerate(spec.destinations):
            where = f"incidents.teams.{team}.destinations[{i}]"
            url = d.url or secret(d.url_env, None, where) or PAGERDUTY_EVENTS
            try:
                url = check_url(url)
            except ValueError:  # not quoted: a webhook URL is a secret
                raise ConfigError(f"{where}: {d.url_env} holds no http(s) URL") from None
            key = secret(d.routing_key_env, d.routing_key_file, where)
            nth = kinds[: i + 1].count(d.kind)
            name = f"{team}/{d.kind}" + (f"-{nth}" if kinds.count(d.kind) > 1 else "")
            out.append(Target(name, team, d.kind, url, key))
    hook = cfg.incidents.pagerduty_webhook_secret_env
    secret(hook, None, "incidents.pagerduty_webhook_secret_env")  # checked as early
    return out


class Webhook(Strict):
    """Where alerts go: Slack-compatible JSON (`text` and blocks) or a generic JSON event."""

    url: Url
    format: Literal["slack", "generic"] = "slack"


class AutoPause(Strict):
    """Pause mirroring on its own when the shadow fails too often or copies pile up."""

    shadow_error_rate: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    window: Annotated[int, Field(ge=1)] = 200
    backlog: Annotated[int, Field(ge=1)] | None = None


class Alerts(Strict):
    webhooks: list[Webhook] = []
    debounce: Duration = 300.0
    retries: Annotated[int, Field(ge=0)] = 3
    timeout: Duration = 5.0
    max_queue: Annotated[int, Field(ge=1)] = 100
    auto_pause: AutoPause = AutoPause()


Severity = Literal["critical", "error", "warning", "info"]
TeamName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
PAGERDUTY_EVENTS = "https://events.pagerduty.com/v2/enqueue"


class Destination(Strict):
    """Where a team's incidents go. Secrets (a PagerDuty routing key, a Slack webhook URL)
    are named, never written here: `routing_key_env` / `routing_key_file`, `url_env`."""

    kind: Literal["pagerduty", "alertmanager", "slack", "generic"]
    url: Url | None = None
    """PagerDuty: the Events API v2 endpoint (default: PagerDuty's own); Alertmanager: its
    base URL (alerts go to `/api/v2/alerts`); Slack and generic: the webhook."""
    url_env: str | None = None
    """The environment variable holding the webhook URL instead (a Slack URL is a secret)."""
    routing_key_env: str | None = None
    routing_key_file: Path | None = None

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.url and self.url_env:
            raise ValueError("give url or url_env, not both")
        if self.kind == "pagerduty":
            if (self.routing_key_env is None) == (self.routing_key_file is None):
                raise ValueError(
                    "a pagerduty destination needs routing_key_env or routing_key_file"
                )
        elif self.routing_key_env or self.routing_key_file:
            raise ValueError(f"a {self.kind} destination takes no routing key")
        elif not (self.url or self.url_env):
            raise ValueError(f"a {self.kind} destination needs url or url_env")
        return self


class Team(Strict):
    destinations: list[Destination] = []
    severity: dict[str, Severity] = {}
    """Severity per check id (`latency: warning`); a critical check (a 2xx that became a
    5xx) is always critical, any other check `error` unless named here."""


class OwnerRule(Strict):
    """`match` is a glob over `METHOD /route/template` (`GET /users/*`, `* /search*`)."""

    match: str
    team: TeamName


class Incidents(Strict):
    """Who owns which routes, and how an incident opens and resolves (see the README)."""

    owners: list[OwnerRule] = []
    """CODEOWNERS semantics: the last rule that matches a route names its team."""
    default_owner: TeamName | None = None
    """The team of routes no rule matches (and of the run-wide checks)."""
    teams: dict[TeamName, Team] = {}
    window: Duration = 600.0
    """Incidents are judged on the exchanges of the last `window` (the whole run while it is
    shorter), so a route that is healthy again can be seen to be."""
    resolve_after: Annotated[int, Field(ge=1)] = 3
    """Consecutive PASS judgements of the window that resolve an incident."""
    resend: Duration = 60.0
    """How often a firing alert is posted to Alertmanager again (it expires it otherwise)."""
    poll_silences: Duration = 15.0
    """How often Alertmanager is asked for silences while an incident is open (an ack)."""
    pagerduty_webhook_secret_env: str | None = None
    """The environment variable holding the signing secret of the PagerDuty webhook
    subscription that posts to `/hooks/pagerduty` (its signature then replaces the token)."""
    external_url: Url | None = None
    """The dashboard's address as people reach it, for links (default: control.listen)."""

    @model_validator(mode="after")
    def _teams_known(self) -> Self:
        named = [r.team for r in self.owners] + [self.default_owner or ""]
        unknown = sorted({t for t in named if t and t not in self.teams})
        if unknown:
            raise ValueError(f"owner team {unknown[0]!r} is not in incidents.teams")
        return self


def check_matcher(value: str) -> str:
    """A cohort matcher: `header:NAME=VALUE`, `cookie:NAME=VALUE` or `client:CIDR`."""
    kind, sep, rest = value.partition(":")
    if sep and kind == "client":
        try:
            ipaddress.ip_network(rest, strict=False)
        except ValueError:
            raise ValueError(f"{value!r}: {rest!r} is no address or network") from None
        return value
    name, eq, _ = rest.partition("=")
    if not sep or kind not in ("header", "cookie") or not name or not eq:
        raise ValueError(
            f"{value!r} is not header:NAME=VALUE, cookie:NAME=VALUE or client:ADDRESS/BITS"
        )
    return value


class Gate(Strict):
    """What a stage waits for before the verdict may promote it: pairs compared in the stage
    and time spent in it; `max_duration` bounds how long an INCONCLUSIVE verdict extends it
    (default: four times `min_duration`)."""

    min_pairs: Annotated[int, Field(ge=0)] = 100
    min_duration: Duration = 60.0
    max_duration: Duration | None = None

    @property
    def longest(self) -> float:
        return self.max_duration if self.max_duration is not None else 4 * self.min_duration


class Cohort(Gate):
    """The users a cohort stage serves from the candidate: any matcher that matches."""

    match: list[Annotated[str, AfterValidator(check_matcher)]] = Field(min_length=1)


class Percent(Gate):
    """A sticky share of everyone, in per cent."""

    share: Annotated[float, Field(gt=0.0, le=100.0)]


def _percent(value: Any) -> Any:
    """`percent: 5` is `percent: {share: 5}`."""
    return {"share": value} if isinstance(value, int | float) else value


class Stage(Strict):
    """One step of a release: exactly one of `shadow`, `cohort`, `percent`."""

    shadow: Gate | None = None
    cohort: Cohort | None = None
    percent: Annotated[Percent | None, BeforeValidator(_percent)] = None

    @model_validator(mode="after")
    def _one(self) -> Self:
        if sum(x is not None for x in (self.shadow, self.cohort, self.percent)) != 1:
            raise ValueError("a stage is exactly one of shadow, cohort or percent")
        return self

    @property
    def kind(self) -> Literal["shadow", "cohort", "percent"]:
        return "shadow" if self.shadow else "cohort" if self.cohort else "percent"

    @property
    def gate(self) -> Gate:
        gate = self.shadow or self.cohort or self.percent
        assert gate is not None
        return gate

    def name(self) -> str:
        """As the events, the dashboard and `ctl release status` say it."""
        if self.percent:
            return f"percent {self.percent.share:g} %"
        return self.kind


class Release(Strict):
    """The release plan: the stages from shadow to everyone, each gated by the verdict
    (see the README's "Releasing")."""

    candidate: Url | None = None
    """The new version's base URL (default: the shadow)."""
    sticky_key: StickyKey = None
    """Where a user's key is: the same key is served by the same side for the whole release;
    a request without one is bucketed at random."""
    stages: list[Stage] = Field(min_length=1)
    promote: Literal["auto", "manual"] = "auto"
    on_fail: Literal["rollback", "hold"] = "rollback"
    on_inconclusive: Literal["extend", "hold"] = "extend"
    writes: list[str] = []
    """Globs over `METHOD /path` of the unsafe requests the candidate may serve (never
    retried); every other unsafe request is served by the primary."""
    timeout: Duration = 2.0
    """The longest the candidate may take on a safe request before the primary serves it."""
    max_body: Size = ByteSize(16 * 1024 * 1024)
    """The largest answer the candidate serves to a safe request (the proxy holds it whole);
    a larger one is served by the primary (`fallback.too_large`, no evidence against it)."""
    poll: Duration = 0.5
    """How often each proxy reads the release's state from the store (a fleet agrees
    within it)."""

    @model_validator(mode="after")
    def _growing(self) -> Self:
        shares = [s.percent.share for s in self.stages if s.percent]
        if shares != sorted(shares):
            raise ValueError("percent stages must not shrink (a user served once stays)")
        return self


class Config(Strict):
    run: str = "default"
    primary: Url | None = None
    shadow: Url
    secondary: Url | None = None
    listen: Annotated[str, BeforeValidator(parse_listen)] = "127.0.0.1:8080"
    store: str = "shadowdiff.db"
    storage: Storage = Storage()
    max_unwritten: Size = ByteSize(256 * 1024 * 1024)
    """Bytes of exchanges the worker holds while the store refuses writes (bodies dominate);
    beyond, the oldest are dropped and counted as `dropped.store`."""
    log_interval: Duration = 10.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    sampling: Sampling = Sampling()
    mirror: Mirror = Mirror()
    latency: Annotated[Latency, AfterValidator(check_reference)] = Latency()
    compare: Compare = Compare()
    routes: Routes = Routes()
    noise: Noise = Noise()
    judge: Judge = Judge()
    redact: Redact = Redact()
    control: Control = Control()
    alerts: Alerts = Alerts()
    incidents: Incidents = Incidents()
    release: Release | None = None

    @model_validator(mode="after")
    def _servable(self) -> Self:
        serving = self.release and any(s.kind != "shadow" for s in self.release.stages)
        if serving and not self.primary:
            raise ValueError(
                "release: serving the candidate needs the primary's URL (reverse mode, or "
                "`primary`), which gets the copies of what the candidate serves"
            )
        return self

    def candidate(self) -> str:
        """The new version's base URL: the release's candidate, or the shadow."""
        return (self.release.candidate if self.release else None) or self.shadow

    @field_validator("run")
    @classmethod
    def _run(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("run name must not be empty")
        return value


def _location(loc: tuple[int | str, ...]) -> str:
    """`sampling.routes[0].rate` from pydantic's location tuple."""
    out = ""
    for part in loc:
        name = str(part) if str(part).isprintable() else repr(part)  # one line, whatever the key
        out += f"[{name}]" if isinstance(part, int) else (f".{name}" if out else name)
    return out


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The schema model that holds the key at `loc`, to suggest the closest valid name."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        inner = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if inner is None:
            return None
        model = inner
    return model


def _one_line(error: ValidationError, source: str, flags: dict[str, str]) -> str:
    first = error.errors()[0]
    loc = tuple(first["loc"])
    key = _location(loc)
    where = flags.get(key, f"{source}: {key}" if key else source)
    if first["type"] == "extra_forbidden":
        model = _model_at(loc)
        names = list(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (valid: {', '.join(names)})"
        return f"{where}: unknown option{hint}"
    if first["type"] == "missing":
        return f"{where}: required option is missing"
    message = first["msg"].removeprefix("Value error, ")
    if "input" in first and first["type"] in (
        "less_than_equal",
        "greater_than_equal",
        "finite_number",
    ):
        message += f" (got {first['input']!r})"
    return f"{where}: {message}"


MAX_CONFIG_BYTES = 16 * 1024 * 1024
"""Longest config file read: a real one is a few kilobytes; `--config /dev/zero` must not
fill the memory."""


def _read_yaml(path: str | Path) -> Any:
    """The YAML document in the file at `path`; anything that keeps it from being read or
    parsed is a one-line ConfigError, never a traceback."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror or e}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: cannot read config: larger than 16 MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: cannot read config: not UTF-8 text (byte 0x{data[e.start]:02x}"
            f" at offset {e.start})"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: invalid YAML{at}: {problem}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    except ValueError as e:  # a value its constructors refuse: 2020-13-01, a 5,000-digit int
        reason = str(e).partition(";")[0]
        raise ConfigError(f"{path}: invalid YAML: cannot read a value ({reason})") from None


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
    *,
    names: Mapping[str, str] | None = None,
) -> Config:
    """The validated config from `path` (or `base`) with dotted-key `overrides` on top.

    `names` says what the caller calls an override key (the CLI: `sampling.rate` is
    `--sample`), so that a bad override is named as the user typed it.
    """
    raw: dict[str, Any] = copy.deepcopy(base) if base else {}
    source = str(path) if path else "config"
    if path is not None:
        loaded = _read_yaml(path)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of options")
        raw = loaded
    flags: dict[str, str] = {}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[leaf] = value
        if names and key in names:
            flags[key] = names[key]
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_one_line(e, source, flags)) from None
