"""What a run's store holds, gathered for the judge and laid out as the verdict document.

Reads only. The judge decides; the reports and the gate show what this module assembles:
the verdict document (the schema of `shadowdiff report --format json`) and the extras the
HTML report needs (latency samples, redacted example exchanges).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import orjson

from shadowdiff import __version__, jsonpath
from shadowdiff.compare import MASK, Redactor, bodies
from shadowdiff.config import Config, Redact
from shadowdiff.counts import LATENCY_REFERENCE, RECORDED_PRIMARY, by_reason, imbalance
from shadowdiff.judge.checks import (
    Check,
    JudgeConfig,
    RouteData,
    Verdict,
    Writes,
    baseline,
    judge,
)
from shadowdiff.judge.noise import RouteFindings, findings
from shadowdiff.judge.schema import (
    CheckRow,
    EventRow,
    Example,
    ExampleSide,
    Extras,
    IncidentRow,
    Percentiles,
    RouteRow,
    VerdictDocument,
)
from shadowdiff.model import Event, Exchange, Outcome
from shadowdiff.store import AggregateReads, Store

EXAMPLES_SHOWN = 5
BODY_SHOWN = 10_000
"""Characters of a body an example shows; the store keeps the whole (redacted) body."""


def config_sha256(cfg: Config) -> str:
    """The config's fingerprint, printed in every report, taken without its secrets: values
    under the default secret names (`control.token`) and the passwords and secret query values
    of URLs (`primary`, `shadow`, `secondary`, `store`, webhooks) are masked first, so a
    report gives nothing to test guesses against offline."""
    redactor = Redactor(Redact())
    doc = _without_url_secrets(redactor.json(cfg.model_dump(mode="json")), redactor)
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _without_url_secrets(value: Any, redactor: Redactor) -> Any:
    """Every URL in a config document without its userinfo password and secret query values;
    a string that looks like a URL but does not parse is masked whole."""
    if isinstance(value, dict):
        return {k: _without_url_secrets(v, redactor) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_url_secrets(v, redactor) for v in value]
    if not (isinstance(value, str) and "://" in value):
        return value
    try:
        url = urlsplit(value)
        password = url.password
    except ValueError:
        return MASK
    netloc = url.netloc
    if password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:{MASK}@{host}"
    return urlunsplit(url._replace(netloc=netloc, query=redactor.query(url.query)))


def _accepted(cfg: Config) -> Any:
    routes = frozenset(cfg.judge.accepted_routes)
    exact = frozenset(p for p in cfg.judge.accepted_paths if not p.startswith("body:$"))
    patterns = tuple(p[5:] for p in cfg.judge.accepted_paths if p.startswith("body:$"))

    def accepted(route: str, path: str) -> bool:
        if route in routes or path in exact:
            return True
        return path.startswith("body:$") and jsonpath.covered(path[5:], patterns)

    return accepted


def _column(rows: list[tuple[Any, ...]], index: int) -> np.ndarray:
    """One numeric column of a latency sample as floats, NaN where unknown (a failed side)."""
    return np.array([np.nan if r[index] is None else r[index] for r in rows], dtype=float)


def _percentiles(values: np.ndarray) -> Percentiles | None:
    values = values[np.isfinite(values)]
    if not values.size:
        return None
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99)}


def gather(
    store: AggregateReads,
    run: str,
    cfg: Config,
    only: str | None = None,
    reference: str | None = None,
) -> tuple[list[RouteFindings], list[RouteData], dict[str, dict[str, np.ndarray]]]:
    """Findings per route, the judge's inputs, and latency samples per route and side
    (of route `only`, if given: only its aggregates are read); `reference` timed the
    baselines. All of it comes from the aggregates (`store.aggregates`), never the rows:
    counts, paths and the status matrix exactly, the timings from each route's uniform
    sample."""
    totals = store.routes(run, only)
    found = findings(
        totals,
        store.path_counts(run, only),
        store.signatures(run, only),
        cfg.noise,
        _accepted(cfg),
        cfg.judge.confidence,
    )
    statuses = store.statuses(run, only)
    samples: dict[str, list[tuple[Any, ...]]] = {}
    for row in store.latency_sample(run, only):
        samples.setdefault(row[0], []).append(row[1:])
    data, latencies = [], {}
    for route in found:
        sample = samples.get(route.route, [])
        sampled, primary, shadow, secondary = (_column(sample, i) for i in range(4))
        has_secondary = route.with_secondary > 0
        latencies[route.route] = {"primary": primary, "shadow": shadow}
        if has_secondary:
            latencies[route.route]["secondary"] = secondary
        counted = totals[route.route]
        data.append(
            RouteData(
                route=route.route,
                pairs=route.exchanges,
                divergent=route.divergent,
                accepted=0,
                transitions=statuses.get(route.route, {}),
                primary_errors=counted["primary_errors"],
                shadow_errors=counted["shadow_errors"],
                primary_latency=primary,
                shadow_latency=shadow,
                secondary_latency=secondary if has_secondary else None,
                timestamps=sampled,
                reference=reference,
                population=route.exchanges,
            )
        )
    return found, data, latencies


def latency_note(counts: dict[str, int]) -> str:
    """Why the run's timings cannot be compared, if they cannot."""
    recorded = counts.get(RECORDED_PRIMARY, 0)
    if not recorded:
        return ""
    return (
        f"{recorded} exchanges replayed against the recorded primary responses: "
        "their latencies were measured elsewhere, so timings are not compared"
    )


