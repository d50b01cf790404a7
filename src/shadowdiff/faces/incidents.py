"""Incidents: a route's check that turns FAIL, paged to the team that owns the route, until
it resolves; and the moments of the response (detected, acknowledged, mitigated, resolved).

- **Owners**: CODEOWNERS semantics over `METHOD /route/template` globs, the last matching
  rule wins, `default_owner` for the rest. A team without destinations (or no team) falls
  back to `alerts.webhooks`.
- **One incident per (run, route, check)** at a time, with a stable dedup key: judged on the
  window of the last `incidents.window` (`judge.window`), it opens at the first FAIL, stays
  one incident however the route flaps (a FAIL after PASSes is an update of it), and
  resolves after `resolve_after` PASS judgements with no FAIL between (INCONCLUSIVE, too
  few exchanges to tell, counts for neither), when every proxy of the run stops mirroring
  (paused or dialled to 0: the mitigation), or when the last one stops: its resolution
  says which. A trigger no destination took is sent again every `resend`.
- **Fleet-safe**: the store holds the incidents, one open per key (a unique index), so of
  several proxies judging the same run one opens it and pages, one resolves it; and each
  proxy's heartbeat (`Store.heartbeat`), so that a mitigation is the whole fleet's.

Everything here but `owner` runs in the live verdict's thread, where the store is read; it
returns the alerts to fire, which the loop sends.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from shadowdiff.config import Config
from shadowdiff.faces.alerts import Alert
from shadowdiff.faces.destinations import labels
from shadowdiff.model import Incident
from shadowdiff.store import Store

FAIL, PASS = "FAIL", "PASS"  # the judge's words, without loading the judge (scipy) here
NO_TEAM = ""
"""The team of an incident no rule and no default owner claims: `alerts.webhooks` get it."""


def owner(cfg: Config, route: str) -> str:
    team = cfg.incidents.default_owner or NO_TEAM
    for rule in cfg.incidents.owners:
        if fnmatch.fnmatchcase(route, rule.match):
            team = rule.team
    return team


def dedup_key(run: str, route: str, check: str) -> str:
    """Stable for (run, route, check): what PagerDuty and Alertmanager group by."""
    return hashlib.sha1(f"{run}\n{route}\n{check}".encode(), usedforsecurity=False).hexdigest()


def silenced(incident: Incident, run: str, silence: Any) -> bool:
    """Whether an Alertmanager silence (its v2 API's JSON) is active and matches the labels
    of the incident's alert."""
    if not isinstance(silence, dict) or (silence.get("status") or {}).get("state") != "active":
        return False
    matchers = silence.get("matchers")
    if not isinstance(matchers, list) or not matchers:
        return False
    have = labels(incident, run)
    for m in matchers:
        if not isinstance(m, dict) or not isinstance(m.get("value"), str):
            return False
        value = have.get(str(m.get("name")), "")
        matched = _regex(m["value"], value) if m.get("isRegex") else value == m["value"]
        if matched != m.get("isEqual", True):
            return False
    return True


def _regex(pattern: str, value: str) -> bool:
    """An Alertmanager regex matcher (anchored); a pattern that does not compile matches
    nothing."""
    try:
        return re.fullmatch(pattern, value) is not None
    except re.error:
        return False


@dataclass(frozen=True)
class Fleet:
    """The run's proxies as the store has heard from them lately: whether every one of them
    mirrors nothing (paused or dialled to 0), since when and why (the last to stop)."""

    mitigated: bool
    since: float = 0.0
    why: str = ""


def fleet(proxies: list[tuple[str, float | None, str | None]]) -> Fleet:
    """From `Store.proxies`: mitigated when every proxy heard from has stopped mirroring."""
    stops = [(at, why or "") for _, at, why in proxies if at is not None]
    if not proxies or len(stops) < len(proxies):
        return Fleet(False)
    at, why = max(stops)
    return Fleet(True, at, why)


class Incidents:
    """One worker's view of the run's incidents; the store is the truth a fleet shares."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.run = cfg.run
        listen = cfg.control.listen
        self.base = cfg.incidents.external_url or (f"http://{listen}" if listen else None)
        """Where people reach the dashboard, for the links of a page."""
        self.passes: dict[tuple[str, int], int] = {}
        """PASS judgements of an open incident since its last FAIL."""
        self.refreshed: dict[tuple[str, int], float] = {}
        """When an open incident was last posted (triggered, updated or refreshed)."""

    def judged(
        self, store: Store, checks: Iterable[Any], since: float, now: float, routes: Iterable[str]
    ) -> list[Alert]:
        """The window's checks (from `since` to `now`) applied to the run's incidents;
        `routes`: the run's routes (an open incident of a route merged into another since is
        resolved)."""
        open_ = {i.key: i for i in store.incidents(self.run, open_only=True)}
        known = set(routes)  # an incident opened since the reading: asked again
        gone = [
            i
            for i in open_.values()
            if i.route not in known and not store.routes(self.run, i.route)
        ]
        alerts = self._resolve(store, gone, now, "its route was merged into another")
        for c in checks:
            if c.route == "*":
                continue
            key = dedup_key(self.run, c.route, c.id)
            incident = open_.get(key)
            if c.result == FAIL and incident is None:
                incident = self._open(store, c, key, since, now)
                if incident is not None:
                    alerts.append(self._alert(incident, "trigger", c))
            elif c.result == FAIL and incident is not None:
                seq = (key, incident.seq)
                if self.passes.get(seq, 0):
                    alerts.append(self._alert(incident, "update", c))
                self.passes[seq] = 0
            elif c.result == PASS and incident is not None:
                seq = (key, incident.seq)
                self.passes[seq] = self.passes.get(seq, 0) + 1
                if self.passes[seq] >= self.cfg.incidents.resolve_after:
                    why = f"PASS for {self.passes[seq]} judgements of the last {_window(self.cfg)}"
                    alerts += self._resolve(store, [incident], now, why)
        sent = {(a.incident.key, a.incident.seq) for a in alerts if a.incident is not None}
        for i in store.incidents(self.run, open_only=True):
            seq = (i.key, i.seq)
            if seq in sent or now - self.refreshed.get(seq, i.opened) < self.cfg.incidents.resend:
                continue
            # never paged (every delivery failed): page again; else keep Alertmanager's alive
            alerts.append(self._alert(i, "trigger" if i.alerted is None else "refresh"))
        for alert in alerts:
            if alert.incident is not None and alert.action != "resolve":
                self.refreshed[(alert.incident.key, alert.incident.seq)] = now
        still = {(i.key, i.seq) for i in store.incidents(self.run, open_only=True)}
        for kept in (self.passes, self.refreshed):  # those another proxy resolved, forgotten
            for seq in set(kept) - still:
                del kept[seq]
        return alerts

    def _open(self, store: Store, c: Any, key: str, since: float, now: float) -> Incident | None:
        team = owner(self.cfg, c.route)
        spec = self.cfg.incidents.teams.get(team)
        severity = "critical" if c.critical else (spec.severity if spec else {}).get(c.id, "error")
        started = store.first_bad(self.run, c.route, since) or now
        summary = f"{c.route} is FAIL on {c.id}: {c.detail}"
        return store.open_incident(
            Incident(self.run, key, 0, c.route, c.id, team, severity, summary, started, now)
        )

    def _alert(self, incident: Incident, action: str, c: Any = None) -> Alert:
        details: dict[str, Any] = {"route": incident.route, "check": incident.check}
        if c is not None:
            details |= {
                "value": c.value,
                "threshold": c.threshold,
                "ci": list(c.ci) if c.ci else None,
                "n": c.n,
                "detail": c.detail,
            }
        details["team"] = incident.team
        what = f"shadowdiff run {self.run}: {incident.route}"
        if action == "resolve":
            text = f"{what} {incident.check} resolved ({incident.resolved_why})"
        elif action == "acknowledge":
            text = f"{what} {incident.check} acknowledged by {incident.acked_by}"
        else:
            text = f"{what} is FAIL on {incident.check}: {c.detail if c else incident.summary}"
        return Alert(
            "route_recovered" if action == "resolve" else "route_fail",
            incident.route,
            text,
            details,
            incident,
            action,
            links=self._links(incident),
            lasts=3 * self.cfg.incidents.resend,
        )

    def _links(self, incident: Incident) -> tuple[tuple[str, str], ...]:
        if self.base is None:
            return ()
        base = self.base.rstrip("/")
        route = quote(incident.route, safe="")
        return ((f"{base}/", "dashboard"), (f"{base}/verdict?route={route}", "the route's verdict"))

    def _resolve(
        self, store: Store, incidents: Iterable[Incident], now: float, why: str
    ) -> list[Alert]:
        alerts = []
        for i in incidents:
            if store.update_incident(self.run, i.key, i.seq, "resolved", now, why):
                i.resolved, i.resolved_why = now, why
                alerts.append(self._alert(i, "resolve"))
            self.passes.pop((i.key, i.seq), None)
            self.refreshed.pop((i.key, i.seq), None)
        return alerts

    def ack(
        self, store: Store, key: str, actor: str, now: float, page: bool
    ) -> tuple[Incident | None, list[Alert]]:
        """Acknowledges the open incident whose dedup key is or starts with `key`; `page`:
        tell PagerDuty too (not when the ack came from it)."""
        found = [i for i in store.incidents(self.run, open_only=True) if i.key.startswith(key)]
        if len(found) != 1 or len(key) < 6:
            return None, []
        incident = found[0]
        if not store.update_incident(self.run, incident.key, incident.seq, "acked", now, actor):
            return incident, []
        incident.acked, incident.acked_by = now, actor
        return incident, [self._alert(incident, "acknowledge")] if page else []

    def mitigated(self, store: Store, state: Fleet) -> list[Alert]:
        """Every proxy of the run mirrors nothing (paused, dialled to 0): the open incidents
        are mitigated then, and resolved, since no more evidence comes."""
        if not state.mitigated:
            return []
        open_ = store.incidents(self.run, open_only=True)
        for i in open_:
            store.update_incident(self.run, i.key, i.seq, "mitigated", state.since, state.why)
        return self._resolve(store, open_, state.since, f"mitigated: {state.why}")

    def rolled_back(self, store: Store, at: float, why: str) -> None:
        """The release was rolled back: the users no longer meet the candidate, so its open
        incidents are mitigated then; they resolve as any other (the shadow is still judged)."""
        for i in store.incidents(self.run, open_only=True):
            store.update_incident(self.run, i.key, i.seq, "mitigated", at, why)

    def ended(self, store: Store, now: float) -> list[Alert]:
        """The last proxy of the run stops: its open incidents resolve."""
        return self._resolve(store, store.incidents(self.run, open_only=True), now, "the run ended")

    def sent(self, store: Store, alert: Alert, at: float) -> None:
        """A trigger went through to a destination: the incident was detected then."""
        i = alert.incident
        if i is not None and alert.action == "trigger":
            store.update_incident(self.run, i.key, i.seq, "alerted", at)


def _window(cfg: Config) -> str:
    seconds = cfg.incidents.window
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"
