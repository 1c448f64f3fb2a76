"""GPU paths (marked gpu; ``bench/gpu_check.sh`` runs them): the learner step in bf16 compute over
float32 masters on CUDA at the presets' lr (one process, and FSDP2 with one rank), and
generation with the ``hf`` engine on CUDA, with the builtin tiny-math model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from sample_records import sample_record

from buffer.batch import LearnerBatch, ReadyGroup
from dynamo_async.config import load_config

pytestmark = pytest.mark.gpu
TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def _cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")


def _batch(vocab: int) -> LearnerBatch:
    rng = np.random.default_rng(0)
    groups = []
    for g in range(4):
        prompt = rng.integers(5, vocab, 20).astype(np.int32)
        samples = tuple(
            sample_record(
                g,
                f"p{g}",
                i,
                rng.integers(5, vocab, 8 + i).astype(np.int32),
                (-rng.random(8 + i)).astype(np.float32),
                np.zeros(8 + i, np.int32),
                acc=i % 2,
                reward=float(2 * (i % 2) - 1),
                finish_reason="stop",
                worker_id="w",
            )
            for i in range(4)
        )
        groups.append(ReadyGroup(g, f"p{g}", prompt, "1", samples))
    return LearnerBatch(step=0, policy_version=0, groups=tuple(groups), staleness=(0, 0, 0, 0))


def _moved(trainer, steps: int = 3) -> float:
    before = {n: t.detach().clone() for n, t in trainer.masters.named.items()}
    for _ in range(steps):
        metrics = trainer.train_on(_batch(trainer.model.config.vocab_size))
        assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    changed = sum(int((before[n] != t).sum()) for n, t in trainer.masters.named.items())
    return changed / sum(t.numel() for t in before.values())


@pytest.mark.parametrize("method", ["dynamo", "grpo"])
def test_learner_step_in_bf16_on_cuda_moves_the_float32_masters_at_lr_1e_6(method):
    """The presets' numeric path: bf16 compute, float32 masters, lr 1e-6; the masters move like
    the float32 run's (pure bf16 weights would lose almost every update)."""
    _cuda()
    from dynamo_async.learner.trainer import Trainer

    lr = ["optim.lr=1e-6", "optim.warmup_steps=0", "optim.weight_decay=0.1", f"method={method}"]
    torch.manual_seed(0)
    fp32 = Trainer(load_config(TINY, ["model.compute_dtype=float32", *lr]), "cuda")
    torch.manual_seed(0)
    trainer = Trainer(load_config(TINY, ["model.compute_dtype=bfloat16", *lr]), "cuda")
    assert all(p.dtype == torch.bfloat16 and p.is_cuda for p in trainer.model.parameters())
    assert all(t.dtype == torch.float32 and t.is_cuda for t in trainer.masters.named.values())
    moved32, moved16 = _moved(fp32), _moved(trainer)
    assert moved32 > 0.9 and moved16 / moved32 >= 0.9, (moved16, moved32)
    metrics = trainer.train_on(_batch(trainer.model.config.vocab_size))
    if method == "dynamo":
        assert 0.6 <= metrics["beta_stab_min"] <= 1.0 and metrics["beta_comp_mean"] >= 1.0


def test_fsdp2_mixed_precision_with_one_rank_on_cuda(tmp_path):
    """FSDP2 (NCCL, one GPU) with MixedPrecisionPolicy(bf16, reduce float32) over float32 shards:
    the gathered masters stay float32 and move at lr 1e-6 like the float32 run's."""
    _cuda()
    from dynamo_async.learner.trainer import Trainer

    here = Path(__file__).resolve().parent
    spec = importlib.util.spec_from_file_location("fsdp_ranks", here / "fsdp_ranks.py")
    fsdp_ranks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fsdp_ranks)
    lr = ("optim.lr=1e-6", "optim.warmup_steps=0")
    sharded = fsdp_ranks.run_ranks(
        tmp_path / "fsdp.safetensors",
        "grpo",
        "model.compute_dtype=bfloat16",
        *lr,
        nproc=1,
        device="cuda",
        timeout_s=300,
    )
    torch.manual_seed(0)
    single = Trainer(fsdp_ranks.config("grpo", *lr), "cuda")
    before = {n: t.detach().cpu().clone() for n, t in single.masters.named.items()}
    single.train_on(fsdp_ranks.fixed_batch(single.model.config.vocab_size))
    after = {n: t.detach().cpu() for n, t in single.masters.named.items()}
    assert all(t.dtype == torch.float32 for t in sharded.values())
    total = sum(t.numel() for t in before.values())
    moved32 = sum(int((before[n] != after[n]).sum()) for n in before) / total
    moved16 = sum(int((before[n] != sharded[n]).sum()) for n in before) / total
    assert moved32 > 0.9 and moved16 / moved32 >= 0.9, (moved16, moved32)


def test_hf_engine_generates_on_cuda():
    _cuda()
    from dynamo_async.data.prompts import render_prompt
    from dynamo_async.models import load_model, load_tokenizer
    from workers.engine import GenRequest
    from workers.hf_engine import HFEngine

    cfg = load_config(TINY)
    tokenizer = load_tokenizer(cfg.model.name)
    model = load_model(cfg.model.name, "bfloat16", "cuda")
    engine = HFEngine(model, tokenizer, cfg, "cuda")
    prompts = [render_prompt(tokenizer, cfg.data.system_prompt, f"What is {a} + 2?", 256) for a in range(6)]
    results = engine.generate([GenRequest(p, seed=i) for i, p in enumerate(prompts)])
    again = engine.generate([GenRequest(p, seed=i) for i, p in enumerate(prompts)])
    assert all(np.array_equal(a.token_ids, b.token_ids) for a, b in zip(results, again))
    for prompt, res in zip(prompts, results):
        assert 1 <= len(res.token_ids) <= cfg.rollout.max_new_tokens and (res.versions == 0).all()
        ids = torch.tensor(np.concatenate([prompt, res.token_ids]), device="cuda")[None].long()
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float(), -1)
        ref = logp.gather(-1, ids[0, len(prompt) :, None]).squeeze(-1).cpu().numpy()
        assert np.allclose(res.logprobs, ref, atol=0.1)  # bf16: incremental decode vs one forward


def test_eval_command_on_cuda_with_the_hf_engine(tmp_path):
    """``dynamo-async eval --device cuda``: the tiny model samples on the GPU, records and table."""
    import json

    from dynamo_async.cli import main

    _cuda()
    data = tmp_path / "sums.jsonl"
    data.write_text("\n".join(json.dumps({"problem": f"{a} + {a}", "answer": str(2 * a)}) for a in range(4)))
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "eval",
                "--model",
                "builtin:tiny-math",
                "--config",
                str(TINY),
                "--data",
                str(data),
                "--n",
                "4",
                "--k",
                "1,4",
                "--device",
                "cuda",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    (bench,) = json.loads(out.read_text())["benchmarks"]
    assert bench["problems"] == 4 and 0.0 <= bench["pass@1"] <= bench["pass@4"] <= 100.0
