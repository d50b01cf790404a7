"""What people and tools look at: reports, the control server and dashboard, metrics, the
live verdict and alerts. They read and show; they never decide, and never import the worker."""

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
