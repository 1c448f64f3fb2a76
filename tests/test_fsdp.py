"""The sharded learner path on the CPU: FSDP2 over 2 gloo ranks (torchrun), one learner step.

The loss is a sum over tokens divided by the mini-batch totals, and DynaMO's normalisers are
the mini-batch's (a max over the ranks), so splitting the groups across ranks must give the
same update as one process: the weights gathered from the two shards equal the
single-process weights, also when the ranks share each group's prompt and the single process
trains on full rows (the path before prompts were shared).
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("fsdp_ranks", HERE / "fsdp_ranks.py")
fsdp_ranks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fsdp_ranks)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sharded_step(tmp_path: Path, method: str, *extra: str) -> dict[str, torch.Tensor]:
    return fsdp_ranks.run_ranks(tmp_path / f"{method}.safetensors", method, *extra)


def _single_step(method: str, *extra: str, groups: int = 4) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    from dynamo_async.learner.trainer import Trainer

    torch.manual_seed(0)
    trainer = Trainer(fsdp_ranks.config(method, *extra), "cpu")
    before = {n: t.detach().clone() for n, t in trainer.masters.named.items()}
    trainer.train_on(fsdp_ranks.fixed_batch(trainer.model.config.vocab_size, groups))
    return before, {n: t.detach().clone() for n, t in trainer.masters.named.items()}


def test_two_sharded_ranks_give_the_single_process_update(tmp_path):
    sharded = _sharded_step(tmp_path, "grpo")
    before, single = _single_step("grpo")
    assert set(sharded) == set(single)
    assert any(not torch.equal(before[n], single[n]) for n in single), "the step must move the weights"
    for name in single:
        torch.testing.assert_close(sharded[name], single[name], rtol=1e-4, atol=1e-6)


def test_sharded_dynamo_with_shared_prompts_gives_the_single_process_full_rows_update(tmp_path):
    sharded = _sharded_step(tmp_path, "dynamo")
    before, single = _single_step("dynamo", "optim.shared_prompt=false", "optim.skip_zero_advantage=false")
    assert any(not torch.equal(before[n], sharded[n]) for n in sharded)
    # Adam's first step is lr * g / (|g| + eps), lr 1e-3: where g is near zero, float rounding
    # moves an element's step noticeably, so each weight must agree within 2% of one step
    for name in single:
        torch.testing.assert_close(sharded[name], single[name], rtol=1e-4, atol=2e-5)


def test_sharded_bf16_compute_moves_the_float32_masters_at_lr_1e_6(tmp_path):
    """FSDP2 with MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=float32) over float32
    shards: the gathered masters stay float32 and move like the single-process float32 run's."""
    bf16 = ("model.compute_dtype=bfloat16", "optim.lr=1e-6", "optim.warmup_steps=0")
    sharded = _sharded_step(tmp_path, "grpo", *bf16)
    before, single32 = _single_step("grpo", "optim.lr=1e-6", "optim.warmup_steps=0")
    assert all(t.dtype == torch.float32 for t in sharded.values())
    total = sum(t.numel() for t in before.values())
    moved32 = sum(int((before[n] != single32[n]).sum()) for n in before) / total
    moved16 = sum(int((before[n] != sharded[n]).sum()) for n in before) / total
    assert moved32 > 0.9 and moved16 / moved32 >= 0.9, (moved16, moved32)
    for name in before:  # Adam's first step is about lr * sign(grad): within 2 lr of float32's
        torch.testing.assert_close(sharded[name], single32[name], rtol=0, atol=2.5e-6)


def test_a_last_mini_batch_shorter_than_the_ranks_gives_the_single_process_update(tmp_path):
    """5 groups in mini-batches of 2 over 2 ranks: rank 1 has no group in the third mini-batch
    and joins its passes with masked copies; DynaMO's normalisers are still the mini-batch's."""
    extra = ("optim.mini_batch_prompts=2",)
    sharded = fsdp_ranks.run_ranks(tmp_path / "five.safetensors", "dynamo", *extra, groups=5)
    before, single = _single_step("dynamo", *extra, groups=5)
    assert any(not torch.equal(before[n], sharded[n]) for n in sharded)
    for name in single:  # three Adam steps at lr 1e-3 (see the test above for the tolerance)
        torch.testing.assert_close(sharded[name], single[name], rtol=1e-4, atol=5e-5)


def test_a_step_needs_a_group_for_every_rank():
    from dynamo_async.learner.batching import check_split

    with pytest.raises(ValueError, match="expected at least one group per rank"):
        check_split(fsdp_ranks.config("grpo", "allocation.gen_batch_prompts=2", "optim.mini_batch_prompts=4"), 4)


def test_mini_batch_must_split_evenly_across_ranks():
    from dynamo_async.learner.batching import Packing, mini_batches

    cfg = fsdp_ranks.config("grpo")
    with pytest.raises(ValueError, match="multiple of the number of ranks"):
        mini_batches(fsdp_ranks.fixed_batch(100), cfg, 0, Packing.of(cfg, True, True), rank=0, world=3)


