"""Divergence reports for release reviews: JSON, Markdown for a ticket, one self-contained HTML.

Everything in the verdict document's routes, paths and values and everything in the extras came
from live traffic, so it is hostile: HTML goes through jinja2 with autoescaping on, Markdown
through `md_escape`. The only markup inserted as-is is ours: the sorting script (allowed by its
hash in the page's CSP) and the SVG plots, which carry no traffic text at all.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any

import orjson
from jinja2 import Environment, PackageLoader
from markupsafe import Markup

from shadowdiff.model import span

if TYPE_CHECKING:  # the judge package imports scipy: not at the worker's start
    from shadowdiff.judge.schema import CheckRow, Example, Extras, RouteRow, VerdictDocument

VERDICTS = ("PASS", "FAIL", "INCONCLUSIVE")
TOP = 10  # routes and fields listed in the Markdown
EXAMPLES_PER_FIELD = 5
BODY_LIMIT = 10 * 1024  # characters of one body shown in an example
PRETTY_LIMIT = 1024 * 1024  # larger bodies are not parsed as JSON just to be cut at BODY_LIMIT
PLOT_POINTS = 300  # quantiles per CDF series: smooth at this size, small SVG (limit is 2,000)
SERIES = (("primary", "#0969da"), ("shadow", "#d4600e"), ("secondary", "#6e7781"))

SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.querySelectorAll("th[data-sort]");
  heads.forEach(function (th) {
    th.querySelector("button").addEventListener("click", function () {
      var col = th.cellIndex;
      var desc = th.getAttribute("aria-sort") !== "descending";
      var key = function (row) {
        var v = parseFloat(row.cells[col].getAttribute("data-v"));
        return isNaN(v) ? null : v;
      };
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) { return (x === null) - (y === null); }
        return desc ? y - x : x - y;
      });
      rows.forEach(function (row) { body.appendChild(row); });
      heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", desc ? "descending" : "ascending");
    });
  });
});
"""
SORT_JS_HASH = base64.b64encode(hashlib.sha256(SORT_JS.encode()).digest()).decode()
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    f"script-src 'sha256-{SORT_JS_HASH}'; base-uri 'none'; form-action 'none'"
)


def render_json(doc: VerdictDocument) -> str:
    """The verdict document as stable, diffable JSON (sorted keys), newline-terminated."""
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|])")


def md_escape(value: object) -> str:
    """Traffic text made inert in Markdown: no table breaks, no code spans, links or raw HTML."""
    text = " ".join(str(value).split())  # a newline would end the table row
    return _MD_SPECIAL.sub(r"\\\1", text)


def _md_incidents(doc: VerdictDocument) -> list[str]:
    """The incidents and their response times, for the release ticket."""
    found = doc.get("incidents", [])
    if not found:
        return []
    rows = []
    for i in found:
        d = i["durations"]
        times = [d["detect"], d["acknowledge"], d["mitigate"], d["resolve"]]
        rows.append(
            [i["key"][:12], i["route"], i["check"], i["team"] or "—", i["severity"]]
            + [span(t) for t in times]
            + [i["resolved_why"] or "open"]
        )
    header = ["incident", "route", "check", "team", "severity", "detect", "acknowledge"]
    header += ["mitigate", "resolve", "resolution"]
    return ["### Incidents", "", *_md_table(header, rows), ""]


