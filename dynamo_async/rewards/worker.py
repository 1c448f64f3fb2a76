"""The scoring rule and the main loop of one math-verify worker process (docs/design.md section 4.5).

Rule (as prime-rl/verifiers ``verify_response``): keep the last ``max_chars`` characters of the
response, take its final answer in ``rewards.answer_format`` (its last ``\\boxed{}``, its last
``Answer:`` line, or whichever comes last; none: "no_answer"; ``extract.py``), then
``verify(parse("\\boxed{gold}"), parse("\\boxed{pred}"))``. math-verify's own timeouts use
SIGALRM, so they only work in a main thread: this module runs as the main thread of its own
process. ``raise_on_error=True`` makes math-verify raise its timeouts instead of logging them,
so that they can be counted. Each ``parse`` call and each (gold, pred) candidate pair in
``verify`` sets its own alarm, so one answer may take several times ``timeout_s``.
"""

from __future__ import annotations

import functools
import math
import os
import signal
from multiprocessing.connection import Connection

import msgspec

from dynamo_async.errors import UsageError
from dynamo_async.rewards.extract import final_answer
from dynamo_async.rewards.messages import SCORER_PROTOCOL_VERSION, ScoreJob, ScoreReply, ScoreResult, WorkerReady


def alarm_seconds(timeout_s: float) -> int:
    """math-verify passes its timeout to ``signal.alarm``, which needs a whole number >= 1.

    (A float makes ``signal.alarm`` raise TypeError, which ``parse(raise_on_error=False)``
    silently turns into "no parse"; 0 disables the timeout.)
    """
    if not timeout_s > 0:
        raise UsageError(f"math-verify timeout: got {timeout_s}, expected > 0 seconds")
    return max(1, math.ceil(timeout_s))


@functools.lru_cache(maxsize=1024)
def _parse_gold(gold: str, timeout: int) -> list:
    """Parsed gold answer; cached because every rollout of a prompt shares it."""
    from math_verify import parse

    return parse("\\boxed{" + gold + "}", parsing_timeout=timeout, raise_on_error=True)


def score_response(
    response: str, gold: str, timeout_s: float, max_chars: int, answer_format: str = "boxed"
) -> ScoreResult:
    """Score one response; must run in a main thread (math-verify's SIGALRM timeouts)."""
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    pred = final_answer(response[-max_chars:], answer_format)
    if pred is None or not pred.strip():
        return ScoreResult(acc=0, status="no_answer")
    timeout = alarm_seconds(timeout_s)
    try:
        gold_parsed = _parse_gold(gold, timeout)
        if not gold_parsed:
            return ScoreResult(acc=0, status="error")
        pred_parsed = parse("\\boxed{" + pred + "}", parsing_timeout=timeout, raise_on_error=True)
        correct = verify(gold_parsed, pred_parsed, timeout_seconds=timeout, raise_on_error=True)
    except TimeoutException:  # derives from BaseException: `except Exception` would miss it
        return ScoreResult(acc=0, status="timeout")
    except Exception:  # noqa: BLE001 - sympy/latex2sympy raise arbitrary types; scored 0, counted
        return ScoreResult(acc=0, status="error")
    return ScoreResult(acc=int(bool(correct)), status="ok", reward=float(bool(correct)))


def worker_main(
    conn: Connection, timeout_s: float, max_chars: int, answer_format: str = "boxed", spec: bytes = b""
) -> None:
    """Process entry point: import math-verify and the run's reward functions (``spec``: a
    msgpack ``RewardSpec``; empty: math-verify alone), announce readiness, then score jobs until
    the parent hangs up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    import math_verify  # noqa: F401 - import before announcing readiness

    from dynamo_async.rewards.functions import RewardFunctions
    from dynamo_async.rewards.spec import RewardSpec

    reward_spec = msgspec.msgpack.decode(spec, type=RewardSpec) if spec else RewardSpec()
    functions = RewardFunctions(reward_spec, timeout_s, max_chars, answer_format)
    encoder = msgspec.msgpack.Encoder()
    decoder = msgspec.msgpack.Decoder(ScoreJob)
    try:
        conn.send_bytes(encoder.encode(WorkerReady(pid=os.getpid())))
        while True:
            job = decoder.decode(conn.recv_bytes())
            assert job.v == SCORER_PROTOCOL_VERSION, job.v
            conn.send_bytes(encoder.encode(ScoreReply(id=job.id, result=functions.score(job))))
    except (EOFError, BrokenPipeError, ConnectionResetError):  # the parent hung up: shut down
        return
