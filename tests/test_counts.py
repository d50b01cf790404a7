"""The accounting invariant and the summary line."""

from __future__ import annotations

from shadowdiff.counts import imbalance, summary_line


def test_balanced_books():
    counts = {
        "seen": 10,
        "not_eligible.loop": 1,
        "not_sampled.rate": 4,
        "not_sampled.method": 1,
        "sampled": 4,
        "recorded": 2,
        "dropped.backlog": 1,
        "dropped.in_flight": 1,
    }
    assert imbalance(counts) == []
    line = summary_line("rc1", {**counts, "shadow_error.timeout": 2})
    assert line == (
        "run 'rc1': seen 10, sampled 4, recorded 2, dropped 2 (backlog 1, in_flight 1), "
        "shadow errors 2 (timeout 2)"
    )
    compared = {**counts, "compared": 2, "matched": 1, "divergent": 1}
    assert summary_line("rc1", compared).endswith("compared 2 (matched 1, ignored 0, differing 1)")


def test_unbalanced_books_are_named():
    problems = imbalance({"seen": 3, "sampled": 2, "recorded": 1})
    assert problems == [
        "seen 3 != not_eligible + not_sampled + sampled 2",
        "sampled 2 != recorded + dropped 1",
    ]
