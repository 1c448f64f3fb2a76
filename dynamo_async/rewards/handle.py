"""Parent-side handle of one math-verify worker process (docs/design.md section 4.5).

A handle owns exactly one process, the parent end of its pipe and a sender thread. Jobs are
written by the sender thread, so that a worker which stops reading (stuck, or SIGSTOPped) can
block only that thread, never the pool's dispatcher; killing the process unblocks it (EPIPE).
``stop`` ends only this handle's process: close the pipe and join, then terminate, then kill.
"""

from __future__ import annotations

import queue
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext

from dynamo_async.rewards.worker import worker_main

_JOIN_S = 2.0


class WorkerHandle:
    """One worker process: its pipe, the job it is scoring and the time limit of that job."""

    def __init__(
        self,
        ctx: SpawnContext,
        name: str,
        timeout_s: float,
        max_chars: int,
        start_timeout_s: float,
        answer_format: str = "boxed",
        spec: bytes = b"",
    ) -> None:
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(
            target=worker_main, args=(child_conn, timeout_s, max_chars, answer_format, spec), name=name, daemon=True
        )
        self.proc.start()
        child_conn.close()  # the child holds its own copy; EOF is seen once it exits
        self.conn: Connection = parent_conn
        self.ready = False
        self.job_id: int | None = None
        self.deadline = time.monotonic() + start_timeout_s
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_loop, name=f"{name}-send", daemon=True)
        self._sender.start()

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    @property
    def busy(self) -> bool:
        return self.job_id is not None

    def send(self, job_id: int, payload: bytes, hard_timeout_s: float) -> None:
        """Hand one encoded job to the worker; its hard deadline starts now."""
        assert self.ready and self.job_id is None
        self.job_id = job_id
        self.deadline = time.monotonic() + hard_timeout_s
        self._outbox.put(payload)

    def _send_loop(self) -> None:
        while (payload := self._outbox.get()) is not None:
            try:
                self.conn.send_bytes(payload)
            except (BrokenPipeError, ConnectionResetError):  # the worker died; the reader sees EOF
                return

    def stop(self, kill: bool) -> None:
        """End this worker's process (``kill``: at once) and release the pipe; idempotent."""
        if kill:
            self.proc.kill()
        self._outbox.put(None)
        self._sender.join(_JOIN_S)
        if self._sender.is_alive():  # blocked writing to a worker that does not read
            self.proc.kill()
            self._sender.join()
        self.conn.close()  # a live worker reads EOF and exits
        self.proc.join(_JOIN_S)
        if self.proc.exitcode is None:
            self.proc.terminate()
            self.proc.join(_JOIN_S)
        if self.proc.exitcode is None:  # SIGTERM is not delivered to a stopped process
            self.proc.kill()
            self.proc.join()