_JUDGE_FIELDS = {f.name for f in dataclasses.fields(JudgeConfig)}


def judge_config(cfg: Config) -> JudgeConfig:
    """The judge's thresholds from the config's `judge` section (which also has
    `accepted_paths`, applied here when findings are gathered)."""
    values = cfg.judge.model_dump(include=_JUDGE_FIELDS)
    return JudgeConfig(**{**values, "accepted_routes": tuple(values["accepted_routes"])})


def _judged(
    reads: AggregateReads,
    counts: dict[str, int],
    run: str,
    cfg: Config,
    only: str | None,
    whole: bool = True,
) -> tuple[list[RouteFindings], list[RouteData], dict[str, dict[str, np.ndarray]], Verdict]:
    """`whole`: the run's own verdict, with its served writes (counted for the run alone)."""
    reference = "+".join(sorted(by_reason(counts, LATENCY_REFERENCE))) or None
    found, data, latencies = gather(reads, run, cfg, only, reference)
    writes = served_writes(counts) if whole and only is None else None
    return found, data, latencies, judge(data, judge_config(cfg), latency_note(counts), writes)


def served_writes(counts: dict[str, int]) -> Writes | None:
    """The writes a release served (None: the candidate served none)."""
    failed = {side: counts.get(f"writes.{side}.failed", 0) for side in ("candidate", "primary")}
    ok = {side: counts.get(f"writes.{side}.ok", 0) for side in ("candidate", "primary")}
    if not failed["candidate"] + ok["candidate"]:
        return None
    return Writes(
        failed["candidate"],
        failed["candidate"] + ok["candidate"],
        failed["primary"],
        failed["primary"] + ok["primary"],
    )


def window_verdict(store: Store, window: AggregateReads, run: str, cfg: Config) -> Verdict:
    """The verdict of the exchanges in `window` (a `judge.window.Window` of `store`)."""
    return _judged(window, store.counts(run), run, cfg, None, whole=False)[3]


