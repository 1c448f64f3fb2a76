"""Reward functions for a task that is not math: answers checked as strings (docs/rewards.md).

Each is named in a run's config as ``examples/rewards/string_rewards.py:<name>`` and called in
the scorer processes as ``fn(problem=..., response=..., answer=..., fields=...)``, where
``fields`` is the dataset row as read. ``exact_match`` reports ``acc``, the binary correctness
that the per-prompt success statistics count; ``answer_line_format`` is a shaping reward
with no ``acc``, added to the training reward only.
"""

from __future__ import annotations

import re
import unicodedata

_ANSWER_LINE = re.compile(r"^\s*answer\s*:\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)


def final_line_answer(response: str) -> str | None:
    """The text of the response's last ``Answer: X`` line, or None."""
    found = _ANSWER_LINE.findall(response)
    return found[-1] if found else None


def normalise(text: str) -> str:
    """Case, accents, surrounding punctuation and inner whitespace do not count."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return " ".join(re.sub(r"[^\w\s-]", " ", text.lower()).split())


def exact_match(problem: str, response: str, answer: str, fields: dict) -> dict:
    """1 when the last ``Answer:`` line equals the gold answer or one of the row's ``aliases``."""
    given = final_line_answer(response)
    accepted = {normalise(a) for a in [answer, *fields.get("aliases", [])]}
    correct = given is not None and normalise(given) in accepted
    return {"reward": float(correct), "acc": int(correct)}


def answer_line_format(problem: str, response: str, answer: str, fields: dict) -> float:
    """1 when the response ends with one ``Answer:`` line of a few words, else 0."""
    lines = [line for line in response.strip().splitlines() if line.strip()]
    if not lines or final_line_answer(lines[-1]) is None:
        return 0.0
    return float(len(_ANSWER_LINE.findall(response)) == 1 and len(lines[-1].split()) <= 6)
