"""Reward functions the reward tests name as ``tests/reward_fixtures.py:<name>`` (loaded from the
file in the scorer processes, as a user's would be)."""

from __future__ import annotations

import time


def length_and_yes(problem: str, response: str, answer: str, fields: dict) -> dict:
    return {"reward": len(response) / 10, "acc": int("yes" in response)}


def row_bonus(problem: str, response: str, answer: str, fields: dict) -> float:
    assert problem == fields["problem"] and answer == fields["answer"]
    return fields["bonus"]


def raises(problem: str, response: str, answer: str, fields: dict) -> float:
    raise KeyError("no such field")


def returns_text(problem: str, response: str, answer: str, fields: dict) -> str:
    return "1"


def bad_acc(problem: str, response: str, answer: str, fields: dict) -> dict:
    return {"reward": 1.0, "acc": 2}


def sleeps(problem: str, response: str, answer: str, fields: dict) -> float:
    time.sleep(60)
    return 1.0


def half(problem: str, response: str, answer: str, fields: dict) -> float:
    return 0.5


def parity(problem: str, response: str, answer: str, fields: dict) -> dict:
    """For the end-to-end test: depends on the response and the row, so that the store shows
    which function scored each sample."""
    return {"reward": fields["bonus"] + len(response) % 3, "acc": len(response) % 2}
