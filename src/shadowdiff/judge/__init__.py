"""The verdict: statistics and checks (pure), noise (Fisher's test with Diffy's floor), and the
evidence that reads the store for them and builds the verdict document. scipy loads only where
a judgement needs it: the names load lazily, so the worker and `summary` of a run without a
secondary stay fast."""

from typing import TYPE_CHECKING

from shadowdiff.lazy import exports

if TYPE_CHECKING:
    from shadowdiff.judge.checks import (
        FAIL,
        INCONCLUSIVE,
        PASS,
        JudgeConfig,
        RouteData,
        Verdict,
        duration,
        judge,
    )
    from shadowdiff.judge.evidence import document, shown_examples, window_verdict
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
    "duration",
    "findings",
    "judge",
    "shown_examples",
    "suggest_ignores",
    "window_verdict",
]
_CHECKS = (
    "FAIL",
    "INCONCLUSIVE",
    "PASS",
    "JudgeConfig",
    "RouteData",
    "Verdict",
    "duration",
    "judge",
)
__getattr__ = exports(
    __name__,
    {
        **dict.fromkeys(_CHECKS, "checks"),
        **dict.fromkeys(("document", "shown_examples", "window_verdict"), "evidence"),
        **dict.fromkeys(("RouteFindings", "findings", "suggest_ignores"), "noise"),
    },
)
