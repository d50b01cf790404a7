"""What people and tools look at: reports, the control server and dashboard, metrics, the
live verdict and alerts. They read and show; they never decide, and never import the worker.
The names load lazily: the worker needs no report (jinja2), the command line no server."""

from typing import TYPE_CHECKING

from shadowdiff.lazy import exports

if TYPE_CHECKING:
    from shadowdiff.faces.alerts import Alert, Alerter
    from shadowdiff.faces.metrics import Gauges, Metrics
    from shadowdiff.faces.report import render_html, render_json, render_markdown
    from shadowdiff.faces.verdict import LiveVerdict

__all__ = [
    "Alert",
    "Alerter",
    "Gauges",
    "LiveVerdict",
    "Metrics",
    "render_html",
    "render_json",
    "render_markdown",
]
__getattr__ = exports(
    __name__,
    {
        **dict.fromkeys(("Alert", "Alerter"), "alerts"),
        **dict.fromkeys(("Gauges", "Metrics"), "metrics"),
        **dict.fromkeys(("render_html", "render_json", "render_markdown"), "report"),
        "LiveVerdict": "verdict",
    },
)
