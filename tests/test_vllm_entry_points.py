"""``rollout.engine=vllm`` through the entry points the default suite does not start it from:
``dynamo-async eval`` and ``dynamo-async ray`` (``run`` and ``workers`` are in
``tests/test_vllm_run.py``). Marked slow: each starts vLLM's CPU build (about 20 s), Ray a
local cluster besides; run with ``pytest -m slow tests/test_vllm_entry_points.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dynamo_async.cli import main
from dynamo_async.evaluation.records import records_path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
CLI = [sys.executable, "-m", "dynamo_async.cli"]


@pytest.mark.slow
def test_eval_samples_with_vllm_and_records_every_sample(tmp_path):
    data = tmp_path / "sums.jsonl"  # the tiny model reads 512 characters; AIME's problems are longer
    rows = [{"id": str(i), "problem": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1)} for i in range(2)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "r.json"
    args = ["eval", "--model", "builtin:tiny-math", "--data", str(data), "--limit", "2", "--n", "3"]
    args += ["--engine", "vllm", "--out", str(out), "rollout.max_new_tokens=32", "rollout.tensor_parallel=1"]
    assert main(args) == 0
    (bench,) = json.loads(out.read_text())["benchmarks"]
    assert bench["problems"] == 2 and bench["samples_per_problem"] == 3
    lines = [json.loads(line)["record"] for line in records_path(out).read_text().splitlines()[1:]]
    assert len(lines) == 2 and all(len(r["acc"]) == 3 and len(r["tokens"]) == 3 for r in lines)
    assert all(1 <= t <= 32 for r in lines for t in r["tokens"])


@pytest.mark.slow
def test_eval_of_prompts_longer_than_the_models_context_is_one_line(tmp_path, capsys):
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"id": "0", "problem": "1 + " * 200 + "1 = ?", "answer": "201"}) + "\n")
    args = ["eval", "--model", "builtin:tiny-math", "--data", str(data), "--engine", "vllm", "--out"]
    args += [str(tmp_path / "r.json"), "rollout.max_new_tokens=8", "rollout.tensor_parallel=1"]
    assert main(args) == 2
    assert "vllm refused a request: This model's maximum context length is 512 tokens" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_launcher_trains_with_a_vllm_worker(tmp_path):
    run_dir = tmp_path / "run"
    argv = CLI + ["ray", "--config", str(TINY), "--run-dir", str(run_dir), "--num-workers", "1"]
    argv += ["--num-cpus", "2", "--worker-cpus", "1", "rollout.engine=vllm", "trainer.eval_samples=0"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if not r.get("eval")] == [1, 2, 3]
    assert all(r["sync_error"] is None for r in rows if not r.get("eval"))
