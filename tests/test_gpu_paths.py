"""GPU paths (marked gpu; ``bench/gpu_check.sh`` runs them): the learner step in bf16 on CUDA
and generation with the ``hf`` engine on CUDA, both with the builtin tiny-math model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from buffer.batch import LearnerBatch, ReadyGroup, Sample
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
        samples = tuple(Sample(i, rng.integers(5, vocab, 8 + i).astype(np.int32),
                               (-rng.random(8 + i)).astype(np.float32), np.zeros(8 + i, np.int32),
                               acc=i % 2, reward=float(2 * (i % 2) - 1), finish_reason="stop", worker_id="w")
                        for i in range(4))
        groups.append(ReadyGroup(g, f"p{g}", prompt, "1", samples))
    return LearnerBatch(step=0, policy_version=0, groups=tuple(groups), staleness=(0, 0, 0, 0))


@pytest.mark.parametrize("method", ["dynamo", "grpo"])
def test_learner_step_in_bf16_on_cuda(method):
    _cuda()
    from dynamo_async.learner.trainer import Trainer

    cfg = load_config(TINY, ["model.dtype=bfloat16", f"method={method}"])
    trainer = Trainer(cfg, "cuda")
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    metrics = trainer.train_on(_batch(trainer.model.config.vocab_size))
    assert all(p.dtype == torch.bfloat16 and p.is_cuda for p in trainer.model.parameters())
    assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    if method == "dynamo":
        assert 0.6 <= metrics["beta_stab_min"] <= 1.0 and metrics["beta_comp_mean"] >= 1.0


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
            logp = torch.log_softmax(model(input_ids=ids).logits[0, len(prompt) - 1:-1].float(), -1)
        ref = logp.gather(-1, ids[0, len(prompt):, None]).squeeze(-1).cpu().numpy()
        assert np.allclose(res.logprobs, ref, atol=0.1)  # bf16: incremental decode vs one forward


def test_eval_command_on_cuda_with_the_hf_engine(tmp_path):
    """``dynamo-async eval --device cuda``: the tiny model samples on the GPU, records and table."""
    import json

    from dynamo_async.cli import main

    _cuda()
    data = tmp_path / "sums.jsonl"
    data.write_text("\n".join(json.dumps({"problem": f"{a} + {a}", "answer": str(2 * a)}) for a in range(4)))
    out = tmp_path / "r.json"
    assert main(["eval", "--model", "builtin:tiny-math", "--config", str(TINY), "--data", str(data), "--n", "4",
                 "--k", "1,4", "--device", "cuda", "--out", str(out)]) == 0
    (bench,) = json.loads(out.read_text())["benchmarks"]
    assert bench["problems"] == 4 and 0.0 <= bench["pass@1"] <= bench["pass@4"] <= 100.0
