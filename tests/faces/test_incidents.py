"""Incidents over a real store: one per (run, route, check) however the route flaps, resolved
after K PASS judgements, owned by the last matching rule, shared by a fleet (one trigger,
one resolve), acknowledged by key prefix, resolved by a mitigation; Alertmanager silences
matched as its API gives them; and the judge's window as the difference of two readings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import factories
import pytest
from factories import outcome, snapshot

from shadowdiff.config import Config, load_config
from shadowdiff.faces.incidents import Fleet, Incidents, dedup_key, fleet, owner, silenced
from shadowdiff.judge.checks import Check
from shadowdiff.judge.window import Readings, reading
from shadowdiff.store import SQLiteStore
from shadowdiff.worker.recorder import Recorder

ROUTE = "GET /users/{id}"
TEAMS = {
    "team-a": {"destinations": [{"kind": "generic", "url": "http://127.0.0.1:9/a"}]},
    "team-b": {"destinations": [{"kind": "generic", "url": "http://127.0.0.1:9/b"}]},
    "platform": {"severity": {"latency": "warning"}},
}


def config(tmp_path: Path, **extra: Any) -> Config:
    return load_config(
        None,
        {
            "run": "r1",
            "shadow": "http://127.0.0.1:9",
            "store": str(tmp_path / "i.db"),
            "incidents.teams": TEAMS,
            "incidents.default_owner": "platform",
            "incidents.owners": [
                {"match": "GET /users*", "team": "team-b"},
                {"match": "* /users/*", "team": "team-a"},  # the last match wins
            ],
            "incidents.resolve_after": 2,
            **extra,
        },
    )


def check(result: str, route: str = ROUTE, check_id: str = "divergence_rate") -> Check:
    return Check(check_id, route, result, 0.4, 0.0, 100, (0.3, 0.5), detail="40 of 100 diverge")


def run(incidents: Incidents, store: SQLiteStore, *results: str, at: float = 100.0) -> list[str]:
    """The actions of the alerts that judging `results` in turn gives."""
    actions = []
    for n, result in enumerate(results):
        alerts = incidents.judged(store, [check(result)], 0.0, at + n, [ROUTE])
        actions += [a.action for a in alerts]
    return actions


def test_owners_last_match_wins_with_a_default(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert owner(cfg, "GET /users/{id}") == "team-a"
    assert owner(cfg, "GET /users") == "team-b"
    assert owner(cfg, "POST /orders") == "platform"
    bare = load_config(None, {"shadow": "http://127.0.0.1:9"})
    assert owner(bare, "GET /x") == ""  # no team: alerts.webhooks get it


def test_an_unknown_owner_team_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="owner team 'nobody' is not in incidents.teams"):
        config(tmp_path, **{"incidents.default_owner": "nobody"})


def test_one_incident_however_it_flaps_resolved_after_k_passes(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    with SQLiteStore(cfg.store) as store:
        incidents = Incidents(cfg)
        # FAIL, still FAIL, a PASS then FAIL again (an update), INCONCLUSIVE counts for
        # neither, then two PASSes resolve it
        flaps = ("FAIL", "FAIL", "PASS", "FAIL", "PASS", "INCONCLUSIVE", "FAIL", "PASS", "PASS")
        assert run(incidents, store, *flaps) == ["trigger", "update", "update", "resolve"]
        [done] = store.incidents("r1")
        assert done.key == dedup_key("r1", ROUTE, "divergence_rate") and done.seq == 1
        assert done.team == "team-a" and done.severity == "error"
        assert done.resolved == 108.0
        assert done.resolved_why == "PASS for 2 judgements of the last 10 min"
        # failing again later is a new incident of the same key
        assert run(incidents, store, "FAIL", at=200.0) == ["trigger"]
        assert [i.seq for i in store.incidents("r1")] == [1, 2]


def test_a_critical_check_pages_critical_and_a_team_names_its_severities(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    with SQLiteStore(cfg.store) as store:
        incidents = Incidents(cfg)
        critical = Check("status_5xx", "GET /a", "FAIL", 3, 0, 50, None, critical=True)
        latency = Check("latency", "GET /b", "FAIL", 1.3, 1.1, 500, (1.2, 1.4))
        alerts = incidents.judged(store, [critical, latency], 0.0, 1.0, ["GET /a", "GET /b"])
        assert [(a.incident.severity, a.incident.team) for a in alerts if a.incident] == [
            ("critical", "platform"),
            ("warning", "platform"),
        ]
        assert alerts[1].details["ci"] == [1.2, 1.4] and alerts[1].details["threshold"] == 1.1


def test_a_fleet_opens_and_resolves_once(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    with SQLiteStore(cfg.store) as one, SQLiteStore(cfg.store) as two:
        a, b = Incidents(cfg), Incidents(cfg)
        assert run(a, one, "FAIL") == ["trigger"]
        assert run(b, two, "FAIL") == []  # the other proxy's incident: no second page
        assert run(a, one, "PASS") == [] and run(b, two, "PASS") == []
        resolved = run(a, one, "PASS") + run(b, two, "PASS")
        assert resolved == ["resolve"]
        assert len(one.incidents("r1")) == 1


def test_ack_by_prefix_then_mitigation_resolves_every_open_one(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    with SQLiteStore(cfg.store) as store:
        incidents = Incidents(cfg)
        incidents.judged(
            store, [check("FAIL"), check("FAIL", "GET /b")], 0.0, 10.0, [ROUTE, "GET /b"]
        )
        key = dedup_key("r1", ROUTE, "divergence_rate")
        assert incidents.ack(store, key[:5], "me", 11.0, page=True) == (None, [])  # too short
        acked, alerts = incidents.ack(store, key[:8], "me", 11.0, page=True)
        assert acked is not None and acked.acked == 11.0 and acked.acked_by == "me"
        assert [a.action for a in alerts] == ["acknowledge"]
        assert incidents.ack(store, key, "me again", 12.0, page=False)[1] == []  # once
        assert (
            incidents.mitigated(store, fleet([("a", 13.0, "paused by ops"), ("b", None, None)]))
            == []
        )
        resolves = incidents.mitigated(store, Fleet(True, 13.0, "mirroring paused by ops"))
        assert [a.action for a in resolves] == ["resolve", "resolve"]
        for i in store.incidents("r1"):
            assert (i.mitigated, i.resolved) == (13.0, 13.0)
            assert i.resolved_why == "mitigated: mirroring paused by ops"
        [first] = [i for i in store.incidents("r1") if i.key == key]
        assert first.durations()["acknowledge"] is None  # never paged: no time to acknowledge


def test_a_rollback_mitigates_the_open_incidents_without_resolving_them(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    with SQLiteStore(cfg.store) as store:
        incidents = Incidents(cfg)
        incidents.judged(store, [check("FAIL")], 0.0, 10.0, [ROUTE])
        incidents.rolled_back(store, 12.0, "release rolled back by auto")
        incidents.rolled_back(store, 13.0, "again")  # the first moment stays
        [i] = store.incidents("r1")
        assert (i.mitigated, i.mitigated_by, i.resolved) == (
            12.0,
            "release rolled back by auto",
            None,
        )
        assert i.durations()["mitigate"] == 12.0 - i.started


def test_the_fleet_is_mitigated_when_every_proxy_has_stopped() -> None:
    assert fleet([]) == Fleet(False)
    assert fleet([("a", 5.0, "paused by x"), ("b", None, None)]) == Fleet(False)
    assert fleet([("a", 5.0, "paused by x"), ("b", 7.0, "rate 0 by y")]) == Fleet(
        True, 7.0, "rate 0 by y"
    )


def test_a_trigger_no_destination_took_is_sent_again_and_a_merged_route_resolves(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path, **{"incidents.resend": "10s"})
    with SQLiteStore(cfg.store) as store:
        incidents = Incidents(cfg)
        assert run(incidents, store, "FAIL", at=100.0) == ["trigger"]
        assert run(incidents, store, "FAIL", "INCONCLUSIVE", at=105.0) == []
        assert run(incidents, store, "INCONCLUSIVE", at=111.0) == ["trigger"]  # never alerted
        [i] = store.incidents("r1")
        incidents.sent(store, incidents._alert(i, "trigger"), 112.0)
        assert run(incidents, store, "PASS", at=122.0) == ["refresh"]  # Alertmanager's, alive
        gone = incidents.judged(store, [], 0.0, 123.0, ["GET /users/{name}"])
        assert [a.action for a in gone] == ["resolve"]
        assert store.incidents("r1")[0].resolved_why == "its route was merged into another"
        assert store.incidents("r1")[0].durations()["detect"] == 112.0 - i.started


def test_alertmanager_silences_match_the_alert_labels(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    with SQLiteStore(cfg.store) as store:
        [alert] = Incidents(cfg).judged(store, [check("FAIL")], 0.0, 1.0, [ROUTE])
    assert alert.incident is not None
    i = alert.incident

    def silence(*matchers: dict[str, Any], state: str = "active") -> dict[str, Any]:
        return {"status": {"state": state}, "matchers": list(matchers), "createdBy": "sre"}

    team = {"name": "team", "value": "team-a", "isRegex": False, "isEqual": True}
    assert silenced(i, "r1", silence(team))
    assert not silenced(i, "r1", silence(team, state="expired"))
    assert silenced(i, "r1", silence({"name": "route", "value": "GET /users/.*", "isRegex": True}))
    assert not silenced(i, "r1", silence({**team, "isEqual": False}))
    assert not silenced(i, "r1", silence({"name": "route", "value": "(", "isRegex": True}))
    assert not silenced(i, "r1", silence())  # no matcher: not ours to claim
    assert not silenced(i, "r1", "garbage")


def test_the_window_is_what_was_written_since(tmp_path: Path) -> None:
    """Two batches, the second divergent: the window after the first holds only the second,
    and equals the aggregates of a store that got only the second."""
    cfg = config(tmp_path, **{"judge.min_pairs": 1})
    only = config(tmp_path, store=str(tmp_path / "only.db"))

    def batch(start: int, by: str) -> list[Any]:
        return [
            factories.exchange(
                snapshot(f"f{i}", path=f"/users/{i}", timestamp=float(i)),
                outcome({"by": "p"}),
                outcome({"by": by}),
            )
            for i in range(start, start + 20)
        ]

    readings = Readings(600.0)
    with SQLiteStore(cfg.store) as store, SQLiteStore(only.store) as alone:
        recorder = Recorder(cfg, "i1", store)
        recorder.record(batch(0, "p"), {})
        readings.window(store, reading(store, "r1", 19.5))
        recorder.record(batch(100, "s"), {})
        window = readings.window(store, reading(store, "r1", 200.0))
        Recorder(only, "i1", alone).record(batch(100, "s"), {})
        assert window.routes("r1") == alone.routes("r1")
        assert window.statuses("r1") == alone.statuses("r1")
        assert window.path_counts("r1") == alone.path_counts("r1")
        assert window.signatures("r1") == alone.signatures("r1")
        assert list(window.latency_sample("r1")) == list(alone.latency_sample("r1"))
