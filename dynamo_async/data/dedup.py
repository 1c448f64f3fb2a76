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

from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from dynamo_async.data.problems import Located, Problem


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
        return (
            f"{self.rows} rows -> {self.prompts} distinct prompts ({self.merged_copies} identical copies merged, "
            f"{self.conflicting_texts} problem texts with disagreeing answers dropped: {self.conflicting_rows} rows)"
        )


def dedup_problems(located: Iterable[Located]) -> tuple[list[Located], DedupReport]:
    """Problems (with where each was read) with duplicates merged and conflicting texts dropped,
    in first-seen order; see the module docstring. Reads ``located`` once, holding only the
    distinct texts."""
    groups: dict[str, _Group] = {}
    rows = 0
    for where, p in located:
        rows += 1
        key = p.problem.strip()
        group = groups.get(key)
        if group is None:
            groups[key] = _Group(where, p, {p.answer.strip()})
        else:
            group.answers.add(p.answer.strip())
            group.copies += 1
    kept = [(g.where, g.first) for g in groups.values() if len(g.answers) == 1]
    conflicting = [g for g in groups.values() if len(g.answers) > 1]
    conflicting_rows = sum(g.copies for g in conflicting)
    report = DedupReport(
        rows=rows,
        prompts=len(kept),
        merged_copies=rows - conflicting_rows - len(kept),
        conflicting_texts=len(conflicting),
        conflicting_rows=conflicting_rows,
    )
    return kept, report


@dataclass
class _Group:
    where: str
    first: Problem
    answers: set[str]
    copies: int = 1
