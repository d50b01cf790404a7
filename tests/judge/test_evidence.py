"""The evidence: the judge's thresholds come from the config, the verdict document's rows
carry every field of their records, hostile bodies are shown without raising, and each
document reads only what it needs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from factories import JSON, exchange, outcome, snapshot

from shadowdiff.compare import Redactor
from shadowdiff.config import Config, load_config
from shadowdiff.judge.checks import Check, JudgeConfig
from shadowdiff.judge.evidence import config_sha256, document, judge_config, shown_examples
from shadowdiff.judge.schema import CheckRow, EventRow
from shadowdiff.model import Divergence, Event, Outcome
from shadowdiff.store import SQLiteStore

SHADOW = {"shadow": "http://127.0.0.1:9"}


def test_judge_config_takes_every_threshold_from_the_config() -> None:
    assert judge_config(load_config(None, SHADOW)) == JudgeConfig()  # the same defaults
    cfg = load_config(
        None,
        {
            **SHADOW,
            "judge.allowed_divergence_rate": 0.01,
            "judge.accepted_routes": ["GET /a"],
            "judge.accepted_paths": ["body:$.x"],  # applied when gathering, not by the judge
            "judge.min_pairs": 7,
            "judge.latency_tolerance": 0.2,
            "judge.p99_tolerance": 0.5,
            "judge.p99_min_pairs": 400,
            "judge.error_rate_margin": 0.02,
            "judge.confidence": 0.99,
        },
    )
    assert judge_config(cfg) == JudgeConfig(0.01, ("GET /a",), 7, 0.2, 0.5, 400, 0.02, 0.99)


def test_config_sha256_hashes_no_secret() -> None:
    """Audit finding 19: the fingerprint printed in every report hashed `control.token`, so a
    short token could be guessed offline from a report."""

    def fingerprint(secret: str, host: str = "127.0.0.1") -> str:
        return config_sha256(
            load_config(
                None,
                {
                    "primary": f"http://svc:{secret}@{host}:8",
                    "shadow": f"http://svc:{secret}@{host}:9",
                    "secondary": f"https://:{secret}@{host}:10/v1",
                    "store": f"postgresql://sd:{secret}@{host}/sd?password={secret}&sslmode=on",
                    "control.token": secret,
                    "alerts.webhooks": [{"url": f"https://{host}/hook?token={secret}"}],
                },
            )
        )

    assert fingerprint("s3cret") == fingerprint("other-secret")
    assert fingerprint("s3cret") != fingerprint("s3cret", host="127.0.0.2")


def test_rows_carry_every_field_of_their_records() -> None:
    assert CheckRow.__required_keys__ == {f.name for f in dataclasses.fields(Check)}
    assert EventRow.__required_keys__ == {f.name for f in dataclasses.fields(Event)}


def config(tmp_path: Path) -> Config:
    return load_config(None, {**SHADOW, "store": str(tmp_path / "e.db"), "run": "r"})


def write(store: SQLiteStore, route: str, n: int, width: int = 1) -> None:
    """`n` exchanges of `route`, each diverging at `width` paths, the first kept as the
    example of `body:$.a`."""
    diffs = [Divergence(f"body:$.a{i or ''}", "changed", "1", "2") for i in range(width)]
    store.write(
        "r",
        "i",
        [exchange(snapshot(f"{ascii(route)} {i}"), route=route, diffs=diffs) for i in range(n)],
        {},
        examples=[(route, "body:$.a", 0, f"{ascii(route)} 0")],
    )


@pytest.mark.parametrize("depth", [255, 1024])
def test_bodies_too_deep_to_pretty_print_are_shown_as_they_came(tmp_path, depth):
    """Audit finding 5: orjson reads 1,024 levels but writes only 254, so one client's deep
    JSON body made the examples raise, and the gate, every report and /api/examples with
    them."""
    cfg = config(tmp_path)
    deep = b"[" * depth + b"]" * depth
    request = snapshot("f1", path="/u/1", headers=JSON, body=deep)
    x = exchange(request, Outcome(200, JSON, deep, 0.01), outcome({"by": "shadow"}), route="R")
    x.shadow_diffs = [Divergence("body:$", "type", "[]", "{}")]
    with SQLiteStore(cfg.store) as store:
        store.write("r", "i", [x], {}, examples=[("R", "body:$", 0, "f1")])
        [shown] = shown_examples(store, "r", "R", "body:$", Redactor(cfg.redact))
        assert shown["request_body"] == deep.decode()
        assert shown["primary"] and shown["primary"]["body"] == deep.decode()
        _, extras, _ = document(store, "r", cfg)
    assert extras["examples"] == {"R": {"body:$": [shown]}}


def test_examples_of_a_list_item_are_those_of_every_item(tmp_path):
    """The recorder keeps a list's examples under `[*]`: a field at one index finds them."""
    cfg = config(tmp_path)
    x = exchange(snapshot("f1"), route="R", diffs=[Divergence("body:$[7].a", "changed", "1", "2")])
    with SQLiteStore(cfg.store) as store:
        store.write("r", "i", [x], {}, examples=[("R", "body:$[*].a", 0, "f1")])
        [shown] = shown_examples(store, "r", "R", "body:$[7].a", Redactor(cfg.redact))
        _, extras, _ = document(store, "r", cfg)
    assert extras["examples"] == {"R": {"body:$[*].a": [shown]}}


