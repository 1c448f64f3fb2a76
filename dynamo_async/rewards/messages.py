"""Typed messages between the math-verify scorer and its worker processes (docs/design.md sections 4.5, 5).

Every message is a ``msgspec.Struct`` encoded as msgpack and sent with
``Connection.send_bytes``; nothing is pickled. Parent -> worker: ``ScoreJob``. Worker -> parent:
``WorkerReady`` once after start-up, then one ``ScoreReply`` per job (a tagged union). Like the
run's wire protocol (``dynamo_async/protocol.py``), each message carries a version ``v``.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

SCORER_PROTOCOL_VERSION = 2
_SURROGATES = re.compile("[\ud800-\udfff]")

Status = Literal["ok", "no_answer", "timeout", "error"]
"""ok: math-verify ran (acc says whether it matched); no_answer: no final answer in the response's
``rewards.answer_format`` (no ``\\boxed{}`` / ``Answer:`` line);
timeout: math-verify's own or the pool's hard timeout fired, or a reward function ran past its
limit; error: math-verify raised, the gold answer did not parse, the worker died, or a reward
function raised or returned something other than a reward (``ScoreResult.detail`` says)."""


class ScoreResult(msgspec.Struct, frozen=True):
    """One response's success (``acc``, 0 unless status is "ok"), its training reward (the sum of
    the run's reward functions, ``rewards/spec.py``) and, when a function failed, why."""

    acc: int
    status: Status
    reward: float = 0.0
    detail: str = ""

    def __post_init__(self) -> None:
        assert self.acc in (0, 1), self.acc
        assert self.acc == 0 or self.status == "ok", (self.acc, self.status)


class _Msg(msgspec.Struct, frozen=True, kw_only=True):
    v: int = SCORER_PROTOCOL_VERSION


class ScoreJob(_Msg):
    """One response to score against its gold answer."""

    id: int
    response: str
    gold: str
    problem: str = ""
    source: str = ""
    fields: bytes = b""  # the dataset row, msgpack-encoded (b"": none)


class WorkerReady(_Msg, tag="ready"):
    """Sent once by a worker after math-verify is imported."""

    pid: int


class ScoreReply(_Msg, tag="result"):
    """The result of the job with the same id."""

    id: int
    result: ScoreResult


WorkerMessage = WorkerReady | ScoreReply


def encodable(text: str) -> str:
    """``text`` with every surrogate code point (UTF-8, and so msgpack, cannot carry one)
    replaced by U+FFFD, so that a job with it can cross the process boundary."""
    return _SURROGATES.sub("\ufffd", text) if _SURROGATES.search(text) else text
