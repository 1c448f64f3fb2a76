"""One GPU (``dynamo-async run --device cuda``): where the learner and the workers go, the CPU
thread split, the one-line refusals (no CUDA, a vLLM share that cannot fit next to the learner)
and, marked gpu, a real two-step run with the learner and an ``hf`` worker sharing cuda:0
(``bench/gpu_check.sh`` runs it). See dynamo_async/gpu_share.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from dynamo_async import launch
from dynamo_async.cli import main
from dynamo_async.config import load_config
from dynamo_async.errors import UsageError
from dynamo_async.gpu_share import (
    GIB,
    SHARED_GPU_ENV,
    check_vllm_share,
    learner_bytes,
    max_vllm_share,
    model_size,
    place,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
QWEN_15B = 1_543_714_304, 151_936  # Qwen2.5-Math-1.5B: parameters, vocabulary


def _qwen(*overrides: str):
    return load_config(
        ROOT / "configs" / "qwen2.5-math-1.5b.yaml",
        ["rollout.tensor_parallel=1", "optim.micro_batch_tokens=8192", *overrides],
    )


# ------------------------------------------------------------------------------- placement


def test_one_gpu_puts_the_learner_and_the_workers_on_cuda_0_with_the_shared_flag():
    p = place("cuda", 1)
    assert (p.learner, p.workers, p.shared) == ("cuda:0", "cuda:0", True)
    assert p.child_env({})[SHARED_GPU_ENV] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in p.worker_env


def test_several_gpus_keep_the_workers_off_the_learners_gpu():
    p = place("cuda", 3, visible="4,5,6")
    assert (p.learner, p.workers, p.shared) == ("cuda:0", "cuda", False)
    assert p.worker_env == {"CUDA_VISIBLE_DEVICES": "5,6"}
    assert SHARED_GPU_ENV not in p.child_env(p.worker_env)
    assert place("cuda", 2).worker_env == {"CUDA_VISIBLE_DEVICES": "1"}


def test_an_explicit_gpu_is_shared_and_the_only_one_either_child_sees():
    p = place("cuda:1", 2, visible="4,5")
    assert (p.learner, p.workers, p.shared, p.gpu) == ("cuda:0", "cuda:0", True, 1)
    assert p.learner_env == p.worker_env == {"CUDA_VISIBLE_DEVICES": "5"}  # vLLM takes the first visible GPU
    assert p.child_env(p.learner_env)[SHARED_GPU_ENV] == "1"


def test_the_cpu_stays_the_cpu():
    cpu = place("cpu", 0)
    assert (cpu.learner, cpu.workers, cpu.shared) == ("cpu", "cpu", False) and cpu.child_env({}) is None


@pytest.mark.parametrize(
    ("device", "gpus", "says"),
    [
        (
            "cuda",
            0,
            "--device cuda: got no CUDA device (no GPU is visible to torch), expected one; run with --device cpu",
        ),
        ("cuda:2", 2, "--device cuda:2: got 2 visible GPU(s), expected cuda:0 .. cuda:1"),
        ("gpu", 1, "--device: got 'gpu', expected cpu, cuda or cuda:N"),
    ],
)
def test_a_device_that_is_not_there_is_one_line(device, gpus, says):
    with pytest.raises(UsageError) as err:
        place(device, gpus)
    assert str(err.value) == says


def test_a_cpu_only_torch_is_named():
    with pytest.raises(UsageError, match=r"this torch is a CPU-only build\), expected one; run with --device cpu"):
        place("cuda", 0, cuda_build=False)


# ------------------------------------------------------------------------------ thread split


def test_on_a_gpu_the_learner_takes_half_the_cores_and_the_workers_share_the_rest():
    assert launch._split_cores(1, "cuda", cores=16) == (8, 8)
    assert launch._split_cores(2, "cuda:0", cores=16) == (8, 4)
    assert launch._split_cores(4, "cuda", cores=2) == (1, 1)


def test_on_the_cpu_the_split_is_unchanged():
    assert launch._split_cores(1, "cpu", cores=2) == (1, 1)
    assert launch._split_cores(2, "cpu", cores=16) == (8, 4)


# ------------------------------------------------------------------------- the vLLM share


def test_learner_memory_counts_float32_state_the_bf16_copy_and_one_micro_batchs_logits():
    cfg = _qwen()
    params, vocab = QWEN_15B
    assert learner_bytes(cfg, params, vocab) == 18 * params + 2 * 8192 * vocab * 2
    fp32 = _qwen("model.compute_dtype=float32")
    assert learner_bytes(fp32, params, vocab) == 16 * params + 2 * 8192 * vocab * 4


def test_the_table3_share_cannot_fit_next_to_a_15b_learner_on_one_80gb_gpu():
    cfg = _qwen()  # gpu_memory_utilization 0.8, as in Table 3
    with pytest.raises(UsageError) as err:
        check_vllm_share(cfg, *QWEN_15B, 80 * GIB, 1, "cuda:0")
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith("rollout.gpu_memory_utilization: got 0.8 for each of 1 vLLM worker(s) on cuda:0 (80.0 GiB)")
    assert "expected at most 0.53" in line and "set rollout.gpu_memory_utilization=0.40" in line


def test_a_share_that_fits_passes_and_two_workers_halve_it():
    params, vocab = QWEN_15B
    check_vllm_share(_qwen("rollout.gpu_memory_utilization=0.4"), params, vocab, 80 * GIB, 1, "cuda:0")
    one, two = (max_vllm_share(_qwen(), params, vocab, 80 * GIB, n) for n in (1, 2))
    assert two < one / 2  # each worker also brings its own receiver slots and CUDA context
    with pytest.raises(UsageError, match="got 0.4 for each of 2 vLLM worker"):
        check_vllm_share(_qwen("rollout.gpu_memory_utilization=0.4"), params, vocab, 80 * GIB, 2, "cuda:0")


def test_a_gpu_too_small_for_the_learner_says_to_use_hf_or_a_smaller_model():
    with pytest.raises(UsageError, match=r"expected at most 0.00: .* use rollout.engine=hf, a smaller model"):
        check_vllm_share(_qwen("rollout.gpu_memory_utilization=0.1"), *QWEN_15B, 24 * GIB, 1, "cuda:0")


def test_vllm_on_the_learners_gpu_needs_tensor_parallel_1():
    with pytest.raises(UsageError, match=r"rollout.tensor_parallel: got 2, expected 1 when vLLM shares cuda:0"):
        check_vllm_share(_qwen("rollout.tensor_parallel=2"), *QWEN_15B, 80 * GIB, 1, "cuda:0")


def test_model_size_counts_the_parameters_without_loading_the_weights():
    from dynamo_async.models import load_model

    model = load_model("builtin:tiny-math")
    params, vocab = model_size("builtin:tiny-math")
    assert params == sum(p.numel() for p in model.parameters())
    assert vocab == model.get_output_embeddings().weight.shape[0]


# -------------------------------------------------------------------- the launcher's refusals


def _one_fake_gpu(monkeypatch, total: int) -> None:
    """torch reports one CUDA device of ``total`` bytes (nothing is allocated on it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(total_memory=total))


