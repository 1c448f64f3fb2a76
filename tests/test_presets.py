"""Every shipped config starts and trains, as a user launches it, with only its scale shrunk.

Each config runs through ``dynamo-async run`` (a learner and a worker process) for 2 learner
steps, unchanged except: the builtin tiny model, the ``hf`` engine, CPU-sized batches and
lengths, and, for the configs that train on DAPO-Math-17k, a verl-layout Parquet made from
``../shared/data/dapo_math_17k.jsonl`` in the hub's form (DAPO's template, repeated rows) in
place of the hub dataset. Their precision (bf16 compute over float32 masters), learning rate,
template handling, answer format, gradient checkpointing and loss settings are the presets'.
(``configs/tiny.yaml`` runs in ``test_pipeline.py``.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DAPO_ROWS
from safetensors.torch import load_file

from dynamo_async.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if p.name != "tiny.yaml")
CPU_SIZES = [
    "model.name=builtin:tiny-math",
    "rollout.engine=hf",
    "rollout.tensor_parallel=1",
    "rollout.max_new_tokens=12",
    "data.max_prompt_tokens=96",
    "allocation.gen_batch_prompts=4",
    "allocation.avg_rollouts=4",
    "allocation.g_min=2",
    "allocation.g_max=6",
    "optim.mini_batch_prompts=2",
    "optim.micro_batch_tokens=1024",
    "trainer.total_steps=2",
    "trainer.checkpoint_every=0",
    "trainer.eval_samples=0",
    "rewards.num_workers=1",
]


def test_there_are_presets_to_check():
    names = {p.name for p in CONFIGS}
    assert {
        "demo.yaml",
        "dynamo-authors.yaml",
        "qwen2.5-math-1.5b.yaml",
        "qwen2.5-math-7b.yaml",
        "qwen3-14b.yaml",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_trains_two_steps_on_the_cpu(path, tmp_path, verl_dapo_parquet):
    shipped = load_config(path)
    on_dapo = shipped.data.train == "BytedTsinghua-SIA/DAPO-Math-17k"
    overrides = CPU_SIZES + ([f"data.train={verl_dapo_parquet}"] if on_dapo else [])
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "dynamo_async.cli", "run", "--config", str(path), "--run-dir", str(run_dir), *overrides],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if not r.get("eval")]
    assert [r["step"] for r in train] == [1, 2] and all(r["sync_error"] is None for r in train)
    assert all(r["samples"] > 0 and r["response_tokens"] > 0 for r in train)
    resolved = load_config(run_dir / "config.yaml")
    assert resolved.model.compute_dtype == shipped.model.compute_dtype
    assert resolved.optim == load_config(path, overrides).optim
    weights = load_file(str(run_dir / "checkpoints" / "step-000002" / "model" / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in weights.values()), "checkpoints hold the float32 masters"
    if on_dapo:
        assert shipped.model.compute_dtype == "bfloat16" and shipped.optim.lr == 1e-6
        assert resolved.rewards.answer_format == "answer_line" and resolved.data.user_template == "dapo"
        data = json.loads((run_dir / "data.json").read_text())
        assert data["prompts"] == DAPO_ROWS - 1 and data["dedup"]["conflicting_texts"] == 1
        assert "distinct prompts" in proc.stdout
