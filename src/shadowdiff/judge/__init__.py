"""The verdict: statistics and checks (pure), noise (Diffy's rule), and the evidence that
reads the store for them and builds the verdict document. Imports scipy: load it lazily
from anything that starts fast (the worker)."""

from shadowdiff.judge.checks import FAIL, INCONCLUSIVE, PASS, JudgeConfig, RouteData, Verdict, judge
from shadowdiff.judge.evidence import document, shown_examples
from shadowdiff.judge.noise import RouteFindings, findings, suggest_ignores

__all__ = [
    "FAIL",
    "INCONCLUSIVE",
    "PASS",
    "JudgeConfig",
    "RouteData",
    "RouteFindings",
    "Verdict",
    "document",
    "findings",
    "judge",
    "shown_examples",
    "suggest_ignores",
]