def test_plan_run_on_one_gpu_prints_the_share(monkeypatch, capsys):
    _one_fake_gpu(monkeypatch, 80 * GIB)
    cfg = load_config(TINY)
    p = launch.plan_run(cfg, "cuda", 1)
    assert (p.learner, p.workers, p.shared) == ("cuda:0", "cuda:0", True)
    assert "one GPU: the learner and 1 hf worker(s) share cuda:0 (80.0 GiB)" in capsys.readouterr().out
    launch.plan_run(load_config(TINY, ["rollout.engine=vllm", "rollout.gpu_memory_utilization=0.5"]), "cuda", 1)
    assert "each vLLM worker may use 50% of it" in capsys.readouterr().out


def test_run_refuses_a_vllm_share_that_cannot_fit_before_it_starts_anything(monkeypatch, tmp_path, capsys):
    _one_fake_gpu(monkeypatch, 2 * GIB)  # two CUDA contexts alone take half of it
    monkeypatch.setattr(launch.subprocess, "Popen", None)  # starting a process would fail the test
    run_dir = tmp_path / "run"
    code = main(["run", "--config", str(TINY), "--run-dir", str(run_dir), "--device", "cuda", "rollout.engine=vllm"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("dynamo-async run: error: rollout.gpu_memory_utilization: got 0.8 for each of 1 vLLM")
    assert not run_dir.exists()


def test_run_with_cuda_where_torch_sees_no_gpu_is_one_line_naming_device_cpu(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(launch.subprocess, "Popen", None)
    run_dir = tmp_path / "run"
    assert main(["run", "--config", str(TINY), "--run-dir", str(run_dir), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.strip().endswith("expected one; run with --device cpu")
    assert not run_dir.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch sees no CUDA device")
def test_the_command_without_cuda_exits_2_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "dynamo_async.cli", "run", "--config", str(TINY), "--run-dir", str(run_dir)]
    proc = subprocess.run([*cmd, "--device", "cuda"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("dynamo-async run: error: --device cuda: got no CUDA device (")
    assert proc.stderr.count("\n") == 1 and "run with --device cpu" in proc.stderr
    assert not run_dir.exists()


# ------------------------------------------------------------------------------ on a GPU


def _first_gpu_only() -> dict[str, str]:
    """This environment with only the first visible GPU visible: the one-GPU path on any machine."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return {**os.environ, "CUDA_VISIBLE_DEVICES": visible.split(",")[0] if visible else "0"}


@pytest.mark.gpu
@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_run_on_one_gpu_trains_two_steps_with_weights_synced_to_the_worker(engine, tmp_path):
    """Learner and one worker on cuda:0, bf16 compute; max_staleness 0, so step 2 needs samples
    generated with the weights the learner broadcast after step 1."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if engine == "vllm":
        pytest.importorskip("vllm")
    run_dir = tmp_path / "run"
    overrides = [
        "trainer.total_steps=2",
        "model.compute_dtype=bfloat16",
        "buffer.max_staleness=0",
        f"rollout.engine={engine}",
        "rollout.gpu_memory_utilization=0.3",
    ]
    cmd = [sys.executable, "-m", "dynamo_async.cli", "run", "--device", "cuda", "--config", str(TINY)]
    proc = subprocess.run(
        [*cmd, "--run-dir", str(run_dir), *overrides],
        capture_output=True,
        text=True,
        timeout=600,
        env=_first_gpu_only(),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"one GPU: the learner and 1 {engine} worker(s) share cuda:0" in proc.stdout
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if not r.get("eval")]
    assert [r["step"] for r in train] == [1, 2] and [r["version"] for r in train] == [1, 2]
    assert all(r["sync_error"] is None and r["samples"] > 0 for r in train)
    from safetensors.torch import load_file

    from dynamo_async.models import load_model

    start = load_model("builtin:tiny-math").state_dict()
    trained = load_file(str(run_dir / "checkpoints" / "step-000002" / "model" / "model.safetensors"))
    assert any(not torch.equal(start[k], v) for k, v in trained.items() if k in start), "the masters did not move"
