"""The evidence's typed edges: the judge's thresholds come from the config, and the verdict
document's check and event rows carry every field of their records."""

from __future__ import annotations

import dataclasses

from shadowdiff.config import load_config
from shadowdiff.judge.checks import Check, JudgeConfig
from shadowdiff.judge.evidence import judge_config
from shadowdiff.judge.schema import CheckRow, EventRow
from shadowdiff.model import Event

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


def test_rows_carry_every_field_of_their_records() -> None:
    assert CheckRow.__required_keys__ == {f.name for f in dataclasses.fields(Check)}
    assert EventRow.__required_keys__ == {f.name for f in dataclasses.fields(Event)}