def render_markdown(doc: VerdictDocument) -> str:
    """A summary to paste into a release ticket; the HTML report has the details."""
    verdict = str(doc.get("verdict", "INCONCLUSIVE"))
    lines = [
        f"## shadowdiff verdict: **{md_escape(verdict)}**",
        "",
        f"Run {md_escape(doc.get('run', ''))} · generated {md_escape(doc.get('generated_at', ''))}"
        f" · shadowdiff {md_escape(doc.get('tool_version', ''))}"
        f" · config sha256 {md_escape(str(doc.get('config_sha256', ''))[:12])}",
        "",
        "Counts: " + md_escape(_counts_line(doc.get("counts", {}))),
        "",
        *[f"Accounting: {md_escape(problem)}" for problem in doc.get("accounting", [])],
        *[
            f"{'Release' if e['kind'].startswith('release_') else 'Mirroring'}"
            f" {md_escape(e['kind'].removeprefix('release_'))} by {md_escape(e['actor'])} at "
            f"{_time(e['ts'])} ({md_escape(e['old'])} → {md_escape(e['new'])})"
            for e in doc.get("events", [])
        ],
        *([""] if doc.get("accounting") or doc.get("events") else []),
        *_md_incidents(doc),
        "### Checks not passing",
        "",
    ]
    deciding = _deciding(doc.get("checks", []))
    if deciding:
        lines += [md_escape(deciding), ""]
    failing = _failing(doc.get("checks", []))
    if failing:
        lines += _md_table(
            ["check", "route", "result", "value", "threshold", "n", "detail"],
            [
                [
                    c.get("id", "") + (" (critical)" if c.get("critical") else ""),
                    c.get("route") or "all routes",
                    c.get("result", ""),
                    _num(c.get("value")),
                    _num(c.get("threshold")),
                    _num(c.get("n")),
                    c.get("detail", ""),
                ]
                for c in failing
            ],
        )
    else:
        lines.append("None.")
    routes = doc.get("routes", [])
    divergent = sorted(
        (r for r in routes if r.get("divergent")),
        key=lambda r: -(r.get("divergence_rate") or 0),
    )[:TOP]
    lines += ["", "### Top divergent routes", ""]
    if divergent:
        lines += _md_table(
            ["route", "pairs", "divergent", "rate"],
            [
                [
                    r["route"],
                    _num(r.get("pairs")),
                    _num(r.get("divergent")),
                    _pct(r.get("divergence_rate")),
                ]
                for r in divergent
            ],
        )
    else:
        lines.append("None.")
    fields = sorted(
        (
            (r["route"], f)
            for r in routes
            for f in r.get("fields", [])
            if f.get("count") and not f.get("noise")
        ),
        key=lambda rf: -(rf[1].get("count") or 0),
    )[:TOP]
    lines += ["", "### Top divergent fields (noise excluded)", ""]
    if fields:
        lines += _md_table(
            ["route", "field", "kind", "count", "rate"],
            [
                [
                    route,
                    f.get("path", ""),
                    f.get("kind", ""),
                    _num(f.get("count")),
                    _pct(f.get("rate")),
                ]
                for route, f in fields
            ],
        )
    else:
        lines.append("None.")
    lines += ["", "### Latency (slowest shadow first)", ""]
    timed = sorted(
        (r for r in routes if r.get("latency")),
        key=lambda r: -(r["latency"].get("ratio") or 0),
    )
    if timed:
        lines += _md_table(
            [
                "route",
                "p50 primary",
                "p50 shadow",
                "p99 primary",
                "p99 shadow",
                "ratio (95 % CI)",
                "vs",
            ],
            [_latency_row(r) for r in timed],
        )
    else:
        lines.append("No latency measured.")
    return "\n".join(lines) + "\n"


def render_html(doc: VerdictDocument, extras: Extras) -> str:
    """One self-contained page (no network needed): banner, checks, routes, plots, examples."""
    routes = list(doc.get("routes", []))
    latencies = extras.get("latencies") or {}
    examples = extras.get("examples") or {}
    plots = _cdf_svgs([latencies.get(r["route"]) for r in routes])
    checks = list(doc.get("checks", []))
    counts = doc.get("counts", {})
    verdict = str(doc.get("verdict", "INCONCLUSIVE"))
    views = [
        _route_view(i, r, plots[i], examples.get(r["route"]) or {}) for i, r in enumerate(routes)
    ]
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            csp=Markup(CSP),
            sort_js=Markup(SORT_JS),
            verdict=verdict,
            verdict_class=verdict.lower() if verdict in VERDICTS else "inconclusive",
            doc=doc,
            release_kinds={
                e["kind"] for e in doc.get("events", []) if e["kind"].startswith("release_")
            },
            counts=[(k, v) for k, v in counts.items() if not isinstance(v, Mapping)],
            reasons=[(k, v) for k, v in counts.items() if isinstance(v, Mapping)],
            failing=_failing(checks),
            deciding=_deciding(checks),
            checks=checks,
            routes=views,
            by_rate=sorted(views, key=lambda v: -(v["route"].get("divergence_rate") or 0)),
            series=SERIES,
            fmt_num=_num,
            fmt_time=_time,
            fmt_seconds=span,
            fmt_pct=_pct,
            fmt_ms=_ms,
            fmt_ratio=_ratio,
        )
    )


