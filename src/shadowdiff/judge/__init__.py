"""The verdict: statistics and checks (pure), noise (Diffy's rule), and the evidence that
reads the store for them and builds the verdict document. `checks` and `evidence` import
scipy: the names load lazily, so `summary` (noise only) and the worker stay fast."""

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
        judge,
    )
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
_CHECKS = ("FAIL", "INCONCLUSIVE", "PASS", "JudgeConfig", "RouteData", "Verdict", "judge")
__getattr__ = exports(
    __name__,
    {
        **dict.fromkeys(_CHECKS, "checks"),
        **dict.fromkeys(("document", "shown_examples"), "evidence"),
        **dict.fromkeys(("RouteFindings", "findings", "suggest_ignores"), "noise"),
    },
)
