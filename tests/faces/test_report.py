"""Reports: JSON round trip, Markdown escaping, and the HTML page in a real headless chromium."""

from __future__ import annotations

import asyncio
import random
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from browser import chromium
from shadowdiff.faces.report import (
    BODY_LIMIT,
    PLOT_POINTS,
    md_escape,
    render_html,
    render_json,
    render_markdown,
)

PWN = '<script>document.title="pwned";window.pwned=1</script>'
PWN_IMG = "<img src=x onerror=\"document.title='pwned'\">"
EVIL_ROUTE = f"GET /a|b/{PWN}"
EVIL_PATH = f"body:$.x{PWN}"


def latency(p50: float) -> dict[str, float]:
    return {"p50": p50, "p95": p50 * 2, "p99": p50 * 3}


def route(name: str, rate: float, ratio: float, fields: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "route": name,
        "pairs": 400,
        "divergent": round(400 * rate),
        "divergence_rate": rate,
        "fields": fields,
        "status_matrix": [
            {"primary": "200", "shadow": "200", "count": 390},
            {"primary": "200", "shadow": "500", "count": 3},
            {"primary": "404", "shadow": "404", "count": 7},
        ],
        "latency": {
            "primary": latency(0.012),
            "shadow": latency(0.012 * ratio),
            "secondary": latency(0.0125),
            "ratio": ratio,
            "ci": [ratio - 0.05, ratio + 0.05],
        },
    }


def field(path: str, count: int, noise: bool = False) -> dict[str, Any]:
    return {
        "path": path,
        "kind": "changed",
        "count": count,
        "rate": count / 400,
        "noise_count": count if noise else 0,
        "noise": noise,
    }


def make_doc(n_routes: int = 3) -> dict[str, Any]:
    routes = [
        route(EVIL_ROUTE, 0.03, 1.31, [field(EVIL_PATH, 12), field("header:date", 400, True)]),
        route("GET /users/{id}", 0.0, 0.98, []),
        route("POST /orders", 0.2, 1.05, [field("body:$.total", 80)]),
    ]
    routes += [
        route(f"GET /r{i}", (i % 7) / 100, 0.9 + (i % 5) / 10, [field("body:$.a", i)])
        for i in range(n_routes - len(routes))
    ]
    return {
        "verdict": "FAIL",
        "checks": [
            {
                "id": "latency",
                "route": EVIL_ROUTE,
                "result": "FAIL",
                "value": 1.31,
                "threshold": 1.1,
                "n": 412,
                "ci": [1.25, 1.37],
                "critical": False,
                "detail": "shadow 31 % slower (95 % CI 25–37 %)",
                "needs": None,
            },
            {
                "id": "divergence",
                "route": "POST /orders",
                "result": "INCONCLUSIVE",
                "value": 0.2,
                "threshold": 0.01,
                "n": 9,
                "ci": None,
                "critical": True,
                "detail": "too few pairs",
                "needs": {"pairs": 41, "seconds": 300.0},
            },
            {
                "id": "errors",
                "route": None,
                "result": "PASS",
                "value": 0.0,
                "threshold": 0.001,
                "n": 1000,
                "ci": None,
                "critical": True,
                "detail": "",
                "needs": None,
            },
        ],
        "routes": routes,
        "counts": {
            "seen": 1000,
            "sampled": 500,
            "recorded": 498,
            "compared": 498,
            "matched": 470,
            "ignored": 6,
            "divergent": 22,
            "dropped": {"backlog": 2},
            "shadow_errors": {"timeout": 1},
        },
        "run": "checkout-v2.4.0-rc1",
        "config_sha256": "ab12" * 16,
        "tool_version": "0.1.0",
        "generated_at": "2026-11-27T15:00:00Z",
    }


def samples(rng: random.Random, median: float, n: int) -> list[float]:
    return [rng.lognormvariate(0, 0.4) * median for _ in range(n)]


def make_extras(doc: Mapping[str, Any], n: int = 2000) -> dict[str, Any]:
    rng = random.Random(7)
    latencies = {
        r["route"]: {
            "primary": samples(rng, 0.012, n),
            "shadow": samples(rng, 0.012 * r["latency"]["ratio"], n),
            "secondary": samples(rng, 0.0125, n) if i % 2 == 0 else None,
        }
        for i, r in enumerate(doc["routes"])
    }
    evil_body = orjson.dumps({"name": PWN, "img": PWN_IMG, "url": "https://evil.example/x.js"})
    example = {
        "method": "GET",
        "path": f"/a|b/?q={PWN}",
        "request_headers": [["Accept", "*/*"], ["X-Evil", PWN_IMG]],
        "request_body": "",
        "primary": {
            "status": 200,
            "headers": [["Content-Type", "application/json"], ["X-Same", "1"]],
            "body": evil_body.decode(),
        },
        "shadow": {
            "status": 500,
            "headers": [["Content-Type", "text/html"], ["X-Same", "1"]],
            "body": f"<html><body>{PWN}{PWN_IMG}</body></html>" + "x" * (2 * BODY_LIMIT),
        },
    }
    return {"latencies": latencies, "examples": {EVIL_ROUTE: {EVIL_PATH: [example] * 7}}}


