"""Samples that cannot contribute are left out of the update without changing it; DynaMO's
normalisers are the mini-batch's; micro-batches by length pad less (docs/design.md section 8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sample_records import sample_record, scored_record

from buffer.batch import LearnerBatch, ReadyGroup
from dynamo_async.config import load_config
from dynamo_async.learner.batching import Packing, mini_batches

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
BASE = ("model.name=builtin:tiny", "trainer.seed=5", "optim.mini_batch_prompts=4", "optim.micro_batch_tokens=96")


def _batch(vocab: int, accs=((1, 0, 1), (1, 1, 1, 1), (0, 1, 1, 0, 0), (0, 0, 0))) -> LearnerBatch:
    """Groups of unequal prompts and responses; by default groups 1 and 3 have all-equal rewards."""
    rng = np.random.default_rng(9)
    groups = []
    for g, acc in enumerate(accs):
        prompt = rng.integers(5, vocab, 8 + 3 * g).astype(np.int32)
        samples = []
        for i, a in enumerate(acc):
            n = 3 + int(rng.integers(0, 8))
            tokens = rng.integers(5, vocab, n).astype(np.int32)
            samples.append(scored_record(g, i, tokens, (-0.5 - 2.0 * rng.random(n)).astype(np.float32), a))
        groups.append(ReadyGroup(g, f"p{g}", prompt, "1", tuple(samples)))
    return LearnerBatch(step=0, policy_version=0, groups=tuple(groups), staleness=(0,) * len(groups))


def _trainer(*overrides: str):
    from dynamo_async.learner.trainer import Trainer

    torch.manual_seed(0)
    return Trainer(load_config(TINY, [*BASE, *overrides]), "cpu")


def _loss_and_gradient(*overrides: str):
    """Proximal pass, then the weights move (ratios leave 1), then the update's loss and gradient."""
    trainer = _trainer(*overrides)
    minis = trainer.prepare(_batch(trainer.model.config.vocab_size))
    trainer.proximal_pass(minis)
    with torch.no_grad():
        noise = torch.Generator().manual_seed(1)
        for _, p in sorted(trainer.model.named_parameters()):
            p.add_(0.3 * p.abs().mean() * torch.randn(p.shape, generator=noise))
    total = 0.0
    for mb in minis[0].update:
        loss, _ = trainer.objective(trainer._logits(mb), trainer._policy_batch(mb), trainer.generator)
        loss.backward()
        total += float(loss.detach())
    named = dict(trainer.model.named_parameters())
    grad = torch.cat([named[n].grad.flatten() for n in sorted(named)])
    return total, grad, minis[0].skipped


SKIPPABLE = {
    "grpo": ("method=grpo",),
    "grpo-behavior": ("method=grpo", "off_policy.mode=behavior"),
    "dynamo": ("method=dynamo",),
    "dynamo-behavior": ("method=dynamo", "off_policy.mode=behavior"),
    "dynamo-seq-mean-token-mean": ("method=dynamo", "loss.aggregation=seq-mean-token-mean"),
    "dr-grpo": ("method=grpo", "advantage.scale_by_std=false", "loss.aggregation=seq-mean-token-sum-norm"),
    "clip_higher": ("method=clip_higher",),
    "entropy_advantage": ("method=entropy_advantage",),
    "dynamo+icepop": (
        "method=dynamo",
        "objective.token_weights=[truncated_is, icepop]",
        "objective.icepop.alpha=0.0001",
        "objective.icepop.beta=10000",
    ),
}


@pytest.mark.parametrize("name", sorted(SKIPPABLE))
def test_leaving_zero_advantage_samples_out_leaves_loss_and_gradient_unchanged(name):
    kept = _loss_and_gradient(*SKIPPABLE[name], "optim.skip_zero_advantage=false")
    skipped = _loss_and_gradient(*SKIPPABLE[name])
    assert (kept[2], skipped[2]) == (0, 7), "the two all-equal groups' 4 + 3 samples are left out"
    np.testing.assert_allclose(skipped[0], kept[0], rtol=1e-5, atol=1e-9)  # float32 summation order
    torch.testing.assert_close(skipped[1], kept[1], rtol=1e-5, atol=1e-7)  # float32 summation order
    assert kept[1].norm() > 0


@pytest.mark.parametrize(
    "overrides",
    [
        ("method=kl_cov",),
        ("method=entropy_loss",),
        ("method=clip_cov",),
        ("method=fork_tokens",),
        ("method=dynamo", "modulation.normaliser_scope=micro_batch"),
    ],
    ids=["kl_cov", "entropy_loss", "clip_cov", "fork_tokens", "dynamo-micro-batch-normalisers"],
)
def test_objectives_whose_zero_advantage_samples_count_skip_nothing(overrides):
    trainer = _trainer(*overrides)
    assert not trainer.objective.skips_zero_advantage and not trainer.packing.skip_zero_advantage
    metrics = trainer.train_on(_batch(trainer.model.config.vocab_size))
    assert metrics["skipped_samples"] == 0


