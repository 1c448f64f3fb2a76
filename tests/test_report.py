"""``dynamo-async status`` on a live tiny run (learner and worker processes on loopback) and
``dynamo-async plot`` on what that run recorded."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import msgspec
import pytest

from buffer.client import query_status
from dynamo_async.cli import main
from dynamo_async.report.plots import FIGURES
from dynamo_async.report.status import render

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "dynamo_async.cli"]
STEPS = 30


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_file(path: Path, proc: subprocess.Popen, limit: float) -> dict:
    deadline = time.monotonic() + limit
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "learner did not come up"
        time.sleep(0.2)
    time.sleep(0.1)
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    """Start a learner alone (port 0: a free block), read its status, start a worker, read the
    status while steps go by, let the run finish; returns what was seen and the run dir."""
    tmp = tmp_path_factory.mktemp("live")
    run_dir, ready = tmp / "run", tmp / "ready.json"
    learner = subprocess.Popen(
        CLI
        + [
            "learner",
            "--config",
            str(ROOT / "configs" / "tiny.yaml"),
            "--run-dir",
            str(run_dir),
            "--port",
            "0",
            "--ready-file",
            str(ready),
            "--threads",
            "1",
            f"trainer.total_steps={STEPS}",
            "trainer.eval_samples=1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    workers = None
    seen: dict = {}
    try:
        where = _wait_file(ready, learner, 300)
        address = f"127.0.0.1:{where['work']}"
        assert where["status"] == where["work"] + 2  # status HOST:WORK_PORT finds it
        seen["idle"] = subprocess.run(CLI + ["status", address, "--once"], capture_output=True, text=True, timeout=60)
        workers = subprocess.Popen(
            CLI + ["workers", "--connect", address, "--threads", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 240
        while True:
            assert learner.poll() is None and time.monotonic() < deadline, "run ended before status saw a step"
            st = query_status("127.0.0.1", where["status"], timeout_s=5)
            if st.last_step.get("step", 0) >= 2 and st.workers:
                seen["busy"] = st
                seen["busy_text"] = render(st, address, None, time.monotonic())
                break
            time.sleep(0.05)
        learner.wait(timeout=300)
        seen["learner_rc"] = learner.returncode
        workers.wait(timeout=60)
    finally:
        _stop(workers)
        _stop(learner)
    return run_dir, seen


def test_status_reads_a_live_tiny_run(live_run):
    _, seen = live_run
    idle = seen["idle"]
    assert idle.returncode == 0, idle.stderr
    assert "version 0" in idle.stdout and "0 connected" in idle.stdout and "last step   none yet" in idle.stdout
    assert "limit 4 versions" in idle.stdout  # buffer.max_staleness of configs/tiny.yaml
    st = seen["busy"]
    assert st.workers == 1 and st.worker_list[0].completions > 0 and st.completion_tokens > 0
    assert st.policy_version >= 2 and sum(st.groups.values()) > 0 and st.groups["consumed"] >= 2 * 4
    assert {"accuracy", "entropy", "grad_norm", "staleness_mean", "tokens_per_s"} <= set(st.last_step)
    text = seen["busy_text"]
    assert "1 connected" in text and "grad_norm" in text and "completions" in text
    assert st.total_steps == STEPS and st.steps_per_s > 0 and st.eta_s > 0 and st.last_step_age_s >= 0
    assert f"progress    step {int(st.last_step['step'])}/{STEPS} (" in text and "eta " in text
    assert "progress    step 0/" in idle.stdout and "eta unknown (no step yet)" in idle.stdout
    assert seen["learner_rc"] == 0


def test_the_tiny_run_kept_decoded_samples_of_every_step(live_run, capsys):
    from buffer.replay import replay_main
    from buffer.store import read_table

    run_dir, _ = live_run
    table = read_table(run_dir, "samples")
    steps = table["step"].to_pylist()
    assert sorted(set(steps)) == list(range(1, STEPS + 1)) and all(steps.count(s) == 4 for s in set(steps))
    assert all(table["prompt"].to_pylist()) and set(table["acc"].to_pylist()) <= {0, 1}
    assert replay_main([str(run_dir), "--samples", "--step", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("=== step 1  prompt ") == 4 and "--- response" in out


def test_status_of_nothing_listening_is_a_clear_error(capsys):
    code = main(["status", "127.0.0.1:9", "--once", "--timeout", "0.3"])
    assert code == 1
    assert "check that the learner runs and that 9 is its work port" in capsys.readouterr().err


def test_plot_renders_every_figure_from_a_recorded_tiny_run(live_run, capsys):
    run_dir, _ = live_run
    assert main(["plot", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "skipped" not in out, out
    for name in FIGURES:
        path = run_dir / "plots" / f"{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        height, width = matplotlib.image.imread(path).shape[:2]
        assert width > 500 and height > 300, (name, width, height)


def test_plot_of_a_directory_without_metrics_says_what_it_expected(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "without metrics.jsonl, expected the directory of a run" in capsys.readouterr().err


def test_eval_of_a_run_directory_uses_its_newest_checkpoint_and_config(live_run, tmp_path):
    run_dir, _ = live_run
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                "--model",
                str(run_dir),
                "--data",
                "synthetic",
                "--limit",
                "4",
                "--n",
                "2",
                "--k",
                "1,2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert res["model"] == str(run_dir)
    assert res["settings"]["model"] == str(run_dir / "checkpoints" / f"step-{STEPS:06d}" / "model")
    assert res["settings"]["max_new_tokens"] == 16  # configs/tiny.yaml, from RUN_DIR/config.yaml
    (bench,) = res["benchmarks"]
    assert bench["name"] == "synthetic" and bench["problems"] == 4


def test_plot_skips_what_a_run_lacks_and_says_why(tmp_path, capsys):
    """A baseline run (no beta factors) whose store was deleted, with a gap in its steps."""
    rows = [
        {"step": s, "accuracy": 0.1 * s, "reward": 0.0, "entropy": 1.0, "grad_norm": 0.5, "tokens_per_s": 9.0}
        for s in (1, 2, 5)
    ]
    rows.append({"eval": True, "step": 5, "label": "after", "eval/synthetic": None})
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "config.yaml").write_text("method: grpo\nmodel: null\n")
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "figs")]) == 0
    out = capsys.readouterr().out
    assert "skipped beta.png: no beta factor histograms in metrics.jsonl (method grpo" in out
    assert "skipped allocation.png: no groups in the Arrow store" in out
    assert "skipped staleness.png: no steps in the Arrow store" in out
    drawn = sorted(p.stem for p in (tmp_path / "figs").glob("*.png"))
    assert drawn == ["accuracy_reward", "entropy", "grad_norm", "throughput"]


def test_status_view_of_an_idle_buffer_and_after_a_restart():
    from dynamo_async.protocol import Status

    before = Status(
        policy_version=3, groups={"ready": 2}, workers=0, rejected={}, completions=500, dropped_groups=4, uptime_s=100.0
    )
    after = Status(
        policy_version=0,
        groups={},
        workers=0,
        rejected={"malformed": 2},
        completions=10,
        dropped_groups=0,
        uptime_s=5.0,
        completion_tokens=50,
    )
    text = render(before, "h:1", None, 0.0)
    assert "ready 2" in text and "dropped 4" in text and "last step   none yet" in text
    text = render(after, "h:1", (0.0, before), 10.0)  # fewer completions than before: another buffer
    assert "(2.00/s)" in text and "(10.0/s)" in text  # rates over its own uptime, never negative
    assert "malformed 2" in text
    assert "transport" not in text  # an older buffer does not say
    text = render(msgspec.structs.replace(after, transport="insecure"), "h:1", None, 0.0)
    assert "transport   OPEN TO ANY HOST (--insecure)" in text