def test_json_round_trips() -> None:
    doc = make_doc()
    text = render_json(doc)
    assert text.endswith("}\n")
    assert orjson.loads(text) == doc
    assert text == render_json(orjson.loads(text))  # sorted keys: stable across runs


def test_markdown_has_verdict_and_escapes_traffic() -> None:
    md = render_markdown(make_doc())
    assert "## shadowdiff verdict: **FAIL**" in md
    assert r"GET /a\|b/\<script\>" in md
    assert not re.search(r"(?<!\\)[<>`]", md) and "a|b" not in md
    for table in re.findall(r"(?:^\|.*\n)+", md, re.M):  # rows as wide as their header
        assert len({len(re.findall(r"(?<!\\)\|", row)) for row in table.splitlines()}) == 1
    assert "header:date" not in md  # noise is not a top divergent field
    assert "1.31× (1.26–1.36)" in md
    assert md.index("| latency |") < md.index("| divergence (critical) |")


def test_reports_say_how_long_until_every_inconclusive_check_is_decided() -> None:
    doc = make_doc()
    said = "About 5 min more at the current rates should decide every inconclusive check."
    assert said in render_markdown(doc)
    assert f'<p id="deciding" class="note">{said}</p>' in render_html(doc, {})
    doc["checks"].append({**doc["checks"][1], "id": "latency", "needs": None})
    assert (
        "About 5 min more at the current rates should decide 1 of them. More pairs alone "
        "would not decide 1 inconclusive check (see their details)."
    ) in render_markdown(doc)
    doc["checks"][1]["needs"] = {"pairs": 41, "seconds": None}  # no rate known yet
    assert "Up to 41 more pairs per route should decide 1 of them." in render_markdown(doc)
    doc["verdict"] = "PASS"
    doc["checks"] = [c for c in doc["checks"] if c["result"] == "PASS"]
    assert "should decide" not in render_markdown(doc) + render_html(doc, {})


def test_md_escape_neutralises_markup_and_newlines() -> None:
    assert md_escape("a|b`c*d_e[f]g<h>i\\j\nk") == r"a\|b\`c\*d\_e\[f\]g\<h\>i\\j k"


