"""Loss and gradient of every method preset on one fixed batch, recorded before the objective is
rebuilt from components (issue: "one composable objective"): ``tests/test_objective_reference.py``
checks that the objective still gives these numbers. Run this file to record them again, only
when a change of the numbers is intended: ``python tests/objective_reference.py``.

The gradient is summarised by its norm and by its dot products with 8 fixed random directions
(a change anywhere in it moves them). The learner's throughput options are set to the path of
the time (``PATH_OF_RECORD``: full rows in the batch's order, nothing skipped, DynaMO's
normalisers per micro-batch), so the record checks that this path is still there, unchanged;
``tests/test_shared_prompt.py`` and ``tests/test_skip_zero_advantage.py`` check the new path
against it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from sample_records import scored_record

from buffer.batch import LearnerBatch, ReadyGroup
from dynamo_async.config import load_config

HERE = Path(__file__).resolve().parent
TINY = HERE.parent / "configs" / "tiny.yaml"
RECORD = HERE / "data" / "objective_reference.json"
PATH_OF_RECORD = ("optim.shared_prompt=false", "optim.sort_by_length=false", "optim.skip_zero_advantage=false")
CASES: dict[str, tuple[str, ...]] = {
    "dynamo": ("method=dynamo",),
    "dynamo-no-compensation": ("method=dynamo", "modulation.compensation=false"),
    "dynamo-no-stabilization": ("method=dynamo", "modulation.stabilization=false"),
    "dynamo-sequence-centered": (
        "method=dynamo",
        "modulation.entropy_change=sequence_centered",
        "modulation.gamma=50",
        "modulation.tau=0.99",
        "modulation.alpha=0.2",
        "loss.eps_high=0.28",
    ),
    "dynamo-seq-mean-token-mean": ("method=dynamo", "loss.aggregation=seq-mean-token-mean"),
    "grpo": ("method=grpo",),
    "grpo-behavior": ("method=grpo", "off_policy.mode=behavior"),
    "grpo-dr": ("method=grpo", "advantage.scale_by_std=false", "loss.aggregation=seq-mean-token-sum-norm"),
    "clip_higher": ("method=clip_higher",),
    "entropy_loss": ("method=entropy_loss",),
    "fork_tokens": ("method=fork_tokens",),
    "entropy_advantage": ("method=entropy_advantage",),
    "clip_cov": (
        "method=clip_cov",
        "baselines.clip_cov_ratio=0.2",
        "baselines.clip_cov_lb=-100",
        "baselines.clip_cov_ub=100",
    ),
    "kl_cov": ("method=kl_cov", "baselines.kl_cov_ratio=0.2"),
    "w_reinforce": ("method=w_reinforce",),
}


def fixed_batch(vocab: int) -> LearnerBatch:
    """4 groups of 3-5 responses with mixed correctness, stale behaviour log-probs."""
    rng = np.random.default_rng(2024)
    groups = []
    for g in range(4):
        prompt = rng.integers(5, vocab, 10 + g).astype(np.int32)
        samples = []
        for i in range(3 + g % 3):
            n = 4 + int(rng.integers(0, 6))
            acc = int(rng.random() < 0.5) if i else g % 2
            tokens = rng.integers(5, vocab, n).astype(np.int32)
            samples.append(scored_record(g, i, tokens, (-1.0 - 2.0 * rng.random(n)).astype(np.float32), acc))
        groups.append(ReadyGroup(g, f"p{g}", prompt, "1", tuple(samples)))
    return LearnerBatch(step=0, policy_version=0, groups=tuple(groups), staleness=(0,) * 4)


def measure(overrides: tuple[str, ...]) -> dict:
    """Loss (summed over the micro-batches of the one mini-batch) and gradient summary."""
    from dynamo_async.algo.objective import policy_objective
    from dynamo_async.learner.trainer import Trainer

    cfg = load_config(
        TINY,
        [
            "model.name=builtin:tiny",
            "trainer.seed=5",
            "optim.mini_batch_prompts=4",
            "optim.micro_batch_tokens=96",
            *PATH_OF_RECORD,
            *overrides,
            *(("modulation.normaliser_scope=micro_batch",) if "method=dynamo" in overrides else ()),
        ],
    )
    torch.manual_seed(0)
    trainer = Trainer(cfg, "cpu")
    minis = trainer.prepare(fixed_batch(trainer.model.config.vocab_size))
    trainer.proximal_pass(minis)
    with torch.no_grad():  # the update's weights differ from the proximal ones, so ratios leave 1
        noise = torch.Generator().manual_seed(1)
        for _, p in sorted(trainer.model.named_parameters()):
            p.add_(0.3 * p.abs().mean() * torch.randn(p.shape, generator=noise))
    assert len(minis) == 1 and len(minis[0].update) > 1, "one mini-batch of several micro-batches"
    total = 0.0
    for mb in minis[0].update:
        loss, _ = policy_objective(trainer._logits(mb), trainer._policy_batch(mb), cfg, trainer.generator)
        loss.backward()
        total += float(loss.detach())
    named = dict(trainer.model.named_parameters())
    grad = torch.cat([named[n].grad.detach().flatten().double() for n in sorted(named)])
    directions = torch.randn(8, grad.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return {
        "loss": total,
        "grad_norm": float(grad.norm()),
        "projections": (directions @ grad).tolist(),
        "micro_batches": len(minis[0].update),
    }


def main() -> None:
    from dynamo_async.models import resolve_model

    resolve_model("builtin:tiny")
    record = {name: measure(overrides) for name, overrides in CASES.items()}
    RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    for name, r in record.items():
        print(f"{name:28s} loss {r['loss']:+.8f} grad_norm {r['grad_norm']:.8f} micro-batches {r['micro_batches']}")


if __name__ == "__main__":
    main()
