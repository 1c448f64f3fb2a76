"""``dynamo-async ray`` on a real local Ray cluster (started and shut down by the command): the
tiny config trains through Ray-placed learner and worker actors, and nothing is left behind."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from buffer.store import read_table
from dynamo_async.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
CLI = [sys.executable, "-m", "dynamo_async.cli"]


def _run_watching_descendants(argv: list[str], timeout_s: float = 300) -> tuple[subprocess.CompletedProcess, dict]:
    """Run ``argv``; also every process that was its descendant at some point (pid -> (process,
    command line)),
    sampled while it ran: Ray's cluster processes, the actors, the learner and worker processes."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: dict[int, tuple[psutil.Process, str]] = {}
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not done.wait(0.2):
            try:
                children = root.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            for child in children:
                if child.pid not in seen:
                    try:
                        seen[child.pid] = (child, " ".join(child.cmdline()))
                    except psutil.NoSuchProcess:
                        pass

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    finally:
        done.set()
        sampler.join()
    return subprocess.CompletedProcess(argv, proc.returncode, out, None), seen


def _alive(procs: dict) -> list[str]:
    """The sampled processes still running (the same process: pid and start time match)."""
    left = []
    for p, cmdline in procs.values():
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(cmdline)
        except psutil.NoSuchProcess:
            pass
    return left


def test_ray_command_trains_tiny_config_with_two_worker_actors_and_leaves_no_process(tmp_path):
    run_dir = tmp_path / "run"
    argv = CLI + ["ray", "--config", str(TINY), "--run-dir", str(run_dir), "--num-workers", "2"]
    argv += ["--num-cpus", "2", "--worker-cpus", "0.5", "trainer.eval_samples=1"]
    proc, seen = _run_watching_descendants(argv)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "Started a local Ray instance" in proc.stdout
    assert proc.stdout.count("started 1 worker(s) -> 127.0.0.1:") == 2  # one workers process per actor
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if not r.get("eval")]
    assert [r["step"] for r in rows] == [1, 2, 3] and [r["version"] for r in rows] == [1, 2, 3]
    assert all(r["sync_error"] is None for r in rows)
    assert (run_dir / "checkpoints" / "latest").read_text() == "step-000003"
    batches = read_table(run_dir, "batches").to_pydict()
    assert sorted(set(batches["step"])) == [1, 2, 3]
    # each trained sample came from a worker process this command started (worker id: host-pid-index)
    trained_pids = {int(w.split("-")[-2]) for w in batches["worker_id"]}
    assert trained_pids and trained_pids <= set(seen), trained_pids
    assert any("dynamo_async.cli learner" in cmdline for _, cmdline in seen.values())
    assert any("raylet" in cmdline for _, cmdline in seen.values())  # the local cluster was ours
    assert _alive(seen) == []


def test_ray_exit_code_is_the_learners_and_the_cluster_stops_when_it_fails_early(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("{}\n")  # an earlier run: the learner refuses it, exit 2
    argv = CLI + ["ray", "--config", str(TINY), "--run-dir", str(tmp_path), "--num-workers", "1", "--num-cpus", "2"]
    proc, seen = _run_watching_descendants(argv, timeout_s=180)
    assert proc.returncode == 2, proc.stdout[-4000:]
    assert "learner ready" not in proc.stdout and "started 1 worker" not in proc.stdout
    assert _alive(seen) == []


def test_without_ray_the_command_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ModuleNotFoundError
    code = main(["ray", "--config", str(TINY), "--run-dir", str(tmp_path / "run"), "--num-workers", "1"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "pip install -e '.[ray]'" in err


def test_bad_ray_arguments_are_one_line_errors_before_ray_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # would fail differently if the options got that far
    base = ["ray", "--config", str(TINY), "--run-dir", str(tmp_path / "run")]
    for extra, says in [
        (["--num-workers", "0"], "got --num-workers 0, --capacity 8, expected both >= 1"),
        (["--num-workers", "1", "--learner-gpus", "2"], "--learner-gpus: got 2.0, expected at most 1"),
        (["--num-workers", "1", "--device", "cuda"], "got --device cuda with --worker-gpus 0"),
        (["--num-workers", "1", "--num-cpus", "4", "--address", "auto"], "expected >= 1 and --address local"),
    ]:
        code = main(base + extra)
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith("dynamo-async ray: error: ") and says in err, err
    assert not (tmp_path / "run").exists()


def test_a_worker_actor_killed_mid_run_is_restarted_by_ray_and_the_run_finishes(tmp_path):
    """SIGKILL the worker actor's process after step 2: Ray restarts the actor, the launcher starts
    its worker again against the same learner, and the run ends with code 0 on both workers' samples."""
    run_dir = tmp_path / "run"
    argv = CLI + ["ray", "--config", str(TINY), "--run-dir", str(run_dir), "--num-workers", "1", "--num-cpus", "2"]
    argv += ["trainer.total_steps=12", "trainer.eval_samples=1", "buffer.max_staleness=0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout))
    reader.start()
    killed = None
    try:
        deadline = time.monotonic() + 240
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            metrics = run_dir / "metrics.jsonl"
            steps = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
            if any(r.get("step", 0) >= 2 and not r.get("eval") for r in steps):
                pids = re.findall(r"\(worker-0 pid=(\d+)\)", "".join(lines))  # Ray prefixes actor output so
                if pids:
                    killed = int(pids[0])
                    psutil.Process(killed).kill()
            time.sleep(0.05)
        code = proc.wait(300)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join()
    out = "".join(lines)
    assert killed is not None, "the run ended before step 2's worker could be killed:\n" + out[-3000:]
    assert code == 0, out[-4000:]
    assert "worker-0's actor died" in out or "worker-0 was restarted by Ray" in out, out[-4000:]
    assert out.count("started 1 worker(s) -> 127.0.0.1:") == 2  # the first worker, then the restarted one
    batches = read_table(run_dir, "batches").to_pydict()
    assert max(batches["step"]) == 12
    worker_pids = {int(w.split("-")[-2]) for w in batches["worker_id"]}
    assert len(worker_pids) == 2, worker_pids  # samples of the killed worker's process and of its successor