@cache
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("shadowdiff.faces", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _failing(checks: Iterable[CheckRow]) -> list[CheckRow]:
    """Checks a reviewer must look at: failed first, then inconclusive; critical ones on top."""
    order = {"FAIL": 0, "INCONCLUSIVE": 1}
    bad = [c for c in checks if c.get("result") in order]
    return sorted(bad, key=lambda c: (order[c["result"]], not c.get("critical")))


def _deciding(checks: Iterable[CheckRow]) -> str | None:
    """How long until every INCONCLUSIVE check can pass or fail: the longest of their waits at
    their routes' current rates (the routes run side by side), and which more pairs won't
    decide; None when nothing is inconclusive."""
    from shadowdiff.judge import duration

    waiting = [c for c in checks if c.get("result") == "INCONCLUSIVE"]
    if not waiting:
        return None
    needs = [n for c in waiting if (n := c.get("needs"))]
    stuck = len(waiting) - len(needs)
    parts = []
    if needs:
        which = "every inconclusive check" if not stuck else f"{len(needs)} of them"
        seconds = [n["seconds"] for n in needs]
        if None in seconds:
            most = max(n["pairs"] for n in needs)
            parts.append(f"Up to {most:,} more pairs per route should decide {which}.")
        else:
            wait = duration(max(s for s in seconds if s is not None))
            parts.append(f"About {wait} more at the current rates should decide {which}.")
    if stuck:
        what = f"{stuck} inconclusive check{'' if stuck == 1 else 's'}"
        parts.append(f"More pairs alone would not decide {what} (see their details).")
    return " ".join(parts)


def _counts_line(counts: Mapping[str, Any]) -> str:
    parts = []
    for key, value in counts.items():
        if isinstance(value, Mapping):
            if value:
                inner = ", ".join(f"{k} {v}" for k, v in value.items())
                parts.append(f"{key.replace('_', ' ')}: {inner}")
        else:
            parts.append(f"{key.replace('_', ' ')} {value}")
    return " · ".join(parts)


def _md_table(head: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    out += ["| " + " | ".join(md_escape(cell) for cell in row) + " |" for row in rows]
    return out


def _latency_row(route: RouteRow) -> list[str]:
    lat = route["latency"]
    primary: Mapping[str, Any] = lat.get("primary") or {}
    shadow: Mapping[str, Any] = lat.get("shadow") or {}
    return [
        route["route"],
        _ms(primary.get("p50")),
        _ms(shadow.get("p50")),
        _ms(primary.get("p99")),
        _ms(shadow.get("p99")),
        _ratio(lat.get("ratio"), lat.get("ci")),
        str(lat.get("baseline") or ""),
    ]


def _num(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _pct(rate: float | None) -> str:
    if rate is None:
        return "—"
    pct = rate * 100
    return f"{pct:.1f} %" if pct >= 1 or pct == 0 else f"{pct:.2g} %"


def _time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.3g} ms"


def _ratio(ratio: float | None, ci: Sequence[float] | None = None) -> str:
    if ratio is None:
        return "—"
    return f"{ratio:.2f}× ({ci[0]:.2f}–{ci[1]:.2f})" if ci else f"{ratio:.2f}×"


def _route_view(
    index: int, route: RouteRow, plot: Markup | None, examples: Mapping[str, list[Example]]
) -> dict[str, Any]:
    """What the template shows of one route; ids come from the index, never from traffic."""
    fields = route.get("fields", [])
    matrix = route.get("status_matrix", [])
    primaries = sorted({str(c["primary"]) for c in matrix})
    shadows = sorted({str(c["shadow"]) for c in matrix})
    cells = {(str(c["primary"]), str(c["shadow"])): c["count"] for c in matrix}
    latency = route.get("latency")
    return {
        "id": f"route-{index}",
        "route": route,
        "fields": [f for f in fields if not f.get("noise")],
        "noise": [f for f in fields if f.get("noise")],
        "matrix": {
            "primaries": primaries,
            "shadows": shadows,
            "rows": [[cells.get((p, s)) for s in shadows] for p in primaries],
        },
        "latency": latency,
        "ratio": latency.get("ratio") if latency else None,
        "ci": latency.get("ci") if latency else None,
        "plot": plot,
        "examples": [  # in the order they come: the evidence gives its fields' order
            (path, [_example_view(e) for e in shown[:EXAMPLES_PER_FIELD]])
            for path, shown in examples.items()
            if shown
        ],
    }


def _example_view(example: Example) -> dict[str, Any]:
    """One exchange, with what differs between primary and shadow marked for the eye."""
    primary: Mapping[str, Any] = example.get("primary") or {}
    shadow: Mapping[str, Any] = example.get("shadow") or {}
    p_headers = [(str(k), str(v)) for k, v in primary.get("headers") or []]
    s_headers = [(str(k), str(v)) for k, v in shadow.get("headers") or []]
    body, body_note = _body(example.get("request_body"))
    return {
        "method": example.get("method", ""),
        "path": example.get("path", ""),
        "headers": [(str(k), str(v)) for k, v in example.get("request_headers") or []],
        "body": body,
        "body_note": body_note,
        "sides": [
            _side_view("primary", primary, p_headers, s_headers),
            _side_view("shadow", shadow, s_headers, p_headers),
        ],
    }


def _side_view(
    name: str,
    side: Mapping[str, Any],
    headers: list[tuple[str, str]],
    other: list[tuple[str, str]],
) -> dict[str, Any]:
    theirs = {(k.lower(), v) for k, v in other}
    body, note = _body(side.get("body"))
    return {
        "name": name,
        "status": side.get("status", "—"),
        "headers": [(k, v, (k.lower(), v) not in theirs) for k, v in headers],
        "body": body,
        "body_note": note,
    }


def _body(body: str | None) -> tuple[str, str]:
    """The body pretty-printed when it is JSON, cut at BODY_LIMIT; the note says what was cut."""
    text = body or ""
    if text.lstrip()[:1] in ("{", "[") and len(text) <= PRETTY_LIMIT:
        # Not JSON after all, numbers orjson refuses, or deeper than the 254 levels orjson
        # writes (it reads 1,024): shown as it came.
        with contextlib.suppress(orjson.JSONDecodeError, orjson.JSONEncodeError):
            text = orjson.dumps(orjson.loads(text), option=orjson.OPT_INDENT_2).decode()
    if len(text) > BODY_LIMIT:
        return text[:BODY_LIMIT], f"truncated: first {BODY_LIMIT:,} of {len(text):,} characters"
    return text, ""


def _cdf_svgs(series: Sequence[Mapping[str, Sequence[float] | None] | None]) -> list[Markup | None]:
    """Latency CDFs, one inline SVG per route (None without samples).

    One figure is drawn again for every route, which is several times faster than a figure
    each; tick labels are plain text because mathtext parsing dominates the time otherwise.
    The legend and axis titles are in the page, not in the SVG, for the same reason.
    """
    if not any(s and any(s.get(name) for name, _ in SERIES) for s in series):
        return [None] * len(series)
    import matplotlib  # here, not at module level: it takes a second to import
    import numpy as np
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    fig = Figure(figsize=(6.4, 2.4))  # fixed margins: constrained layout draws twice
    fig.subplots_adjust(left=0.07, right=0.98, top=0.96, bottom=0.12)
    FigureCanvasSVG(fig)
    ax = fig.add_subplot()
    lines = {
        name: ax.plot([], [], color=color, lw=1.5, ls="--" if name == "secondary" else "-")[0]
        for name, color in SERIES
    }
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.set_ylim(0, 1)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1])
    ax.grid(True, color="#d0d7de", lw=0.5)
    out: list[Markup | None] = []
    with matplotlib.rc_context(
        {"svg.hashsalt": "shadowdiff", "svg.fonttype": "none", "font.size": 9}
    ):
        for index, samples in enumerate(series):
            lows, highs = [], []
            for name, line in lines.items():
                values = np.asarray((samples or {}).get(name) or [], dtype=float)
                values = values[np.isfinite(values)]
                if values.size:
                    ms = np.sort(np.maximum(values, 1e-6) * 1000)  # log axis: no zeros
                    probs = np.linspace(0, 1, min(ms.size, PLOT_POINTS))
                    xs = ms[np.rint(probs * (ms.size - 1)).astype(int)]
                    line.set_data(xs, probs)
                    lows.append(xs[0])
                    highs.append(xs[-1])
                line.set_visible(bool(values.size))
            if not lows:
                out.append(None)
                continue
            low, high = min(lows), max(highs)
            ax.set_xlim(low / 1.2, high * 1.2)
            buf = io.StringIO()
            fig.savefig(buf, format="svg", metadata={k: None for k in _SVG_METADATA})
            out.append(_inline_svg(buf.getvalue(), f"plot{index}"))
    return out


_SVG_METADATA = ("Creator", "Date", "Format", "Type")
_SVG_IDS = re.compile(r'(\bid="|href="#|url\(#)')


def _inline_svg(svg: str, prefix: str) -> Markup:
    """Matplotlib's SVG fit for inlining: no XML prolog or DOCTYPE, ids unique to this plot."""
    svg = svg[svg.index("<svg") :]
    svg = _SVG_IDS.sub(lambda m: f"{m.group(1)}{prefix}-", svg)
    return Markup(svg.replace("<svg ", '<svg role="img" aria-label="latency CDF" ', 1))
