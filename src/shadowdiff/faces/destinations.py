"""An alert, and the wire formats of its destinations: Slack-compatible and generic
webhooks, PagerDuty's Events API v2 (alert and change events) and Alertmanager's v2 push
API.

Pure: an alert in, the URL and JSON to POST out. Text that came from traffic (a route, a
value in a detail) is made inert for Slack, and cut to each API's limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shadowdiff.model import Incident

PD_SUMMARY = 1024
"""PagerDuty's longest `payload.summary`."""
SLACK_TEXT = 3000
"""Slack's longest section text."""
ALERTNAME = "ShadowdiffCheckFailed"
ICONS = {"trigger": "🔴", "update": "🔴", "resolve": "✅"}


@dataclass(frozen=True, slots=True)
class Alert:
    """One thing that happened; `key` is what debouncing is per (a route, a target, "mirror").

    An incident's messages (`incident` set; `action` trigger, update, resolve, acknowledge or
    refresh) go to its team's destinations and are never debounced: the incident is the
    deduplication. Other events go to `alerts.webhooks` (if `message`), and, if `change`,
    to every PagerDuty destination as a change event."""

    event: str
    key: str
    text: str
    details: dict[str, Any]
    incident: Incident | None = None
    action: str = ""
    change: bool = False
    message: bool = True
    links: tuple[tuple[str, str], ...] = ()
    """(href, text) of the report, the dashboard, the verdict."""
    lasts: float = 0.0
    """Seconds a firing Alertmanager alert lasts unless posted again (`incidents.resend`
    times three)."""


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def slack_escape(text: str) -> str:
    """Live-traffic text made inert for Slack: one line, and no `<!channel>` or `<url|link>`."""
    line = " ".join(text.split())
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def payload(
    kind: str, url: str, routing_key: str | None, alert: Alert, run: str, at: float
) -> tuple[str, Any]:
    """Where to POST `alert` for a destination of `kind` at `url`, and what."""
    if kind == "pagerduty":
        return _pagerduty(url, routing_key, alert, run, at)
    if kind == "alertmanager":
        return url.rstrip("/") + "/api/v2/alerts", _alertmanager(alert, run, at)
    if kind == "slack":
        return url, _slack(alert, run)
    return url, _generic(alert, run, at)


def _slack(alert: Alert, run: str) -> dict[str, Any]:
    icon = ICONS.get(alert.action, "")
    text = slack_escape(f"{icon} {alert.text}" if icon else alert.text)[:SLACK_TEXT]
    context = f"run {slack_escape(run)} · event {slack_escape(alert.event)}"
    if alert.incident is not None:
        i = alert.incident
        context += f" · incident {i.key[:12]} · team {slack_escape(i.team)} · {i.severity}"
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        ],
    }


def _generic(alert: Alert, run: str, at: float) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "event": alert.event,
        "run": run,
        "key": alert.key,
        "text": alert.text,
        "details": alert.details,
        "at": _iso(at),
    }
    if alert.incident is not None:
        i = alert.incident
        doc["action"] = alert.action
        doc["incident"] = {
            "dedup_key": i.key,
            "seq": i.seq,
            "route": i.route,
            "check": i.check,
            "team": i.team,
            "severity": i.severity,
        }
    return doc


def _links(alert: Alert) -> list[dict[str, str]]:
    return [{"href": href, "text": text} for href, text in alert.links]


def _pagerduty(
    url: str, routing_key: str | None, alert: Alert, run: str, at: float
) -> tuple[str, dict[str, Any]]:
    summary = alert.text[:PD_SUMMARY]
    if alert.incident is None:  # a change event: shown beside the service's incidents
        change = url.replace("/v2/enqueue", "/v2/change/enqueue")
        return change, {
            "routing_key": routing_key,
            "payload": {
                "summary": summary,
                "source": f"shadowdiff run {run}",
                "timestamp": _iso(at),
                "custom_details": {"event": alert.event, **alert.details},
            },
            "links": _links(alert),
        }
    i = alert.incident
    action = {"update": "trigger"}.get(alert.action, alert.action)
    body: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": i.key,
        "client": "shadowdiff",
    }
    if action == "trigger":
        body["payload"] = {
            "summary": summary,
            "source": f"shadowdiff run {run}",
            "severity": i.severity,
            "timestamp": _iso(at),
            "component": i.route,
            "group": i.team,
            "class": i.check,
            "custom_details": alert.details,
        }
        body["links"] = _links(alert)
        if alert.links:
            body["client_url"] = alert.links[0][0]
    return url, body


def _alertmanager(alert: Alert, run: str, at: float) -> list[dict[str, Any]]:
    assert alert.incident is not None  # only incidents are routed to Alertmanager
    i = alert.incident
    ends = at if alert.action == "resolve" else at + alert.lasts
    return [
        {
            "labels": labels(i, run),
            "annotations": {"summary": alert.text, **{k: str(v) for k, v in alert.details.items()}},
            "startsAt": _iso(i.opened),
            "endsAt": _iso(ends),
            "generatorURL": alert.links[0][0] if alert.links else "",
        }
    ]


def labels(incident: Incident, run: str) -> dict[str, str]:
    """The labels of an incident's Alertmanager alert, which its silences match."""
    return {
        "alertname": ALERTNAME,
        "team": incident.team,
        "route": incident.route,
        "run": run,
        "check": incident.check,
        "severity": incident.severity,
        "dedup_key": incident.key,
    }
