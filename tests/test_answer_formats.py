"""rewards.answer_format: the last \\boxed{}, DAPO's last ``Answer:`` line, or whichever is last,
scored by math-verify on responses written the way models write them."""

from __future__ import annotations

import pytest

from dynamo_async.config.schema import RewardConfig
from dynamo_async.rewards import MathVerifyScorer, score_response
from dynamo_async.rewards.extract import final_answer, last_answer_line

# Responses in the forms seen from math models on DAPO's template and on boxed prompts.
ANSWER_LINE = (
    "We have $a+b+c = 5 + 7 + 22 = 34$... wait, recheck: $AB + AC = \\frac{11\\sqrt{5}}{...}$.\n"
    "So $a + b + c = 34$.\n\nAnswer: 34"
)
ANSWER_LINE_DOLLARS = "The probability is $\\frac{1}{2}$.\n\nAnswer: $\\frac{1}{2}$."
ANSWER_LINE_BOXED = "Thus the sum is 37.\n\nAnswer: \\boxed{37}"
BOXED = "Adding, $2 + 3 = 5$, so the answer is $\\boxed{5}$."
BOTH_BOX_LAST = "Answer: 4 (first try)\nActually recomputing gives \\boxed{5}."
BOTH_LINE_LAST = "My first guess was \\boxed{4}.\nFinal answer: 5"
LOWER = "the value of k is 5\nanswer: 5"


def _acc(response: str, gold: str, fmt: str) -> tuple[int, str]:
    r = score_response(response, gold, timeout_s=5.0, max_chars=50_000, answer_format=fmt)
    return r.acc, r.status


@pytest.mark.parametrize(
    "response, gold, boxed, answer_line, auto",
    [
        (ANSWER_LINE, "34", (0, "no_answer"), (1, "ok"), (1, "ok")),
        (ANSWER_LINE_DOLLARS, "\\frac{1}{2}", (0, "no_answer"), (1, "ok"), (1, "ok")),
        (ANSWER_LINE_DOLLARS, "0.5", (0, "no_answer"), (1, "ok"), (1, "ok")),
        (ANSWER_LINE_BOXED, "37", (1, "ok"), (1, "ok"), (1, "ok")),
        (BOXED, "5", (1, "ok"), (0, "no_answer"), (1, "ok")),
        (BOTH_BOX_LAST, "5", (1, "ok"), (0, "ok"), (1, "ok")),
        (BOTH_LINE_LAST, "5", (0, "ok"), (1, "ok"), (1, "ok")),
        (LOWER, "5", (0, "no_answer"), (1, "ok"), (1, "ok")),
        (ANSWER_LINE, "35", (0, "no_answer"), (0, "ok"), (0, "ok")),
    ],
)
def test_each_format_scores_real_responses(response, gold, boxed, answer_line, auto):
    assert _acc(response, gold, "boxed") == boxed
    assert _acc(response, gold, "answer_line") == answer_line
    assert _acc(response, gold, "auto") == auto


def test_answer_line_extraction_is_verls_rule():
    assert last_answer_line("Answer: 3\nmore text\nAnswer: 12 ") == "12"  # the last one
    assert last_answer_line("ANSWER:   -3") == "-3"
    assert last_answer_line("Answer:\n42") == "42"  # on the next line, as verl's \s* allows
    assert last_answer_line("no answer here") is None
    assert last_answer_line("Answer: $$") is None
    assert final_answer("Answer: 2\n\\boxed{3}", "auto") == "3"
    assert final_answer("\\boxed{3}\nAnswer: 2", "auto") == "2"
    assert final_answer("\\boxed{3}\nAnswer:", "auto") == "3"  # an empty answer line does not win


@pytest.mark.parametrize(
    "response, answer",
    [
        ("**Answer: 42**", "42"),
        ("**Answer:** 42", "42"),
        ("Answer:\n$$\n\\frac{1}{2}\n$$", "\\frac{1}{2}"),
        ("Answer: \\[ 7 \\]", "7"),
        ("answer: 3 is wrong. Final Answer: 5", "5"),
        ("Answer: $x = 2$.", "x = 2"),
    ],
)
def test_answer_lines_as_models_format_them(response, answer):
    assert last_answer_line(response) == answer


def test_the_pool_scores_in_the_configured_format():
    cfg = RewardConfig(num_workers=1, timeout_s=2.0, hard_timeout_s=10.0, answer_format="answer_line")
    with MathVerifyScorer.from_config(cfg) as scorer:
        got = scorer.score([ANSWER_LINE, BOXED], ["34", "5"])
    assert [(r.acc, r.status) for r in got] == [(1, "ok"), (0, "no_answer")]
    with pytest.raises(ValueError, match="answer_format"):
        MathVerifyScorer(num_workers=1, answer_format="last_line")
