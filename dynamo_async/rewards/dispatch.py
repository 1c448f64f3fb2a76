"""The dispatcher thread of ``MathVerifyScorer`` (``math_verify_pool.py``; docs/design.md 4.5).

It hands one job at a time to each idle worker process, reads their replies, kills and replaces
a worker past its job's hard deadline (the job scores "timeout") or one that died ("error"),
and resolves every job's future, so callers never hang. A reward function's failure
(``ScoreResult.detail``) is printed the first time it is seen and counted with the rest.
"""

from __future__ import annotations

import collections
import os
import sys
import time
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import wait

from dynamo_async.rewards.handle import WorkerHandle
from dynamo_async.rewards.messages import SCORER_PROTOCOL_VERSION, ScoreJob, ScoreResult, Status, WorkerReady, encodable

STAT_KEYS = ("scored", "correct", "no_answer", "timeouts", "errors", "workers_replaced")
_STATUS_STAT = {"no_answer": "no_answer", "timeout": "timeouts", "error": "errors"}
_MAX_REPORTED = 20  # distinct reward-function failures printed; the rest are counted
_MAX_START_FAILURES = 3  # consecutive worker deaths before start-up: the pool gives up


@dataclass
class Job:
    id: int
    response: str
    gold: str
    future: Future[ScoreResult]
    problem: str = ""
    source: str = ""
    fields: bytes = b""


class Dispatcher:
    """The dispatcher thread's methods; the state is ``MathVerifyScorer``'s (set in its
    constructor, shared under ``self._lock``)."""

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

    def _next_encoded(self) -> tuple[Job, bytes] | None:
        """The next queued job and its message; a job that does not encode scores "error"."""
        while (job := self._next_job()) is not None:
            self._running[job.id] = job  # from here on, a dispatcher that stops fails this job
            try:
                message = ScoreJob(job.id, job.response, job.gold, job.problem, encodable(job.source), job.fields)
                return job, self._encoder.encode(message)
            except UnicodeEncodeError:  # submit() replaced surrogates; nothing else is unencodable
                self._resolve(self._running.pop(job.id), self._failed(job, "error"))
        return None

    def _next_job(self) -> Job | None:
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
            job = self._running.pop(worker.job_id)
            self._resolve(job, self._failed(job, status))

    def _failed(self, job: Job, status: Status) -> ScoreResult:
        """A job no worker scored: no success, math-verify's reward for a wrong answer."""
        return ScoreResult(acc=0, status=status, reward=self._spec.failure_reward(job.source))

    def _resolve(self, job: Job, result: ScoreResult) -> None:
        if result.detail:
            self._report(result.detail)
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

    def _report(self, detail: str) -> None:
        """Print a reward function's failure the first time it is seen (up to 20 kinds)."""
        with self._lock:
            if detail in self._reported or len(self._reported) > _MAX_REPORTED:
                return
            self._reported.add(detail)
            last = len(self._reported) > _MAX_REPORTED
        more = " (further kinds are only counted)" if last else ""
        print(f"reward scoring: {detail}; scored without success{more}", file=sys.stderr, flush=True)
