"""Diffy's noise rule, the findings per route, examples and ignore suggestions."""

from __future__ import annotations

import random

import pytest

from shadowdiff.config import Noise
from shadowdiff.judge.noise import findings, is_noise, looks_generated, suggest_ignores
from shadowdiff.worker.recorder import Reservoir


@pytest.mark.parametrize(
    "r, n, total, noise",
    [
        (40, 30, 1000, True),  # relative 14 % < 20 %
        (40, 0, 1000, False),
        (1, 0, 5000, True),  # absolute 0.02 % < 0.03 %
        (1, 0, 3000, False),
        (30, 40, 1000, True),  # the secondary differs more often
        (16, 10, 1000, True),  # r = 1.6 n but relative 23 %: still needs absolute
    ],
)
def test_diffy_rule(r, n, total, noise):
    if (r, n) == (16, 10):
        noise = not (6 / 26 > 0.2 and 6 / 1000 > 0.0003)
    assert is_noise(r, n, total, Noise()) is noise


def test_without_secondary_everything_counts():
    assert is_noise(1, 0, 100_000, Noise(), has_secondary=False) is False


def test_findings_separate_noise_from_divergence():
    routes = {
        "GET /a": {
            "exchanges": 100,
            "with_secondary": 100,
            "matched": 40,
            "ignored": 10,
            "divergent": 50,
        }
    }
    rows = []
    for i in range(50):  # timestamps differ everywhere, against both shadow and secondary
        rows.append(("GET /a", "shadow", f"x{i}", "body:$.ts", "changed", None, "1", "2"))
        rows.append(("GET /a", "secondary", f"x{i}", "body:$.ts", "changed", None, "1", "3"))
    for i in range(10):  # a renamed field only the shadow shows
        rows.append(("GET /a", "shadow", f"x{i}", "body:$.name", "removed", None, "a", ""))
    rows.append(("GET /a", "shadow", "x99", "header:x-build", "changed", "ignore", "1", "2"))
    [found] = findings(routes, rows, Noise())
    assert [(f.path, f.count, f.noise_count, f.noise) for f in found.fields] == [
        ("body:$.name", 10, 0, False),
        ("body:$.ts", 50, 50, True),
    ]
    assert (found.divergent, found.noisy, found.matched, found.ignored) == (10, 40, 40, 10)


def test_reservoir_is_uniform_and_bounded():
    hits = [0] * 20
    rng = random.Random(3)
    for _ in range(2000):
        reservoir = Reservoir(5)
        for i in range(20):
            reservoir.offer(str(i), rng)
        assert len(reservoir.items) == 5
        for item in reservoir.items:
            hits[int(item)] += 1
    assert all(400 <= h <= 600 for h in hits)  # each kept with probability 1/4


@pytest.mark.parametrize(
    "value, generated",
    [
        ("2026-11-27T14:00:00.123Z", True),
        ('"2026-11-27 14:00:00+01:00"', True),
        ("3f2504e0-4f89-11d3-9a0c-0305e82c3301", True),
        ("a94a8fe5ccb19ba61c4c0873d391e987982fbbd3", True),
        ("1764252000", True),
        ("tok_9aX2kLm3Qz8vW1pR", True),
        ("free", False),
        ("42", False),
        ("Hello world", False),
    ],
)
def test_looks_generated(value, generated):
    assert looks_generated(value) is generated


def test_suggest_ignores():
    routes = {"GET /a": {"exchanges": 20}, "GET /b": {"exchanges": 20}}
    rows = [
        (
            "GET /a",
            "shadow",
            f"k{i}",
            "body:$.at",
            "changed",
            None,
            f'"2026-01-0{i % 9 + 1}T00:00:00Z"',
            '"2026-02-01T00:00:00Z"',
        )
        for i in range(20)
    ]
    rows += [
        ("GET /a", "shadow", f"k{i}", "body:$.plan", "changed", None, '"free"', '"pro"')
        for i in range(20)
    ]
    rows += [
        (
            "GET /b",
            "shadow",
            f"k{i}",
            "body:$.id",
            "changed",
            None,
            '"3f2504e0-4f89-11d3-9a0c-0305e82c3301"',
            '"4f2504e0-4f89-11d3-9a0c-0305e82c3301"',
        )
        for i in range(5)
    ]
    assert suggest_ignores(routes, rows) == {"GET /a": ["body:$.at"]}
