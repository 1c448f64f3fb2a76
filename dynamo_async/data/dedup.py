"""Deduplicate training prompts by problem text (``data.dedup``, on by default; docs/data.md).

The hub's DAPO-Math-17k repeats each of its 17,917 prompts about 100 times (about 1.79M rows),
and even its distinct prompts repeat 596 problem texts, 11 of them with different gold
answers. Repeated prompts would make one epoch longer than a whole run, so that the
allocation would never see a prompt twice, and a problem with two answers rewards one of
two correct-looking responses at random. So, by the problem's text (whitespace-stripped):

- copies that agree on the answer merge into the first one (its id and position are kept);
- a text whose copies disagree on the answer is dropped, every copy of it.

``DedupReport`` counts both; the learner prints it at start and writes it to
``RUN_DIR/data.json``.
"""

from __future__ import annotations

from collections import defaultdict

import msgspec

from dynamo_async.data.problems import Problem


class DedupReport(msgspec.Struct, frozen=True):
    rows: int
    """Rows read."""
    prompts: int
    """Distinct prompts kept."""
    merged_copies: int
    """Rows merged into an identical earlier copy."""
    conflicting_texts: int
    """Problem texts dropped because their copies disagree on the answer."""
    conflicting_rows: int
    """Rows of those texts."""

    def line(self) -> str:
        return (f"{self.rows} rows -> {self.prompts} distinct prompts ({self.merged_copies} identical copies merged, "
                f"{self.conflicting_texts} problem texts with disagreeing answers dropped: {self.conflicting_rows} rows)")


def dedup_problems(problems: list[Problem]) -> tuple[list[Problem], DedupReport]:
    """Problems with duplicates merged and conflicting texts dropped; see the module docstring."""
    answers: dict[str, set[str]] = defaultdict(set)
    counts: dict[str, int] = defaultdict(int)
    for p in problems:
        key = p.problem.strip()
        answers[key].add(p.answer.strip())
        counts[key] += 1
    conflicting = {k for k, a in answers.items() if len(a) > 1}
    kept: list[Problem] = []
    seen: set[str] = set()
    for p in problems:
        key = p.problem.strip()
        if key in conflicting or key in seen:
            continue
        seen.add(key)
        kept.append(p)
    conflicting_rows = sum(counts[k] for k in conflicting)
    report = DedupReport(rows=len(problems), prompts=len(kept),
                         merged_copies=len(problems) - conflicting_rows - len(kept),
                         conflicting_texts=len(conflicting), conflicting_rows=conflicting_rows)
    return kept, report
