"""Tests of last-box extraction and the math-verify process pool (docs/design.md section 4.5)."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import Future

import pytest

from dynamo_async.config.schema import RewardConfig
from dynamo_async.rewards import MathVerifyScorer, ScoreResult, last_boxed, score_response

OK1 = ScoreResult(acc=1, status="ok", reward=1.0)
OK0 = ScoreResult(acc=0, status="ok")
NO_ANSWER = ScoreResult(acc=0, status="no_answer")
TIMEOUT = ScoreResult(acc=0, status="timeout")


@pytest.fixture(scope="module")
def scorer():
    with MathVerifyScorer(num_workers=2, timeout_s=5.0, hard_timeout_s=30.0) as s:
        yield s


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# ----- last_boxed ----------------------------------------------------------------------------


def test_last_boxed_nested_braces():
    assert last_boxed(r"so \boxed{\frac{1}{\sqrt{2}}} done") == r"\frac{1}{\sqrt{2}}"


def test_last_boxed_last_wins():
    assert last_boxed(r"\boxed{1} no, \fbox{2}, finally \boxed{3}.") == "3"


def test_last_boxed_none_and_unbalanced():
    assert last_boxed("the answer is 5") is None
    assert last_boxed(r"\boxed{1} then \boxed{\frac{1}{2}") is None
    assert last_boxed(r"\boxed") is None


def test_last_boxed_forms():
    assert last_boxed(r"$\boxed 5$") == "5"
    assert last_boxed(r"\fbox{7}") == "7"
    assert last_boxed(r"\boxed {3}") == "3"
    assert last_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"
    assert last_boxed(r"\boxed{4} \boxedfoo") == "4"  # not a box command
    assert last_boxed(r"\boxed{}") == ""


# ----- scoring rule in-process -----------------------------------------------------------------


def test_score_response_in_main_thread():
    assert score_response(r"\boxed{12}", "12", 5, 1000) == OK1
    assert score_response(r"\boxed{}", "12", 5, 1000) == NO_ANSWER
    assert score_response("12", "12", 5, 1000) == NO_ANSWER


# ----- the pool ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response, gold, expected",
    [
        (r"7 + 5 = \boxed{12}", "12", OK1),
        (r"\boxed{13}", "12", OK0),
        (r"\boxed{0.5}", r"\frac{1}{2}", OK1),
        (r"\boxed{\frac{1}{2}}", "0.5", OK1),
        (r"\boxed{ 5 }", "5", OK1),
        (r"\boxed{-28}", "-28", OK1),
        (r"\boxed{28}", "-28", OK0),
        ("the answer is 12", "12", NO_ANSWER),
    ],
)
def test_score_cases(scorer, response, gold, expected):
    assert scorer.score([response], [gold]) == [expected]


def test_submit_returns_future(scorer):
    future = scorer.submit(r"\boxed{3}", "3")
    assert isinstance(future, Future)
    assert future.result(timeout=30) == OK1


def test_batch_order_preserved_and_stats(scorer):
    before = scorer.stats()
    responses = [rf"\boxed{{{i if i % 3 else i + 1}}}" for i in range(24)] + ["none"]
    golds = [str(i) for i in range(24)] + ["1"]
    results = scorer.score(responses, golds)
    assert results == [OK0 if i % 3 == 0 else OK1 for i in range(24)] + [NO_ANSWER]
    after = scorer.stats()
    delta = {k: after[k] - before[k] for k in after}
    assert delta == {"scored": 25, "correct": 16, "no_answer": 1, "timeouts": 0, "errors": 0, "workers_replaced": 0}


def test_long_response_scored_from_its_end(scorer):
    filler = "x" * 120_000
    assert scorer.score([r"\boxed{1}" + filler + r"\boxed{42}"], ["42"]) == [OK1]
    # the only box lies before the last max_chars characters: cut away
    assert scorer.score([r"\boxed{42}" + filler], ["42"]) == [NO_ANSWER]


def test_user_errors(scorer):
    with pytest.raises(ValueError, match="expected equal lengths"):
        scorer.score(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="expected str"):
        scorer.submit(5, "5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hard_timeout_s"):
        MathVerifyScorer(timeout_s=5.0, hard_timeout_s=2.0)
    with pytest.raises(ValueError, match="num_workers"):
        MathVerifyScorer(num_workers=0)


def test_stuck_worker_is_replaced():
    with MathVerifyScorer(num_workers=2, timeout_s=1.0, hard_timeout_s=2.0) as s:
        pids = s.worker_pids()
        os.kill(pids[0], signal.SIGSTOP)  # the first idle worker gets the first job
        start = time.monotonic()
        futures = [s.submit(rf"\boxed{{{i}}}", str(i)) for i in range(6)]
        results = [f.result(timeout=20) for f in futures]
        assert time.monotonic() - start < 15
        assert results.count(TIMEOUT) == 1 and results.count(OK1) == 5
        stats = s.stats()
        assert stats["workers_replaced"] >= 1 and stats["timeouts"] == 1
        assert not _alive(pids[0])
        assert pids[0] not in s.worker_pids()
        # still scoring, and a pathological answer times out instead of hanging
        assert s.score([r"\boxed{7}", r"\boxed{8}", r"\boxed{9^{9^{9^{9}}}}"], ["7", "7", "1"]) == [OK1, OK0, TIMEOUT]
        all_pids = set(pids) | set(s.worker_pids())
    assert not any(_alive(pid) for pid in all_pids)


def test_dead_worker_job_scores_error():
    with MathVerifyScorer(num_workers=2, timeout_s=1.0, hard_timeout_s=5.0) as s:
        pids = s.worker_pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        future = s.submit(r"\boxed{1}", "1")
        _wait_until(future.running)  # handed to a (stopped) worker
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        assert future.result(timeout=10) == ScoreResult(acc=0, status="error")
        _wait_until(lambda: not set(pids) & set(s.worker_pids()))  # both replaced
        assert s.score([r"\boxed{2}"], ["2"]) == [OK1]
        stats = s.stats()
        assert stats["errors"] == 1 and stats["workers_replaced"] == 2


def test_close_is_idempotent_and_stops_its_processes():
    s = MathVerifyScorer.from_config(RewardConfig(num_workers=1, timeout_s=1.0, hard_timeout_s=5.0))
    pids = s.worker_pids()
    assert len(pids) == 1 and _alive(pids[0])
    assert s.score([r"\boxed{2}"], ["2"]) == [OK1]
    s.close()
    s.close()
    assert not _alive(pids[0])
    with pytest.raises(RuntimeError, match="closed"):
        s.submit(r"\boxed{2}", "2")