def _torchrun_learner(run_dir: Path, *extra: str, nproc: int = 2) -> None:
    """``torchrun --nproc-per-node NPROC -m dynamo_async.cli learner`` with one worker, to the end."""
    from dynamo_async.models import resolve_model

    resolve_model("builtin:tiny-math")  # built once here, not by three processes at once
    port = _free_port()
    learner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(nproc),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(_free_port()),
            "-m",
            "dynamo_async.cli",
            "learner",
            "--config",
            str(fsdp_ranks.TINY),
            "--run-dir",
            str(run_dir),
            "--port",
            str(port),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    workers = subprocess.Popen(
        [sys.executable, "-m", "dynamo_async.cli", "workers", "--connect", f"127.0.0.1:{port}", "--num-workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        out, _ = learner.communicate(timeout=300)
        assert learner.returncode == 0, out[-3000:]
        assert workers.wait(timeout=120) == 0
    finally:
        for proc in (learner, workers):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _rows(run_dir: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_learner_with_two_ranks_under_torchrun_trains_and_serves_workers(tmp_path):
    """Rank 0 hosts the buffer and the weight sync, rank 1 trains its share; a worker connects;
    the run finishes and checkpoints a model transformers loads."""
    from dynamo_async.models import load_model

    run_dir = tmp_path / "run"
    _torchrun_learner(run_dir)
    rows = _rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["sync_error"] is None for r in rows)
    assert all(r["workers"] == 1 for r in rows)
    model = load_model(str(run_dir / "checkpoints" / "step-000003" / "model"))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _torchrun(script: str, *args: str, nproc: int = 2) -> None:
    cmd = fsdp_ranks.torchrun_command(str(HERE / script), *args, nproc=nproc)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_a_sharded_run_resumed_from_its_checkpoint_continues_as_if_uninterrupted(tmp_path):
    """2 ranks: 4 steps with a checkpoint after step 2, against steps 3-4 resumed from it on
    2 ranks (bitwise equal: the same computation) and on 1 rank (float tolerance: other sums)."""
    import fsdp_resume
    from safetensors.torch import load_file

    from dynamo_async.learner import checkpoint
    from dynamo_async.learner.step import learner_step
    from dynamo_async.learner.trainer import Trainer

    _torchrun("fsdp_resume.py", "full", str(tmp_path / "full.safetensors"), str(tmp_path / "run"))
    ckpt = checkpoint.latest_checkpoint(tmp_path / "run")
    assert ckpt is not None and ckpt.name == "step-000002"
    # each rank wrote its own shards of the masters and moments (DCP), rank 0 the index
    files = [p.name for p in (ckpt / "state").iterdir()]
    assert ".metadata" in files and {f.split("_")[2] for f in files if f.endswith(".distcp")} == {"0", "1"}
    assert not (ckpt / "optimizer.safetensors").exists()
    _torchrun("fsdp_resume.py", "resume", str(tmp_path / "resumed.safetensors"), str(ckpt))
    full, resumed = load_file(str(tmp_path / "full.safetensors")), load_file(str(tmp_path / "resumed.safetensors"))
    assert set(full) == set(resumed) and any(k.startswith("m/") for k in full)
    for key in full:
        assert torch.equal(full[key], resumed[key]), key

    cfg = fsdp_ranks.config("dynamo", "optim.mini_batch_prompts=2")
    torch.manual_seed(0)
    single = Trainer(cfg, "cpu", ckpt)  # one process, unsharded, from the 2-rank checkpoint
    assert (single.step, single.version) == (2, 2)
    for batch in fsdp_resume.batches(single.model.config.vocab_size)[2:]:
        learner_step(single, batch, by_time=False)
    one = single.full_state()
    for key in full:
        torch.testing.assert_close(one[key], full[key], rtol=1e-4, atol=5e-5, msg=key)


def test_held_out_evaluations_run_on_two_ranks_and_match_one_process(tmp_path):
    """With 2 learner ranks the evaluations before, during and after the run take place (each
    rank samples its share with its sharded model); the first equals one process's evaluation
    of the same initial weights."""
    from dynamo_async.config import load_config
    from dynamo_async.learner import heldout
    from dynamo_async.learner.trainer import Trainer

    run_dir = tmp_path / "run"
    _torchrun_learner(run_dir, "trainer.eval_samples=2", "trainer.eval_every=2")
    evals = [r for r in _rows(run_dir) if r.get("eval")]
    assert [(r["label"], r["step"]) for r in evals] == [("before", 0), ("step 2", 2), ("after", 3)]
    single = heldout.evaluate(Trainer(load_config(fsdp_ranks.TINY, ["trainer.eval_samples=2"]), "cpu"))
    assert single and all(res.total == 32 for res in single.values())
    assert {k: v for k, v in evals[0].items() if k.startswith("eval/")} == {
        f"eval/{name}": res.accuracy for name, res in single.items()
    }


def test_a_two_rank_learner_resumes_with_resume_on_two_ranks_and_then_on_one(tmp_path):
    """``learner --resume`` continues a 2-rank run on 2 ranks and then on 1 (the DCP shards are
    laid out anew at load): one row per step, and each start continues where the last stopped."""
    run_dir = tmp_path / "run"
    _torchrun_learner(run_dir)
    _torchrun_learner(run_dir, "--resume", "trainer.total_steps=5")
    _torchrun_learner(run_dir, "--resume", "trainer.total_steps=6", nproc=1)
    rows = [r for r in _rows(run_dir) if not r.get("eval")]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and [r["version"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(r["sync_error"] is None and r["workers"] == 1 for r in rows)
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))
    assert ckpts == ["step-000003", "step-000005", "step-000006"]
