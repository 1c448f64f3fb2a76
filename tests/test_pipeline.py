"""The whole pipeline on loopback: real learner and worker processes, ZeroMQ, gloo, tiny model."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from store_checks import assert_groups_complete

from buffer.store import read_table
from dynamo_async.config import load_config
from dynamo_async.learner.loop import Learner, LearnerContext
from dynamo_async.learner.trainer import replay_step

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
CLI = [sys.executable, "-m", "dynamo_async.cli"]


def _train_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if not r.get("eval")]


def _wait_for_steps(run_dir: Path, proc: subprocess.Popen, steps: int, timeout_s: float = 180) -> None:
    """Until ``metrics.jsonl`` has ``steps`` learner rows (``proc`` must keep running meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not (run_dir / "metrics.jsonl").exists() or len(_train_rows(run_dir)) < steps:
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.1)


def test_run_command_trains_tiny_model_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    start = time.monotonic()
    proc = subprocess.run(
        CLI + ["run", "--config", str(TINY), "--run-dir", str(run_dir), "trainer.eval_samples=1"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _train_rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3] and [r["version"] for r in rows] == [1, 2, 3]
    assert any(r["grad_norm"] > 0 for r in rows), "tiny task should give mixed rewards and a gradient"
    assert all(r["sync_error"] is None for r in rows)
    assert all(r["worker_idle_s"] >= 0 and r["learner_idle_s"] >= 0 for r in rows)
    assert (run_dir / "checkpoints" / "latest").read_text() == "step-000003"
    assert "held-out accuracy before" in proc.stdout + proc.stderr
    assert_groups_complete(run_dir)
    assert time.monotonic() - start < 240


def test_synchronous_run_drops_no_group_as_stale(tmp_path):
    """max_staleness 0: the gate opens for version v+1 only after the workers hold its weights,
    so no group is generated with old weights and then dropped (the learner's own ordering)."""
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        CLI
        + ["run", "--config", str(TINY), "--run-dir", str(run_dir), "buffer.max_staleness=0"]
        + ["trainer.eval_samples=1", "trainer.eval_every=0"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _train_rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["dropped_stale"] for r in rows] == [0, 0, 0]
    assert all(r["staleness_max"] == 0 for r in rows)


def _worker(connect: str, index: int) -> None:
    from workers.worker import run_worker

    run_worker(connect, index, "cpu", 4)


def test_killed_worker_loses_no_group_and_counts_none_twice(tmp_path):
    cfg = load_config(TINY, ["trainer.total_steps=5", "buffer.worker_timeout_s=2", "rollout.max_new_tokens=12"])
    learner = Learner(cfg, LearnerContext(tmp_path, show_progress=False)).start()
    ctx = mp.get_context("spawn")
    connect = f"127.0.0.1:{learner.endpoints.work}"
    workers = [ctx.Process(target=_worker, args=(connect, i)) for i in range(2)]
    for p in workers:
        p.start()
    victim = psutil.Process(workers[0].pid)

    def kill_when_busy() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and learner.service.counts["completions"] < 8:
            time.sleep(0.05)
        children = victim.children(recursive=True)
        victim.kill()
        psutil.wait_procs(children, timeout=15)

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    try:
        learner.run()
    finally:
        killer.join()
        learner.close()
        for p in workers:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert not victim.is_running() or victim.status() == psutil.STATUS_ZOMBIE
    assert [r["step"] for r in _train_rows(tmp_path)] == [1, 2, 3, 4, 5]
    assert_groups_complete(tmp_path)


def test_stopped_learner_resumes_step_version_and_statistics(tmp_path):
    run_dir = tmp_path / "run"
    args = ["--config", str(TINY), "--run-dir", str(run_dir), "trainer.total_steps=12", "trainer.checkpoint_every=1"]
    first = subprocess.Popen(CLI + ["run"] + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_steps(run_dir, first, 2)
    first.send_signal(signal.SIGTERM)
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 0, out
    stopped = len(_train_rows(run_dir))
    assert 2 <= stopped < 12
    ckpt = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text()
    stats = pq.read_table(ckpt / "buffer" / "prompt_stats.parquet").to_pydict()
    assert sum(stats["attempts"]) > 0

    second = subprocess.run(CLI + ["run", "--resume"] + args, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    rows = _train_rows(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 13)) and rows[-1]["version"] == 12
    final = pq.read_table(run_dir / "checkpoints" / "step-000012" / "buffer" / "prompt_stats.parquet").to_pydict()
    before = dict(zip(stats["prompt_id"], stats["attempts"]))
    after = dict(zip(final["prompt_id"], final["attempts"]))
    assert all(after[p] >= n for p, n in before.items())  # statistics carried over, then grew
    assert sum(after.values()) > sum(before.values())


def test_replay_of_a_recorded_batch_from_a_checkpoint_reproduces_the_loss(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        CLI + ["run", "--config", str(TINY), "--run-dir", str(run_dir), "trainer.checkpoint_every=1"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _train_rows(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    for k in (1, 2):
        replayed = replay_step(cfg, run_dir, run_dir / "checkpoints" / f"step-{k:06d}")
        assert replayed["loss"] == pytest.approx(rows[k]["loss"], rel=1e-6, abs=1e-9)
        assert replayed["grad_norm"] == pytest.approx(rows[k]["grad_norm"], rel=1e-6)


def test_a_new_run_refuses_an_earlier_runs_directory(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    proc = subprocess.run(
        CLI + ["run", "--config", str(TINY), "--run-dir", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "holds an earlier run" in proc.stderr
    assert "no checkpoint to resume from" in proc.stderr and f"rm -r {tmp_path}" in proc.stderr


def test_sighup_to_the_runs_process_group_checkpoints_by_time_and_keeps_the_newest(tmp_path):
    """A closed terminal (SIGHUP to every process of the run) stops it cleanly with a checkpoint;
    with checkpoint_every 0 the checkpoints come from checkpoint_every_s, and only the newest
    keep_checkpoints stay."""
    run_dir = tmp_path / "run"
    args = [
        "--config",
        str(TINY),
        "--run-dir",
        str(run_dir),
        "trainer.total_steps=40",
        "trainer.checkpoint_every=0",
        "trainer.checkpoint_every_s=0.001",
        "trainer.keep_checkpoints=2",
    ]
    run = subprocess.Popen(
        CLI + ["run"] + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    _wait_for_steps(run_dir, run, 3)
    os.killpg(run.pid, signal.SIGHUP)  # the group of exactly the processes this test started
    out, _ = run.communicate(timeout=120)
    assert run.returncode == 0, out
    steps = [r["step"] for r in _train_rows(run_dir)]
    assert 3 <= len(steps) < 40 and steps == list(range(1, len(steps) + 1))
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))
    last = f"step-{steps[-1]:06d}"
    assert (run_dir / "checkpoints" / "latest").read_text() == last
    # by time: a checkpoint at most every 1 ms, so nearly every step (a batch already waiting can
    # start its step within 1 ms of the last save); only the two newest stay
    assert len(kept) == 2 and kept[-1] == last and kept[0] < last, kept


def test_a_learner_killed_between_checkpoints_resumes_with_one_history(tmp_path):
    """kill -9 after the checkpoint of step 4, resume: every table shows each step exactly once."""
    from buffer.replay import iter_batches, summarize

    run_dir = tmp_path / "run"
    args = ["--config", str(TINY), "--run-dir", str(run_dir), "trainer.total_steps=10", "trainer.checkpoint_every=4"]
    first = subprocess.Popen(CLI + ["run"] + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_steps(run_dir, first, 5)
    learner = next(p for p in psutil.Process(first.pid).children() if "learner" in p.cmdline())
    learner.kill()  # SIGKILL: no checkpoint, no goodbye
    first.communicate(timeout=120)
    killed_at = len(_train_rows(run_dir))
    assert (run_dir / "checkpoints" / "latest").read_text() == "step-000004" and 4 < killed_at < 8

    second = subprocess.run(CLI + ["run", "--resume"] + args, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert [r["step"] for r in _train_rows(run_dir)] == list(range(1, 11))
    superseded = (run_dir / "metrics.superseded.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in superseded] == list(range(5, killed_at + 1))
    assert read_table(run_dir, "steps")["step"].to_pylist() == list(range(1, 11))
    assert [b.step for b in iter_batches(run_dir)] == list(range(1, 11))
    summary = summarize(run_dir)
    assert summary["steps"] == 10 and summary["duplicate_completions"] == 0
    assert_groups_complete(run_dir)
    raw_steps = read_table(run_dir, "steps", ["step"], superseded=True)["step"].to_pylist()
    # kept on disk, read once: the killed run's steps (perhaps one more batch handed out but not
    # trained when it died), then the resumed run's from step 5
    assert raw_steps[-6:] == list(range(5, 11))
    assert raw_steps[:-6] in (list(range(1, killed_at + 1)), list(range(1, killed_at + 2)))
    batches = read_table(run_dir, "batches", ["group_id", "step"]).to_pydict()
    owner = {}
    for g, s in zip(batches["group_id"], batches["step"]):
        assert owner.setdefault(g, s) == s  # a group id names one group, trained at one step