def test_a_step_logs_skipped_samples_padding_and_the_entropy_of_every_sample():
    trainer = _trainer("method=dynamo")
    assert trainer.packing.shared_prompt and trainer.packing.pack_tails  # the tiny model: sdpa attention
    batch = _batch(trainer.model.config.vocab_size)
    metrics = trainer.train_on(batch)
    assert metrics["skipped_samples"] == 7
    assert 0.0 <= metrics["padded_frac"] < 0.5
    # the entropy is the proximal pass's over every sample's response tokens, skipped ones too
    again = _trainer("method=dynamo")
    minis = again.prepare(batch)
    again.proximal_pass(minis)
    mbs = minis[0].all()
    want = sum(float((m.entropy * m.mask).sum()) for m in mbs) / sum(float(m.mask.sum()) for m in mbs)
    assert metrics["entropy"] == pytest.approx(want, rel=1e-6)


def test_a_mini_batch_whose_samples_are_all_left_out_still_steps_as_with_zero_gradients():
    """AdamW's weight decay (and, later, its moments) move the weights even at zero gradient."""
    zero_variance = ((1, 1, 1), (0, 0), (1, 1, 1, 1), (0, 0, 0))
    after = []
    for skip in ("true", "false"):
        trainer = _trainer("method=grpo", "optim.weight_decay=0.1", f"optim.skip_zero_advantage={skip}")
        before = {n: t.detach().clone() for n, t in trainer.masters.named.items()}
        metrics = trainer.train_on(_batch(trainer.model.config.vocab_size, zero_variance))
        assert metrics["skipped_samples"] == (12 if skip == "true" else 0)
        after.append({n: t.detach().clone() for n, t in trainer.masters.named.items()})
    assert any(not torch.equal(before[n], after[0][n]) for n in before)
    for n in before:
        torch.testing.assert_close(after[0][n], after[1][n], rtol=0, atol=0)


def test_mini_batch_normalisers_make_the_update_independent_of_micro_batch_tokens():
    """H_max, H_min and max Xi over the mini-batch: cutting it into more micro-batches changes
    nothing; with the authors' per-micro-batch scope it does."""
    results = {}
    for scope in ("mini_batch", "micro_batch"):
        for tokens in (64, 4096):
            over = ("method=dynamo", f"modulation.normaliser_scope={scope}", f"optim.micro_batch_tokens={tokens}")
            results[scope, tokens] = _loss_and_gradient(*over, "optim.skip_zero_advantage=false")
    torch.testing.assert_close(results["mini_batch", 64][1], results["mini_batch", 4096][1], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(results["micro_batch", 64][1], results["micro_batch", 4096][1], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("shared", [False, True], ids=["rows", "shared"])
def test_micro_batches_by_length_pad_less_and_stay_within_the_budget(shared):
    cfg = load_config(TINY, [*BASE, "optim.mini_batch_prompts=8"])
    rng = np.random.default_rng(3)
    accs = [tuple(int(a) for a in rng.integers(0, 2, 6)) for _ in range(8)]
    batch = _batch(300, accs)
    fracs = {}
    for sort in (False, True):
        packing = Packing(shared_prompt=shared, skip_zero_advantage=False, sort_by_length=sort, budget=160)
        (mini,) = mini_batches(batch, cfg, 0, packing)
        assert sum(mb.mask.shape[0] for mb in mini.update) == 48
        assert all(mb.computed_tokens <= 160 or mb.mask.shape[0] == 1 for mb in mini.update)
        fracs[sort] = sum(mb.padded_tokens for mb in mini.update) / sum(mb.computed_tokens for mb in mini.update)
    assert fracs[True] < fracs[False], fracs


def test_a_micro_batch_is_shared_only_where_it_saves_a_quarter_of_the_positions():
    """Short responses after a long prompt: shared; long responses after a short prompt (where
    sharing saves nothing and its masked attention is dearer): full rows."""
    from dynamo_async.learner.micro import RowInputs, SharedInputs

    cfg = load_config(TINY, [*BASE, "optim.micro_batch_tokens=100000"])
    packing = Packing.of(cfg, shared_prompt=True, skips_zero_advantage=True, pack_tails=True)
    short = _batch(300, ((1, 0, 1, 0),) * 4)  # prompts of 8-17 tokens, responses of 3-10
    rng = np.random.default_rng(0)
    long = LearnerBatch(
        step=0, policy_version=0, staleness=(0,),
        groups=(ReadyGroup(0, "p0", rng.integers(5, 300, 16).astype(np.int32), "1", tuple(
            sample_record(0, "p0", i, rng.integers(5, 300, 200).astype(np.int32), np.zeros(200, np.float32),
                          np.zeros(200, np.int32), acc=i % 2)
            for i in range(4)
        )),),
    )  # fmt: skip
    (mini,) = mini_batches(short, cfg, 0, packing)
    assert all(isinstance(mb.inputs, SharedInputs) for mb in mini.update)
    (mini,) = mini_batches(long, cfg, 0, packing)
    assert all(isinstance(mb.inputs, RowInputs) for mb in mini.update)
