"""A run with CURVE keys end to end: the learner with --keys, an authorized worker trains the run;
a worker with a key the learner never authorized gets one line and nothing into the store; off
loopback, a learner without keys refuses to start."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from buffer.store import read_table

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
CLI = [sys.executable, "-m", "dynamo_async.cli"]


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, f"exited with {proc.returncode}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_an_authorized_worker_trains_a_run_and_a_stranger_is_refused(tmp_path):
    keys, other, run_dir, ready = tmp_path / "keys", tmp_path / "other", tmp_path / "run", tmp_path / "ready.json"
    assert subprocess.run(CLI + ["keys", "--out", str(keys)], capture_output=True).returncode == 0
    assert subprocess.run(CLI + ["keys", "--out", str(other)], capture_output=True).returncode == 0
    learner = subprocess.Popen(
        CLI + ["learner", "--config", str(TINY), "--run-dir", str(run_dir), "--port", "0"]
        + ["--keys", str(keys), "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        _wait_for(ready, learner)
        where = f"127.0.0.1:{json.loads(ready.read_text())['work']}"
        stranger = subprocess.run(
            CLI + ["workers", "--connect", where, "--key", str(other / "clients" / "client-0.key_secret")]
            + ["--server-key", str(keys / "server.key")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert stranger.returncode != 0 and "refused this worker's key" in stranger.stderr, stranger.stderr[-2000:]
        worker = subprocess.run(
            CLI + ["workers", "--connect", where, "--key", str(keys / "clients" / "client-0.key_secret")]
            + ["--server-key", str(keys / "server.key")],
            capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert worker.returncode == 0, worker.stderr[-2000:]
        out, _ = learner.communicate(timeout=120)
        assert learner.returncode == 0, out[-2000:]
    finally:
        if learner.poll() is None:
            learner.kill()
            learner.wait()
    workers = set(read_table(run_dir, "completions", ["worker_id"])["worker_id"].to_pylist())
    assert len(workers) == 1  # only the authorized worker's completions were stored
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_a_learner_serving_other_machines_without_keys_refuses_to_start(tmp_path):
    cmd = CLI + ["learner", "--config", str(TINY), "--run-dir", str(tmp_path / "run"), "--host", "0.0.0.0"]
    proc = subprocess.run(cmd + ["--port", "0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "without --keys" in proc.stderr and "dynamo-async keys --out" in proc.stderr and "--insecure" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
