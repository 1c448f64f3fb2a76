"""Workers outlive the learner: kill -9 the learner, restart it with --resume on the same address,
and the same worker processes finish the run, with no group lost or doubled."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil

from buffer.replay import iter_batches, summarize
from buffer.store import read_table

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
CLI = [sys.executable, "-m", "dynamo_async.cli"]


def _train_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return [r["step"] for r in rows if not r.get("eval")]


def _wait(predicate, proc: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert proc.poll() is None, f"exited with {proc.returncode}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_the_same_workers_finish_a_run_whose_learner_was_killed_and_resumed(tmp_path):
    run_dir, ready = tmp_path / "run", tmp_path / "learner.json"
    config = ["--config", str(TINY), "--run-dir", str(run_dir), "trainer.total_steps=10", "trainer.checkpoint_every=4"]
    first = subprocess.Popen(CLI + ["learner", "--port", "0", "--ready-file", str(ready)] + config)
    workers = None
    try:
        _wait(ready.exists, first)
        port = json.loads(ready.read_text())["work"]
        workers = subprocess.Popen(CLI + ["workers", "--connect", f"127.0.0.1:{port}", "--num-workers", "1"])
        _wait(lambda: len(_train_steps(run_dir)) >= 5, first)
        first.kill()  # SIGKILL: no checkpoint, no shutdown for the workers
        first.wait(timeout=30)
        killed_at = len(_train_steps(run_dir))
        assert (run_dir / "checkpoints" / "latest").read_text() == "step-000004" and 4 < killed_at < 8
        pids = {p.pid for p in psutil.Process(workers.pid).children(recursive=True)}
        assert workers.poll() is None and pids

        restarted = time.time()
        second = subprocess.run(CLI + ["learner", "--resume", "--port", str(port)] + config, timeout=300)
        assert second.returncode == 0
        assert workers.wait(timeout=60) == 0  # the resumed learner's shutdown stopped them
    finally:
        for proc in (first, workers):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()

    assert _train_steps(run_dir) == list(range(1, 11))
    completions = read_table(run_dir, "completions").to_pydict()
    after = [w for w, t in zip(completions["worker_id"], completions["received_at"]) if t > restarted]
    assert after and {int(w.rsplit("-", 2)[1]) for w in after} <= pids  # the same worker processes
    assert [b.step for b in iter_batches(run_dir)] == list(range(1, 11))
    summary = summarize(run_dir)
    assert summary["steps"] == 10 and summary["duplicate_completions"] == 0
    batches = read_table(run_dir, "batches", ["group_id", "sample_index", "step"]).to_pydict()
    assert max(Counter(zip(batches["group_id"], batches["sample_index"])).values()) == 1
    owner: dict[int, int] = {}
    for g, s in zip(batches["group_id"], batches["step"]):
        assert owner.setdefault(g, s) == s  # a group id names one group, trained at one step
    resumed = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert resumed["version"] == 10