def test_html_escapes_traffic_and_needs_no_network() -> None:
    doc = make_doc()
    html = render_html(doc, make_extras(doc, 300))
    assert '<header id="verdict" class="fail"><span class="word">FAIL</span>' in html
    assert "<script>document" not in html and "<img src=x" not in html
    assert html.count("<script") == 1  # the sorting script only
    assert not re.search(r"""\b(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert "@import" not in html and "url(http" not in html
    assert "&lt;script&gt;document.title=&#34;pwned&#34;" in html
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert html.count('class="example"') == 5  # 7 examples given, 5 shown
    assert f"truncated: first {BODY_LIMIT:,} of" in html
    assert (
        '<span class="diff">Content-Type: application/json</span>\n<span>X-Same: 1</span>' in html
    )
    assert "&#34;name&#34;: &#34;&lt;script&gt;" in html  # JSON body pretty-printed
    assert "<?xml" not in html and "<!DOCTYPE svg" not in html
    assert html.count("<svg ") == len(doc["routes"])
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids))  # several SVGs, no clashing ids
    for ref in set(re.findall(r'href="#([^"]+)"', html)):
        assert ref in ids
    assert html == render_html(doc, make_extras(doc, 300))  # deterministic


def test_html_plots_are_small_and_noise_apart() -> None:
    doc = make_doc()
    html = render_html(doc, make_extras(doc, 20_000))
    for svg in re.findall(r"<svg .*?</svg>", html, re.S):
        assert len(svg) < 80_000
        for path in re.findall(r'<path d="([^"]*)"[^>]*stroke-width: 1.5', svg):
            assert path.count("L") < PLOT_POINTS
    noise = html.index('<table class="noise">')
    assert html.index("header:date") > noise > html.index("body:$.x&lt;script&gt;")


def test_html_without_extras_or_latency() -> None:
    doc = make_doc(3)
    doc["verdict"] = "PASS"
    doc["routes"][1]["latency"] = None
    html = render_html(doc, {})
    assert 'id="verdict" class="pass"' in html
    assert "<svg" not in html and "No latency samples." in html


def test_html_shows_bodies_too_deep_to_pretty_print_as_they_came() -> None:
    """Audit finding 5: orjson reads 1,024 levels but writes only 254; such a body ended the
    report in a traceback."""
    doc = make_doc(1)
    example = make_extras(doc, 1)["examples"][EVIL_ROUTE][EVIL_PATH][0]
    bodies = ["[" * depth + "]" * depth for depth in (255, 1024)]
    example["primary"]["body"], example["shadow"]["body"] = bodies
    html = render_html(doc, {"examples": {EVIL_ROUTE: {EVIL_PATH: [example]}}})
    assert all(body in html for body in bodies)


def test_examples_come_in_the_order_given() -> None:
    """The evidence orders examples as its fields; a list's items share one `[*]` path."""
    doc = make_doc(1)
    example = make_extras(doc, 1)["examples"][EVIL_ROUTE][EVIL_PATH][0]
    paths = ["body:$.z", "body:$.items[*].price", "body:…"]
    html = render_html(doc, {"examples": {EVIL_ROUTE: {p: [example] for p in paths}}})
    assert html.index("body:$.z") < html.index("body:$.items[*].price") < html.index("body:…")


def test_matplotlib_is_imported_only_to_plot() -> None:
    code = "import sys, shadowdiff.faces.report; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_html_renders_fast() -> None:
    doc = make_doc(50)
    extras = make_extras(doc)
    render_html(make_doc(), make_extras(make_doc(), 10))  # imports matplotlib
    start = time.perf_counter()
    render_html(doc, extras)
    elapsed = time.perf_counter() - start
    # 1.3–1.7 s on CI's 2 cores, 2.2–2.7 s under coverage: the bound leaves room for load.
    assert elapsed < 5.0, f"{elapsed:.2f} s for 50 routes"


async def test_html_in_headless_chromium(tmp_path: Path) -> None:
    doc = make_doc(6)
    page = tmp_path / "report.html"
    page.write_text(render_html(doc, make_extras(doc, 500)), encoding="utf-8")
    shot = tmp_path / "report.png"
    seen = await asyncio.wait_for(browse(page, shot, tmp_path / "profile"), 90)
    assert seen["errors"] == []
    assert seen["title"] == "shadowdiff FAIL · checkout-v2.4.0-rc1"
    assert seen["pwned"] is False
    assert seen["banner"] == "FAILcheckout-v2.4.0-rc1"
    assert seen["sorted_ratio"] == sorted(seen["sorted_ratio"], reverse=True)
    assert seen["sorted_rate"] == sorted(seen["sorted_rate"])
    assert len(seen["sorted_rate"]) == 6
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 50_000


CHECK_PAGE = """(() => {
  const column = (i) => Array.from(document.querySelectorAll("#routes tbody tr"),
                                   (row) => parseFloat(row.cells[i].dataset.v));
  const buttons = document.querySelectorAll("#routes th button");
  buttons[1].click();
  const sortedRatio = column(4);
  buttons[0].click();  // descending first, a second click turns it
  buttons[0].click();
  return {title: document.title, pwned: window.pwned !== undefined,
          banner: document.getElementById("verdict").textContent,
          sorted_ratio: sortedRatio, sorted_rate: column(3)};
})()"""


async def browse(page: Path, screenshot: Path, profile: Path) -> dict[str, Any]:
    """Opens the page in headless chromium; what it saw, and the errors it reported.

    Errors are exceptions, console errors, log entries of level error and Content-Security-
    Policy violations: an injected script that got through the escaping would be refused
    (its hash is not allowed) and reported there.
    """
    async with chromium(profile) as cdp:
        await cdp.navigate(page.as_uri())
        seen: dict[str, Any] = await cdp.evaluate(CHECK_PAGE)
        await cdp.screenshot(screenshot)
        seen["errors"] = cdp.errors() + await cdp.csp_violations()
        return seen


def test_reports_show_the_incidents_timeline_escaped() -> None:
    from shadowdiff.model import Incident

    incident = Incident(
        "rc1",
        "3f2a9c1b0e12" + "0" * 28,
        2,
        EVIL_ROUTE,
        "divergence_rate",
        "team-a",
        "error",
        "s",
        100.0,
        101.0,
        alerted=101.5,
        acked=104.0,
        acked_by=f"ada {PWN}",
        mitigated=106.0,
        mitigated_by="mirroring paused by ops",
        resolved=106.0,
        resolved_why="mitigated: ops",
    )
    doc = {**make_doc(), "incidents": [incident.row()]}
    html = render_html(doc, make_extras(doc, 10))
    section = html[html.index('<h2 id="incidents">') :]
    assert "3f2a9c1b0e12 #2" in section and "team-a" in section
    assert ">1.5 s<" in section and ">2.5 s<" in section and ">6.0 s<" in section
    assert "<script>document" not in html and "ada &lt;script&gt;" in section
    md = render_markdown(doc)
    assert "### Incidents" in md and "| 1.5 s | 2.5 s | 6.0 s | 6.0 s | mitigated: ops |" in md
    assert "GET /a\\|b/\\<script\\>" in md
