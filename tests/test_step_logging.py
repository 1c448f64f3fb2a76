"""What a learner step logs: the loss of the mini-batch it optimised and the lr it used."""

from pathlib import Path

import pytest
import torch
from objective_reference import fixed_batch

from dynamo_async.algo.objective import policy_objective
from dynamo_async.config import load_config

TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"


def _trainer(*overrides: str):
    from dynamo_async.learner.trainer import Trainer

    cfg = load_config(
        TINY,
        [
            "model.name=builtin:tiny",
            "method=grpo",
            "optim.mini_batch_prompts=4",
            "optim.micro_batch_tokens=96",
            "optim.lr=1e-6",
            "optim.warmup_steps=4",
            *overrides,
        ],
    )
    torch.manual_seed(0)
    return Trainer(cfg, "cpu")


def test_logged_loss_is_the_mini_batch_sum_over_its_micro_batches():
    trainer = _trainer()
    minis = trainer.prepare(fixed_batch(trainer.model.config.vocab_size))
    trainer.proximal_pass(minis)
    assert len(minis) == 1 and len(minis[0].update) > 1, "one mini-batch of several micro-batches"
    with torch.no_grad():
        parts = [
            float(policy_objective(trainer._logits(mb), trainer._policy_batch(mb), trainer.cfg, trainer.generator)[0])
            for mb in minis[0].update
        ]
    logged = trainer.update(minis)["loss"]
    assert logged == pytest.approx(sum(parts), rel=1e-5, abs=1e-9)
    assert logged != pytest.approx(sum(parts) / len(parts), rel=1e-3)  # not the per-micro-batch mean


def test_logged_lr_is_the_one_the_step_used():
    trainer = _trainer()
    batch = fixed_batch(trainer.model.config.vocab_size)
    lrs = [trainer.train_on(batch)["lr"] for _ in range(3)]
    assert lrs == pytest.approx([0.25e-6, 0.5e-6, 0.75e-6])  # linear warm-up over 4 steps, from step 1
