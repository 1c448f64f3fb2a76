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
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import wait

import msgspec

from dynamo_async.config.schema import RewardConfig
from dynamo_async.errors import UsageError
from dynamo_async.rewards.extract import FORMATS
from dynamo_async.rewards.handle import WorkerHandle
from dynamo_async.rewards.messages import (
    SCORER_PROTOCOL_VERSION,
    ScoreJob,
    ScoreResult,
    Status,
    WorkerMessage,
    WorkerReady,
    encodable,
)
from dynamo_async.rewards.worker import alarm_seconds

__all__ = ["MathVerifyScorer", "ScoreResult", "Status"]

STAT_KEYS = ("scored", "correct", "no_answer", "timeouts", "errors", "workers_replaced")
_STATUS_STAT = {"no_answer": "no_answer", "timeout": "timeouts", "error": "errors"}
_START_TIMEOUT_S = 120.0  # spawn re-imports the parent's main module, which may import torch
_MAX_START_FAILURES = 3  # consecutive worker deaths before start-up: the pool gives up


@dataclass
class _Job:
    id: int
    response: str
    gold: str
    future: Future[ScoreResult]


class MathVerifyScorer:
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
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.Condition()
        self._queue: collections.deque[_Job] = collections.deque()
        self._running: dict[int, _Job] = {}  # job id -> job, for jobs sent to a worker
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
    def from_config(cls, cfg: RewardConfig) -> MathVerifyScorer:
        return cls(
            num_workers=cfg.num_workers,
            timeout_s=cfg.timeout_s,
            hard_timeout_s=cfg.hard_timeout_s,
            max_chars=cfg.max_chars,
            answer_format=cfg.answer_format,
        )

    def __enter__(self) -> MathVerifyScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- public API -----------------------------------------------------------------------

    def submit(self, response: str, gold: str) -> Future[ScoreResult]:
        """Queue one response for scoring; returns at once with a future of its result."""
        for name, value in (("response", response), ("gold", gold)):
            if not isinstance(value, str):
                raise UsageError(f"{name}: got {type(value).__name__}, expected str")
        future: Future[ScoreResult] = Future()
        with self._lock:
            if self._refusal is not None:
                raise RuntimeError(f"MathVerifyScorer does not accept jobs: {self._refusal}")
            # Keep the end, where the answer is; the worker cuts again (same result).
            cut = self._max_chars
            job = _Job(next(self._ids), encodable(response[-cut:]), encodable(gold[:cut]), future)
            if len(gold) <= cut:
                self._queue.append(job)
                self._wake()
                return future
        future.set_running_or_notify_cancel()  # no gold answer is this long: not worth a worker
        self._resolve(job, ScoreResult(acc=0, status="error"))
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
            self._ctx, f"math-verify-{index}", self._timeout_s, self._max_chars, _START_TIMEOUT_S, self._answer_format
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

    # ----- dispatcher thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._closing:
                self._assign_jobs()
                self._poll()
                self._enforce_deadlines()
        finally:
            with self._lock:
                if self._refusal is None:
                    self._refusal = "the dispatcher thread stopped"
                self._lock.notify_all()
            for worker in self._workers:
                worker.stop(kill=False)
            self._fail_unscored()
            with self._lock:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_r = self._wake_w = -1

    def _assign_jobs(self) -> None:
        for worker in self._workers:
            if not worker.ready or worker.busy or not worker.proc.is_alive():
                continue  # a dead worker is replaced once its pipe reports EOF
            encoded = self._next_encoded()
            if encoded is None:
                return
            worker.send(encoded[0].id, encoded[1], self._hard_timeout_s)

    def _next_encoded(self) -> tuple[_Job, bytes] | None:
        """The next queued job and its message; a job that does not encode scores "error"."""
        while (job := self._next_job()) is not None:
            self._running[job.id] = job  # from here on, a dispatcher that stops fails this job
            try:
                return job, self._encoder.encode(ScoreJob(id=job.id, response=job.response, gold=job.gold))
            except UnicodeEncodeError:  # submit() replaced surrogates; nothing else is unencodable
                self._resolve(self._running.pop(job.id), ScoreResult(acc=0, status="error"))
        return None

    def _next_job(self) -> _Job | None:
        with self._lock:
            while self._queue:
                job = self._queue.popleft()
                if job.future.set_running_or_notify_cancel():  # False: the caller cancelled it
                    return job
        return None

    def _poll(self) -> None:
        by_conn = {w.conn: w for w in self._workers}
        deadlines = [w.deadline for w in self._workers if w.busy or not w.ready]
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        for ready in wait([*by_conn, self._wake_r], timeout):
            if isinstance(ready, int):  # the wake-up pipe
                self._drain_wake()
            else:
                self._on_readable(by_conn[ready])

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:  # drained
            pass

    def _on_readable(self, worker: WorkerHandle) -> None:
        try:
            data = worker.conn.recv_bytes()
        except (EOFError, ConnectionResetError):  # the worker process died
            self._replace(worker, "error")
            return
        message = self._decoder.decode(data)
        assert message.v == SCORER_PROTOCOL_VERSION, message.v
        if isinstance(message, WorkerReady):
            assert message.pid == worker.pid
            with self._lock:
                worker.ready = True
                self._start_failures = 0
                self._lock.notify_all()
            return
        assert message.id == worker.job_id, (message.id, worker.job_id)
        worker.job_id = None
        self._resolve(self._running.pop(message.id), message.result)

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for worker in list(self._workers):
            if (worker.busy or not worker.ready) and worker.deadline <= now:
                self._replace(worker, "timeout")

    def _replace(self, worker: WorkerHandle, status: Status) -> None:
        """Kill ``worker``, start a fresh one, then score the killed worker's job 0 with ``status``."""
        worker.stop(kill=True)
        index = self._workers.index(worker)
        with self._lock:
            self._stats["workers_replaced"] += 1
            if not worker.ready:
                self._start_failures += 1
            if self._start_failures >= _MAX_START_FAILURES:
                self._refusal = (
                    f"{self._start_failures} workers in a row exited or hung before "
                    f"start-up finished (last exit code {worker.proc.exitcode})"
                )
                self._closing = True
                self._lock.notify_all()
        if not self._closing:
            replacement = self._new_worker(index)
            with self._lock:
                self._workers[index] = replacement
        if worker.job_id is not None:
            self._resolve(self._running.pop(worker.job_id), ScoreResult(acc=0, status=status))

    def _resolve(self, job: _Job, result: ScoreResult) -> None:
        with self._lock:
            self._stats["scored"] += 1
            self._stats["correct"] += result.acc
            if result.status in _STATUS_STAT:
                self._stats[_STATUS_STAT[result.status]] += 1
        job.future.set_result(result)

    def _fail_unscored(self) -> None:
        with self._lock:
            queued, self._queue = list(self._queue), collections.deque()
            reason = self._refusal
        for job in queued:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(RuntimeError(f"MathVerifyScorer: {reason}"))
        for job in self._running.values():
            job.future.set_exception(RuntimeError(f"MathVerifyScorer: {reason}"))
        self._running.clear()