def document(
    store: Store,
    run: str,
    cfg: Config,
    only: str | None = None,
    live: bool = False,
    extras: bool = True,
) -> tuple[VerdictDocument, Extras, Verdict]:
    """The verdict document, the report extras, and the verdict itself (of route `only`,
    if given: the judge then sees that route alone).

    `extras`: the examples and latency samples only the HTML report shows (the gate and the
    other reports go without: examples cost a read of their exchanges). `live`: for a run
    still going (/verdict): no extras, and no accounting, whose books only balance once every
    proxy has stopped.
    """
    counts = store.counts(run)
    found, data, latencies, verdict = _judged(store, counts, run, cfg, only)
    latency_checks = {c.route: c for c in verdict.checks if c.id == "latency"}
    routes: list[RouteRow] = []
    for route, inputs in zip(found, data, strict=True):
        check = latency_checks.get(route.route)
        sides = latencies[route.route]
        routes.append(
            {
                "route": route.route,
                "pairs": route.exchanges,
                "divergent": route.divergent,
                "divergence_rate": route.divergent / route.exchanges if route.exchanges else 0.0,
                "fields": [
                    {
                        "path": f.path,
                        "kind": f.kind,
                        "count": f.count,
                        "rate": f.count / route.exchanges if route.exchanges else 0.0,
                        "noise_count": f.noise_count,
                        "noise": f.noise,
                        "accepted": f.accepted,
                        "p_value": f.p_value,
                    }
                    for f in route.fields
                ],
                "noise_measured": route.noise_measured,
                "status_matrix": [
                    {"primary": p, "shadow": s, "count": n}
                    for (p, s), n in sorted(inputs.transitions.items())
                ],
                "latency": {
                    "primary": _percentiles(sides["primary"]),
                    "shadow": _percentiles(sides["shadow"]),
                    "secondary": _percentiles(sides["secondary"]) if "secondary" in sides else None,
                    "ratio": check.value if check else None,
                    "ci": list(check.ci) if check and check.ci else None,
                    "baseline": baseline(inputs),
                },
            }
        )
    doc: VerdictDocument = {
        "verdict": verdict.verdict,
        "checks": [_check_row(c) for c in verdict.checks],
        "routes": routes,
        "counts": {
            "seen": counts.get("seen", 0),
            "sampled": counts.get("sampled", 0),
            "recorded": counts.get("recorded", 0),
            "compared": counts.get("compared", 0),
            "matched": counts.get("matched", 0),
            "ignored": counts.get("ignored", 0),
            "divergent": sum(r.divergent for r in found),
            "dropped": by_reason(counts, "dropped"),
            "shadow_errors": by_reason(counts, "shadow_error"),
        },
        "accounting": []
        if live
        else [
            f"instance {instance}: {problem}"
            for instance, named in store.instance_counts(run).items()
            for problem in imbalance(named)
        ],
        "events": [_event_row(e) for e in store.events(run)],
        "incidents": [cast(IncidentRow, i.row()) for i in store.incidents(run)],
        "run": run,
        "config_sha256": config_sha256(cfg),
        "tool_version": __version__,
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if live or not extras:
        return doc, {}, verdict
    shown: Extras = {
        "latencies": {
            route: {
                side: [float(v) for v in values[np.isfinite(values)]]
                for side, values in sides.items()
            }
            for route, sides in latencies.items()
        },
        "examples": examples(store, run, found, Redactor(cfg.redact)),
    }
    return doc, shown, verdict


def _check_row(c: Check) -> CheckRow:
    return {
        "id": c.id,
        "route": c.route,
        "result": c.result,
        "value": c.value,
        "threshold": c.threshold,
        "n": c.n,
        "ci": list(c.ci) if c.ci else None,
        "critical": c.critical,
        "detail": c.detail,
        "needs": {"pairs": c.needs.pairs, "seconds": c.needs.seconds} if c.needs else None,
    }


def _event_row(e: Event) -> EventRow:
    return {"ts": e.ts, "kind": e.kind, "actor": e.actor, "old": e.old, "new": e.new}


def examples(
    store: Store, run: str, found: list[RouteFindings], redactor: Redactor
) -> dict[str, dict[str, list[Example]]]:
    """Up to EXAMPLES_SHOWN example exchanges per divergent (route, path), redacted again;
    paths as the examples are kept (list indexes as `[*]`), in the order of the fields."""
    out: dict[str, dict[str, list[Example]]] = {}
    for route in found:
        paths = dict.fromkeys(jsonpath.any_index(f.path) for f in route.fields if not f.noise)
        for path in paths:
            shown = shown_examples(store, run, route.route, path, redactor)
            if shown:
                out.setdefault(route.route, {})[path] = shown
    return out


def shown_examples(
    store: Store, run: str, route: str, path: str, redactor: Redactor
) -> list[Example]:
    """Up to EXAMPLES_SHOWN example exchanges of one (route, path), redacted again: those kept
    for the path with its list indexes as `[*]`, which every index shares."""
    kept = store.examples(run, route, jsonpath.any_index(path))
    return [_example(x, redactor) for x in kept[:EXAMPLES_SHOWN]]


def _text(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace")
    return (
        text
        if len(text) <= BODY_SHOWN
        else text[:BODY_SHOWN] + f"\n… ({len(text)} characters in all)"
    )


def _pretty(headers: list[tuple[bytes, bytes]], data: bytes, redactor: Redactor) -> str:
    headers, data = redactor.body(headers, data)
    parsed = bodies.read(headers, data)
    if parsed.kind == bodies.JSON:
        try:
            return _text(orjson.dumps(orjson.loads(parsed.data), option=orjson.OPT_INDENT_2))
        except (orjson.JSONDecodeError, orjson.JSONEncodeError):
            pass  # big ints, or deeper than the 254 levels orjson writes (it reads 1,024)
    return _text(parsed.data)


def _outcome(o: Outcome | None, redactor: Redactor) -> ExampleSide | None:
    if o is None:
        return None
    if o.error:
        return {"status": o.error, "headers": [], "body": ""}
    return {
        "status": o.status,
        "headers": [
            [n.decode("latin-1"), v.decode("latin-1")] for n, v in redactor.headers(o.headers)
        ],
        "body": _pretty(o.headers, o.body, redactor),
    }


def _example(x: Exchange, redactor: Redactor) -> Example:
    request = x.request
    return {
        "method": request.method,
        "path": request.path,
        "request_headers": [
            [n.decode("latin-1"), v.decode("latin-1")] for n, v in redactor.headers(request.headers)
        ],
        "request_body": _pretty(request.headers, request.body, redactor),
        "primary": _outcome(x.primary, redactor),
        "shadow": _outcome(x.shadow, redactor),
        "secondary": _outcome(x.secondary, redactor),
    }
