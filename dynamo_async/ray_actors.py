"""The Ray actor of ``dynamo-async ray``: one role's CLI as a subprocess on the node Ray placed it on.

An actor only starts, watches and stops its process (``dynamo-async learner`` or ``dynamo-async
workers``); the learner and its workers talk over ZeroMQ and torch.distributed exactly as under
``dynamo-async run`` (docs/design.md). What crosses Ray is small and plain: argument lists, file
contents (the resolved config, CURVE keys), exit codes and the learner's ready JSON, no data and
no weights. This module does not import Ray at import time; ``ray_launch.py`` wraps the class.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from dynamo_async.launch import _child_of

READY = "learner.json"  # the learner's ready file, in the actor's folder


class RoleProcess:
    """One process of the run, on the node Ray placed this actor on.

    ``files`` (relative name -> bytes) are written into a private folder first, readable by its
    owner only; in ``argv``, ``{dir}`` stands for that folder and ``{node_ip}`` for this node's
    address as Ray knows it. ``env`` is added to the process's environment. An ``argv`` holding
    ``{learner}`` (the learner's HOST:PORT, not known yet) waits for ``start``; any other starts
    at once, when Ray constructs the actor (again after a restart). So the worker actors can be
    placed and started while the learner loads its model.
    """

    def __init__(self, label: str, argv: list[str], files: dict[str, bytes], env: dict[str, str]) -> None:
        import ray

        self.label, self.env = label, env
        self.dir = Path(tempfile.mkdtemp(prefix="dynamo-async-ray-"))
        for name, data in files.items():
            path = self.dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(0o600)
        self.node_ip = ray.util.get_node_ip_address()
        self.argv = [a.replace("{dir}", str(self.dir)).replace("{node_ip}", self.node_ip) for a in argv]
        self.proc: subprocess.Popen | None = None
        if not any("{learner}" in a for a in self.argv):
            self.start("")

    def start(self, learner: str) -> None:
        """Start the process (once), ``{learner}`` in its arguments replaced by ``learner``."""
        if self.proc is not None:
            return
        argv = [a.replace("{learner}", learner) for a in self.argv]
        cli = [sys.executable, "-m", "dynamo_async.cli"]
        # the process gets SIGTERM if this actor's process dies, even by SIGKILL (ray.kill)
        self.proc = subprocess.Popen(cli + argv, env={**os.environ, **self.env}, preexec_fn=_child_of(os.getpid()))

    def __repr__(self) -> str:
        return self.label  # Ray prefixes this actor's log lines with it

    def state(self) -> tuple[int | None, str | None, int, bool]:
        """(exit code, or None while running or not started; the learner's ready JSON, or None
        until written; this actor's process id, new after each restart; whether it started)."""
        ready = self.dir / READY
        code = None if self.proc is None else self.proc.poll()
        return code, (ready.read_text() if ready.exists() else None), os.getpid(), self.proc is not None

    def stop(self, grace_s: float) -> int:
        """SIGTERM the process, SIGKILL it after ``grace_s``; its exit code (0 if this SIGTERM ended
        it before it could install its own handler). Removes the private folder."""
        if self.proc is None:  # never started: nothing to stop
            shutil.rmtree(self.dir, ignore_errors=True)
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
        return 0 if self.proc.returncode == -signal.SIGTERM else self.proc.returncode
