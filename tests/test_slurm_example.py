"""examples/slurm/dynamo-async.sbatch: the commands it launches, checked with a fake Slurm
(``srun``, ``scontrol`` and ``getent`` on PATH that record their arguments), and, marked slow, a
real submission where a Slurm controller answers on this machine."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "slurm" / "dynamo-async.sbatch"
TINY = ROOT / "configs" / "tiny.yaml"
CLI = f"{shlex.quote(sys.executable)} -m dynamo_async.cli"

FAKE_SRUN = """#!/bin/bash
# records its arguments; as the learner step, writes the ready file, then exits FAKE_LEARNER_CODE
echo "srun $*" >> "$FAKE_LOG"
prev= ready=
for a in "$@"; do [[ $prev == --ready-file ]] && ready=$a; prev=$a; done
if [[ -n $ready ]]; then
    sleep 0.3
    echo '{"host": "ignored", "work": 40000}' > "$ready.tmp" && mv "$ready.tmp" "$ready"
    sleep 1.5
    exit "${FAKE_LEARNER_CODE:-0}"
fi
"""
FAKE_SCONTROL = """#!/bin/bash
[[ $1 == show && $2 == hostnames && $3 == "$SLURM_JOB_NODELIST" ]] || exit 9
for h in $FAKE_HOSTS; do echo "$h"; done
"""
FAKE_GETENT = """#!/bin/bash
[[ $1 == ahostsv4 ]] || exit 9
echo "10.0.0.${2//[!0-9]/}      STREAM $2"
"""


def _fake_slurm(tmp_path: Path, hosts: list[str], learner_code: int = 0) -> tuple[dict, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("getent", FAKE_GETENT)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "srun.log"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": f"node[1-{len(hosts)}]",
        "FAKE_HOSTS": " ".join(hosts),
        "FAKE_LOG": str(log),
        "FAKE_LEARNER_CODE": str(learner_code),
        "DYNAMO_ASYNC": CLI,
    }
    return env, log


def _submit(env: dict, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    argv = ["bash", str(SCRIPT), str(TINY), str(run_dir), *overrides]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


def test_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_learner_on_the_first_node_binds_its_address_and_the_other_nodes_connect_with_keys(tmp_path):
    env, log = _fake_slurm(tmp_path, ["node1", "node2", "node3"])
    run_dir = tmp_path / "run"
    proc = _submit(env, run_dir, "trainer.total_steps=2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    learner, *workers = [shlex.split(line)[1:] for line in log.read_text().splitlines()]
    workers.sort(key=lambda argv: argv[2])  # the worker steps start in the background, in any order
    keys = run_dir / "keys"
    assert learner[:3] == ["--nodes=1", "--ntasks=1", "--nodelist=node1"]
    assert learner[3:] == shlex.split(CLI) + [
        "learner",
        "--config",
        str(TINY),
        "--run-dir",
        str(run_dir),
        "--host",
        "10.0.0.1",
        "--port",
        "0",
        "--keys",
        str(keys),
        "--device",
        "cpu",
        "--ready-file",
        str(run_dir / "learner.json"),
        "trainer.total_steps=2",
    ]
    assert len(workers) == 2
    for i, (node, argv) in enumerate(zip(["node2", "node3"], workers)):
        assert argv[:3] == ["--nodes=1", "--ntasks=1", f"--nodelist={node}"]  # no --overlap: own node
        assert argv[3:] == shlex.split(CLI) + [
            "workers",
            "--connect",
            "10.0.0.1:40000",
            "--num-workers",
            "1",
            "--capacity",
            "8",
            "--device",
            "cpu",
            "--key",
            str(keys / "clients" / f"client-{i}.key_secret"),
            "--server-key",
            str(keys / "server.key"),
        ]
    # real keys, written by `dynamo-async keys` before the learner started: one client pair per worker node
    assert sorted(p.name for p in (keys / "clients").iterdir()) == ["client-0.key_secret", "client-1.key_secret"]
    assert (keys / "server.key_secret").exists() and len(list((keys / "authorized").iterdir())) == 2
    assert "learner on node1 (10.0.0.1), workers on node2 node3" in proc.stdout


def test_one_node_runs_the_workers_beside_the_learner_and_exits_with_the_learners_code(tmp_path):
    env, log = _fake_slurm(tmp_path, ["node7"], learner_code=3)
    env["WORKER_DEVICE"], env["WORKERS_PER_NODE"] = "cuda", "4"
    proc = _submit(env, tmp_path / "run")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    learner, worker = [shlex.split(line)[1:] for line in log.read_text().splitlines()]
    assert "--nodelist=node7" in learner and learner[learner.index("--host") + 1] == "10.0.0.7"
    assert worker[:4] == ["--nodes=1", "--ntasks=1", "--nodelist=node7", "--overlap"]
    assert worker[worker.index("--connect") + 1] == "10.0.0.7:40000"
    assert worker[worker.index("--num-workers") + 1] == "4" and worker[worker.index("--device") + 1] == "cuda"


def _slurm_answers() -> bool:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    probe = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    return probe.returncode == 0 and any(s.startswith(("idle", "mix")) for s in probe.stdout.split())


@pytest.mark.slow
def test_real_slurm_submission_trains_the_tiny_config(tmp_path):
    """Needs a running Slurm (slurmctld + slurmd) whose nodes see tmp_path; one node is enough."""
    if not _slurm_answers():
        pytest.skip("no Slurm controller with an idle node answers here")
    run_dir = tmp_path / "run"
    env = {**os.environ, "DYNAMO_ASYNC": CLI}
    argv = ["sbatch", "--wait", "--nodes=1", f"--output={tmp_path}/job.out", str(SCRIPT), str(TINY), str(run_dir)]
    proc = subprocess.run(argv + ["trainer.eval_samples=1"], env=env, capture_output=True, text=True, timeout=600)
    out = (tmp_path / "job.out").read_text() if (tmp_path / "job.out").exists() else ""
    assert proc.returncode == 0, proc.stdout + proc.stderr + out[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if not r.get("eval")] == [1, 2, 3]
    assert (run_dir / "checkpoints" / "latest").read_text() == "step-000003"
    assert "started 1 worker(s)" in out and "learner exited with 0" in out
