"""math-verify scoring in a small pool of worker processes, with an outer hard timeout.

docs/design.md section 4.5: math-verify's timeouts use SIGALRM (main
thread only) and it can hang on pathological input, so it runs in worker processes (``spawn``
context: the parent runs threads, ZeroMQ and torch). A dispatcher thread hands one job at a
time to each idle worker. A worker that has not answered within ``hard_timeout_s`` is killed
(by its Process object), its job scores 0 with status "timeout", and a fresh worker replaces
it; a worker that dies is replaced and its job scores "error". Every job's future is resolved,
so callers never hang. Messages are msgspec msgpack bytes (``rewards/messages.py``).

Any string can be submitted: the response is cut to ``max_chars`` before it is queued, a gold
answer longer than that scores "error" at once, and surrogate code points (which UTF-8, and
so msgpack, cannot carry) become U+FFFD. A job that still fails to encode scores "error".
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING

import msgspec

from dynamo_async.errors import UsageError
from dynamo_async.rewards.dispatch import STAT_KEYS, Dispatcher, Job
from dynamo_async.rewards.extract import FORMATS
from dynamo_async.rewards.handle import WorkerHandle
from dynamo_async.rewards.messages import (
    ScoreResult,
    Status,
    WorkerMessage,
    encodable,
)
from dynamo_async.rewards.spec import RewardSpec, resolve, spec_from_config
from dynamo_async.rewards.worker import alarm_seconds

if TYPE_CHECKING:
    from dynamo_async.config.schema import RewardConfig, RunConfig

__all__ = ["MathVerifyScorer", "ScoreResult", "Status"]

_START_TIMEOUT_S = 120.0  # spawn re-imports the parent's main module, which may import torch


class MathVerifyScorer(Dispatcher):
    """Score responses against gold answers with math-verify in ``num_workers`` processes.

    The constructor returns once every worker has imported math-verify. ``hard_timeout_s``
    should leave room for math-verify's own timeouts (several alarms of ``timeout_s`` per
    answer). Workers are spawned, so a script that creates a scorer needs the
    ``if __name__ == "__main__":`` guard. Call ``close()`` or use it as a context manager.
    """

    def __init__(
        self,
        num_workers: int = 2,
        timeout_s: float = 5.0,
        hard_timeout_s: float = 30.0,
        max_chars: int = 50_000,
        answer_format: str = "boxed",
        spec: RewardSpec = RewardSpec(),
    ) -> None:
        if num_workers < 1:
            raise UsageError(f"num_workers: got {num_workers}, expected >= 1")
        if max_chars < 1:
            raise UsageError(f"max_chars: got {max_chars}, expected >= 1")
        if answer_format not in FORMATS:
            raise UsageError(f"answer_format: got {answer_format!r}, expected one of {FORMATS}")
        alarm_seconds(timeout_s)  # validates timeout_s
        if not hard_timeout_s > timeout_s:
            raise UsageError(
                f"hard_timeout_s: got {hard_timeout_s} with timeout_s={timeout_s}, "
                "expected the outer timeout to exceed the inner one"
            )
        self._timeout_s, self._hard_timeout_s, self._max_chars = timeout_s, hard_timeout_s, max_chars
        self._answer_format = answer_format
        for entry in spec.user_entries():
            resolve(entry)  # a missing module, file or function fails here, in one line
        self._spec, self._spec_bytes = spec, msgspec.msgpack.encode(spec)
        self._reported: set[str] = set()
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.Condition()
        self._queue: collections.deque[Job] = collections.deque()
        self._running: dict[int, Job] = {}  # job id -> job, for jobs sent to a worker
        self._ids = itertools.count()
        self._stats = dict.fromkeys(STAT_KEYS, 0)
        self._refusal: str | None = None  # set once the scorer stops accepting jobs
        self._closing = False
        self._start_failures = 0
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(WorkerMessage)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._workers = [self._new_worker(i) for i in range(num_workers)]
        self._thread = threading.Thread(target=self._run, name="math-verify-dispatch", daemon=True)
        self._thread.start()
        self._await_ready()

    @classmethod
    def from_config(cls, cfg: RewardConfig, spec: RewardSpec = RewardSpec()) -> MathVerifyScorer:
        """A scorer with a ``rewards`` section's pool settings and ``spec``'s functions."""
        return cls(cfg.num_workers, cfg.timeout_s, cfg.hard_timeout_s, cfg.max_chars, cfg.answer_format, spec)

    @classmethod
    def for_run(cls, cfg: RunConfig) -> MathVerifyScorer:
        """The scorer of a run: its ``rewards`` section and its reward functions."""
        return cls.from_config(cfg.rewards, spec_from_config(cfg))

    def __enter__(self) -> MathVerifyScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- public API -----------------------------------------------------------------------

    def submit(
        self, response: str, gold: str, problem: str = "", source: str = "", fields: bytes = b""
    ) -> Future[ScoreResult]:
        """Queue one response for scoring; returns at once with a future of its result.
        ``problem``, ``source`` and ``fields`` (the row, msgpack) are for the reward functions."""
        for name, value in (("response", response), ("gold", gold), ("problem", problem), ("source", source)):
            if not isinstance(value, str):
                raise UsageError(f"{name}: got {type(value).__name__}, expected str")
        future: Future[ScoreResult] = Future()
        with self._lock:
            if self._refusal is not None:
                raise RuntimeError(f"MathVerifyScorer does not accept jobs: {self._refusal}")
            # Keep the end, where the answer is; the worker cuts again (same result).
            cut = self._max_chars
            job = Job(
                next(self._ids),
                encodable(response[-cut:]),
                encodable(gold[:cut]),
                future,
                encodable(problem),
                source,
                fields,
            )
            if len(gold) <= cut:
                self._queue.append(job)
                self._wake()
                return future
        future.set_running_or_notify_cancel()  # no gold answer is this long: not worth a worker
        self._resolve(job, self._failed(job, "error"))
        return future

    def score(self, responses: Sequence[str], golds: Sequence[str]) -> list[ScoreResult]:
        """Score a batch in parallel across the pool; results in the order of ``responses``."""
        if len(responses) != len(golds):
            raise UsageError(f"got {len(responses)} responses and {len(golds)} gold answers, expected equal lengths")
        futures = [self.submit(r, g) for r, g in zip(responses, golds)]
        return [f.result() for f in futures]

    def stats(self) -> dict[str, int]:
        """Counts: scored, correct, no_answer, timeouts, errors, workers_replaced."""
        with self._lock:
            return dict(self._stats)

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (they change when a worker is replaced)."""
        with self._lock:
            return [w.pid for w in self._workers]

    def close(self) -> None:
        """Stop the dispatcher and exactly this scorer's worker processes; idempotent.

        Jobs not yet scored fail with RuntimeError.
        """
        with self._lock:
            if self._refusal is None:
                self._refusal = "closed"
            self._closing = True
            if self._wake_w >= 0:
                self._wake()
        if threading.current_thread() is self._thread:
            return  # called from a future's callback: the dispatcher stops after this job
        self._thread.join()

    # ----- start-up -------------------------------------------------------------------------

    def _new_worker(self, index: int) -> WorkerHandle:
        return WorkerHandle(
            self._ctx,
            f"math-verify-{index}",
            self._timeout_s,
            self._max_chars,
            _START_TIMEOUT_S,
            self._answer_format,
            self._spec_bytes,
        )

    def _await_ready(self) -> None:
        with self._lock:
            self._lock.wait_for(lambda: self._refusal is not None or all(w.ready for w in self._workers))
            refusal = self._refusal
        if refusal is not None:
            self.close()
            raise RuntimeError(f"math-verify workers failed to start: {refusal}")

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:  # the pipe is full, so a wake-up is already pending
            pass