def test_a_document_without_extras_reads_no_example(tmp_path):
    """The gate prints no example: building them cost it a read of every example exchange
    (and a deep body there made it crash)."""
    cfg = config(tmp_path)
    with SQLiteStore(cfg.store) as store:
        write(store, "GET /a", 3)
        statements: list[str] = []
        store.db.set_trace_callback(statements.append)
        doc, extras, _ = document(store, "r", cfg, extras=False)
    assert extras == {} and doc["routes"][0]["divergent"] == 3
    assert statements and not [s for s in statements if "examples" in s]


def test_one_route_is_judged_from_its_own_rows(tmp_path):
    """Audit finding 14: the verdict of one route (`/verdict?route=`) read every divergence
    of the run; now its work (SQLite's steps) does not grow with the other routes' rows."""
    cfg = config(tmp_path)
    with SQLiteStore(cfg.store) as store:

        def work() -> int:
            steps = [0]

            def step() -> int:
                steps[0] += 1
                return 0  # go on

            store.db.set_progress_handler(step, 100)
            doc, _, _ = document(store, "r", cfg, only="GET /a", live=True)
            store.db.set_progress_handler(None, 0)
            assert [r["route"] for r in doc["routes"]] == ["GET /a"]
            return steps[0]

        write(store, "GET /a", 5)
        alone = work()
        write(store, "GET /b", 1_000, width=20)
        assert work() < 2 * alone + 10
        whole, _, _ = document(store, "r", cfg, live=True)
        one, _, _ = document(store, "r", cfg, only="GET /a", live=True)
    assert one["routes"] == [r for r in whole["routes"] if r["route"] == "GET /a"]


def test_one_route_named_with_a_lone_surrogate_is_found(tmp_path):
    """A route from a URL reaches the SQL now: cleaned as the store wrote it, never an error."""
    cfg = config(tmp_path)
    with SQLiteStore(cfg.store) as store:
        write(store, "GET /\udcff", 2)
        doc, _, _ = document(store, "r", cfg, only="GET /\udcff", live=True)
    assert [(r["route"], r["divergent"]) for r in doc["routes"]] == [("GET /\\udcff", 2)]


def test_inconclusive_checks_say_what_would_decide_them_at_the_route_s_rate(tmp_path):
    """The store's timestamps reach the judge: 20 exchanges sampled over 9.5 s need 30 more,
    15 s of this traffic, before the route can be judged."""
    cfg = config(tmp_path)
    with SQLiteStore(cfg.store) as store:
        sampled = [snapshot(f"f{i}", timestamp=1_000 + i / 2) for i in range(20)]
        store.write("r", "i", [exchange(s, route="GET /a") for s in reversed(sampled)], {})
        doc, _, verdict = document(store, "r", cfg, extras=False)
    assert verdict.verdict == "INCONCLUSIVE"
    assert {c["id"]: c["needs"] for c in doc["checks"]} == dict.fromkeys(
        ("min_sample", "divergence_rate", "status_5xx", "shadow_errors", "latency"),
        {"pairs": 30, "seconds": 15.0},
    )
