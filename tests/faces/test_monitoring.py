"""The shipped Prometheus rules and Grafana dashboard: promtool checks the rules and runs their
unit tests, and every metric any rule or panel queries is one a real scrape exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import factories
import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from shadowdiff.faces.metrics import Gauges, Metrics
from shadowdiff.model import Divergence, Outcome

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "configs" / "prometheus" / "shadowdiff-rules.yaml"
RULE_TESTS = ROOT / "configs" / "prometheus" / "shadowdiff-rules.test.yaml"
DASHBOARD = ROOT / "configs" / "grafana" / "shadowdiff-dashboard.json"
METRIC = re.compile(r"(?<![\w:])shadowdiff_\w+(?![\w:])")
"""A metric name in PromQL; recorded series (`route:shadowdiff_divergence:…`) are not ours."""


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: `make system` installs Debian's prometheus package"
    return subprocess.run(
        [binary, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


Exported = dict[str, set[tuple[str, str]]]
"""Sample name → every (label, value) its samples carry."""
SCRAPE_LABELS = {"job", "instance"}
"""Labels Prometheus adds to every sample it scrapes."""
SELECTOR = re.compile(r"(?<![\w:])(shadowdiff_\w+)\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


async def exported() -> Exported:
    """Every sample a worker's /metrics gives once each family has a child, with its labels."""
    counts = {
        "seen": 3,
        **{
            f"{family}.x": 1
            for family in (
                "not_eligible",
                "not_sampled",
                "dropped",
                "shadow_error",
                "secondary_error",
                "alerts",
                "worker",
                "untimed",
                "latency_reference",
            )
        },
        "deliveries.failed.team-a/pagerduty": 1,
    }
    gauges = Gauges(sample_rate=1.0, paused=False, in_flight=0, breakers={"shadow": "open"})
    metrics = Metrics("rc1", lambda: counts, lambda: gauges, max_routes=10)
    metrics.observe(
        [
            factories.exchange(
                primary=Outcome(200, latency=0.01),
                shadow=Outcome(200, latency=0.01),
                secondary=Outcome(200, latency=0.01),
                route="GET /a",
            ),
            factories.exchange(route="GET /a", diffs=[Divergence("body:$.a", "changed", "1", "2")]),
        ]
    )
    text = (await metrics.scrape()).decode()
    samples: Exported = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels.items())
    return samples


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(DASHBOARD.read_bytes())
    return loaded


def panel_exprs() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def variable_queries() -> list[str]:
    templating = dashboard()["templating"]["list"]
    return [var["query"]["query"] for var in templating if var["type"] == "query"]


def test_the_rules_pass_promtool_and_their_unit_tests():
    checked = promtool("check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 12 rules found" in checked.stdout
    tested = promtool("test", "rules", RULE_TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_dashboards_panel_queries_parse(tmp_path: Path):
    """promtool parses PromQL only in rules: each panel's query, its variables filled in,
    becomes a recording rule."""
    rules = [
        {
            "record": f"panel_query_{n}",
            "expr": expr.replace("$__rate_interval", "5m")
            .replace("$job", ".*")
            .replace("$route", ".*"),
        }
        for n, expr in enumerate(panel_exprs())
    ]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = promtool("check", "rules", path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_every_query_names_a_metric_a_worker_exports():
    ours = await exported()
    for expr in [*rule_exprs(), *panel_exprs(), *variable_queries()]:
        named = set(METRIC.findall(expr))
        assert named or "shadowdiff:" in expr or ":shadowdiff_" in expr, expr
        assert named <= set(ours), f"{sorted(named - set(ours))} in {expr!r} is not exported"
        for name, matchers in SELECTOR.findall(expr):
            labels = {label for label, _ in ours[name]}
            for label, op, value in MATCHER.findall(matchers):
                assert label in labels | SCRAPE_LABELS, f"{name} has no label {label}: {expr!r}"
                if op == "=" and label not in SCRAPE_LABELS:
                    assert (label, value) in ours[name], f"{name}{{{label}={value!r}}}: {expr!r}"


def test_the_dashboard_is_a_grafana_dashboard():
    board = dashboard()
    assert board["schemaVersion"] >= 36  # Grafana 9.x and later: datasource references by uid
    assert board["uid"] and board["title"]
    variables = {var["name"] for var in board["templating"]["list"]}
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval"}
            assert used <= variables, f"{panel['title']} uses an undefined {used - variables}"


@pytest.mark.parametrize("path", [RULES, RULE_TESTS, DASHBOARD])
def test_shipped_files_are_documented(path: Path):
    assert str(path.relative_to(ROOT)) in (ROOT / "README.md").read_text()
