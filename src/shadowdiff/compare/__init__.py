"""From two outcomes to a list of divergences: bodies, the JSON diff, routes, redaction.
Pure: no I/O, nothing of mitmproxy, aiohttp or the store."""

from shadowdiff.compare import bodies, jsondiff
from shadowdiff.compare.outcomes import Comparer
from shadowdiff.compare.redact import MASK, Redactor
from shadowdiff.compare.routes import OTHER, RouteTable

__all__ = ["MASK", "OTHER", "Comparer", "Redactor", "RouteTable", "bodies", "jsondiff"]
