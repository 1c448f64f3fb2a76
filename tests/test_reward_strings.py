"""The math-verify pool survives any string (docs/design.md section 4.5): lone surrogates, NUL,
control characters and huge inputs each end with a score or a counted error, never an
unresolved future, and the pool scores a normal response afterwards."""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from dynamo_async.rewards import MathVerifyScorer, ScoreResult
from dynamo_async.rewards.dispatch import Job
from dynamo_async.rewards.messages import encodable

WAIT_S = 60.0  # a result comes within the pool's hard timeout (30 s) plus a replacement's start
MAX_CHARS = 50_000
CONTROL = "".join(chr(c) for c in range(32)) + "\x7f"


@pytest.fixture(scope="module")
def scorer():
    with MathVerifyScorer(num_workers=1, timeout_s=2.0, hard_timeout_s=20.0, max_chars=MAX_CHARS) as s:
        yield s


def _still_scores(scorer: MathVerifyScorer) -> None:
    assert scorer.submit(r"so \boxed{4}", "4").result(WAIT_S) == ScoreResult(acc=1, status="ok", reward=1.0)


@pytest.mark.parametrize(
    "response, gold",
    [
        ("\ud800", "1"),
        ("\udfff\ud800 and \\boxed{\ud800}", "1"),
        ("\x00", "1"),
        ("\\boxed{\x00}", "1"),
        ("\\boxed{1\x00}", "1"),
        (CONTROL + "\\boxed{" + CONTROL + "}", "1"),
        ("x" * (10 << 20), "1"),  # 10 MB: cut to max_chars before it is queued
        ("\\boxed{" * (1 << 20), "1"),
        ("\\boxed{1}", "\ud800"),
        ("\\boxed{1}", "\x00" + CONTROL),
    ],
    ids=[
        "lone-surrogate",
        "surrogates-in-box",
        "nul",
        "nul-in-box",
        "nul-after-answer",
        "control-characters",
        "huge-10MB",
        "huge-unbalanced-boxes",
        "surrogate-gold",
        "control-gold",
    ],
)
def test_any_string_gets_a_result_and_the_pool_keeps_scoring(scorer, response, gold):
    before = scorer.stats()
    result = scorer.submit(response, gold).result(WAIT_S)
    assert isinstance(result, ScoreResult) and result.status in ("ok", "no_answer", "timeout", "error")
    after = scorer.stats()
    assert after["scored"] == before["scored"] + 1
    _still_scores(scorer)


def test_a_surrogate_next_to_the_answer_does_not_hide_it(scorer):
    assert scorer.submit("\ud800 so \\boxed{7} \udc00", "7").result(WAIT_S) == ScoreResult(
        acc=1, status="ok", reward=1.0
    )


def test_huge_gold_answer_scores_an_error_at_once_and_is_counted(scorer):
    before = scorer.stats()
    future = scorer.submit("\\boxed{1}", "1" * (MAX_CHARS + 1))
    assert future.done(), "a gold answer longer than max_chars was queued"
    assert future.result() == ScoreResult(acc=0, status="error")
    assert scorer.stats()["errors"] == before["errors"] + 1
    _still_scores(scorer)


def test_a_job_that_does_not_encode_scores_an_error_and_the_dispatcher_lives(scorer):
    """The dispatcher's own guard: a job that reaches it unencodable (submit() never queues one)
    resolves with "error" and the jobs after it are scored."""
    bad: Future[ScoreResult] = Future()
    with scorer._lock:
        scorer._queue.append(Job(-1, "\ud800", "1", bad))
        scorer._wake()
    assert bad.result(WAIT_S) == ScoreResult(acc=0, status="error")
    _still_scores(scorer)


def test_encodable_replaces_only_surrogates():
    assert encodable("a\ud800b\udfffc") == "a\ufffdb\ufffdc"
    text = "plain \x00 \u00e9 \U0001f600"
    assert encodable(text) is text
