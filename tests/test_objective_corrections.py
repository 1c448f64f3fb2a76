"""The rollout/trainer mismatch corrections against hand computations (docs/design.md section 4.6)."""

from __future__ import annotations

import math

import pytest
import torch

from dynamo_async.algo.objective import PolicyBatch, assemble, policy_objective
from dynamo_async.config import load_config

# Two responses of 4 and 3 tokens; log(pi_old / pi_behavior) per token chosen by hand.
LOG_RHO = [[0.0, math.log(3.0), math.log(0.4), math.log(1.5)], [math.log(6.0), math.log(0.9), 0.0, 0.0]]
MASK = torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 0]])
ADV = torch.tensor([1.0, -0.5])


def _cfg(weights: str, *extra: str):
    return load_config(None, ["model.name=x", "method=grpo", f"objective.token_weights={weights}", *extra])


def _batch(logp_behavior_shift: bool = True):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, generator=g)
    tokens = torch.randint(0, 5, (2, 4), generator=g) * MASK.long()
    logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    logp_old = logp.detach().clone()  # ratio 1: the loss is -A per token, times the weight
    logp_behavior = logp_old - torch.tensor(LOG_RHO) if logp_behavior_shift else None
    return logits, PolicyBatch(tokens, MASK, ADV, logp_old, logp_behavior)


def _weights(cfg) -> tuple[torch.Tensor, dict]:
    """The per-token weights the objective applied, read back from the loss (ratio 1: l_t = -A w_t)."""
    logits, batch = _batch()
    s = assemble(cfg)._state(logits, batch, None, False)
    for c in assemble(cfg).token_weights:
        c.apply(s)
    w = torch.ones_like(MASK) if s.weight is None else s.weight
    return w * MASK, s.metrics


def _hand(rule) -> torch.Tensor:
    out = torch.zeros_like(MASK)
    for i, row in enumerate(LOG_RHO):
        n = int(MASK[i].sum())
        for t in range(n):
            out[i, t] = rule(i, t, [math.exp(x) for x in row[:n]])
    return out


def test_seq_truncated_is_weights_every_token_by_the_capped_product_ratio():
    w, metrics = _weights(_cfg("[seq_truncated_is]", "objective.seq_truncated_is.cap=2.0"))
    # response 0: 1 * 3 * 0.4 * 1.5 = 1.8 (< 2); response 1: 6 * 0.9 * 1 = 5.4 -> 2
    expected = _hand(lambda i, t, rho: min(math.prod(rho), 2.0))
    torch.testing.assert_close(w, expected)
    assert metrics["seq_truncated_is_frac"] == pytest.approx(0.5)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_masked_is_keeps_the_ratio_inside_the_band_and_masks_outside(level):
    w, metrics = _weights(_cfg("[masked_is]", f"objective.masked_is.level={level}", "objective.masked_is.low=0.5"))
    if level == "token":
        expected = _hand(lambda i, t, rho: rho[t] if 0.5 <= rho[t] <= 2.0 else 0.0)
        masked = 3  # 3.0, 0.4 and 6.0 leave [0.5, 2]
    else:
        expected = _hand(lambda i, t, rho: math.prod(rho) if 0.5 <= math.prod(rho) <= 2.0 else 0.0)
        masked = 3  # response 1's product 5.4 leaves the band: its 3 tokens
    torch.testing.assert_close(w, expected)
    assert metrics["masked_is_masked_tokens"] == masked
    assert metrics["masked_is_masked_frac"] == pytest.approx(masked / 7)


def test_icepop_masks_both_sides_and_reweights_inside():
    w, metrics = _weights(_cfg("[icepop]", "objective.icepop.alpha=0.5", "objective.icepop.beta=5.0"))
    expected = _hand(lambda i, t, rho: rho[t] if 0.5 <= rho[t] <= 5.0 else 0.0)
    torch.testing.assert_close(w, expected)
    assert metrics["icepop_masked_tokens"] == 2  # 0.4 below, 6.0 above
    assert expected[0, 2] == 0 and expected[1, 0] == 0 and expected[0, 1] == pytest.approx(3.0)


def test_geo_mask_drops_responses_by_the_geometric_mean_ratio():
    w, metrics = _weights(_cfg("[geo_mask]", "objective.geo_mask.low=0.8", "objective.geo_mask.high=1.5"))
    # response 0: (1.8) ** (1/4) = 1.158 kept; response 1: 5.4 ** (1/3) = 1.754 dropped
    expected = _hand(lambda i, t, rho: 1.0 if 0.8 <= math.prod(rho) ** (1 / len(rho)) <= 1.5 else 0.0)
    torch.testing.assert_close(w, expected)
    assert expected[0].sum() == 4 and expected[1].sum() == 0
    assert metrics["geo_mask_masked_tokens"] == 3


def test_geo_mask_beside_truncated_is_multiplies_the_token_weights():
    w, _ = _weights(_cfg("[truncated_is, geo_mask]", "objective.geo_mask.low=0.8", "objective.geo_mask.high=1.5"))
    expected = _hand(lambda i, t, rho: min(rho[t], 2.0) if i == 0 else 0.0)
    torch.testing.assert_close(w, expected)


@pytest.mark.parametrize("weights", ["[truncated_is]", "[seq_truncated_is]", "[masked_is]", "[icepop]", "[geo_mask]"])
def test_the_corrections_enter_the_loss_as_detached_weights(weights):
    cfg = _cfg(weights)
    logits, batch = _batch()
    leaf = logits.clone().requires_grad_(True)
    loss, _ = policy_objective(leaf, batch, cfg)
    w, _ = _weights(cfg)
    # ratio 1 (not clipped): token-mean of -A_i * w_t over the 7 valid tokens
    assert loss.item() == pytest.approx(float((-ADV[:, None] * w).sum() / 7), rel=1e-6)
    loss.backward()
    assert torch.isfinite(leaf.grad).all()


@pytest.mark.parametrize("weights", ["[seq_truncated_is]", "[masked_is]", "[icepop]", "[geo_mask]"])
def test_a_correction_is_a_no_op_when_the_old_policy_is_the_behaviour_policy(weights):
    cfg = _cfg(weights, "off_policy.mode=behavior")
    logits, batch = _batch(logp_behavior_shift=False)
    loss, metrics = policy_objective(logits, batch, cfg)
    assert loss.item() == pytest.approx(float((-ADV[:, None] * MASK).sum() / 7), rel=1e-6)
    assert not any(k.endswith("_masked_tokens") for k in metrics)


def test_a_learner_step_reports_how_many_tokens_a_correction_masked():
    import importlib.util
    from pathlib import Path

    from dynamo_async.learner.trainer import Trainer

    spec = importlib.util.spec_from_file_location(
        "objective_reference", Path(__file__).with_name("objective_reference.py")
    )
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    cfg = load_config(
        reference.TINY,
        ["model.name=builtin:tiny", "optim.micro_batch_tokens=96", "objective.token_weights=[icepop]"]
        + ["objective.icepop.alpha=0.05", "objective.icepop.beta=2.0"],  # about half the ratios are below 0.05
    )
    trainer = Trainer(cfg, "cpu")
    minis = trainer.prepare(reference.fixed_batch(trainer.model.config.vocab_size))
    trainer.proximal_pass(minis)
    expected = 0
    for mb in (m for mini in minis for m in mini.update):
        k = (mb.logp_old - mb.logp_behavior).exp()
        expected += int((((k < 0.05) | (k > 2.0)) & mb.mask.bool()).sum())
    metrics = trainer.update(minis)
    assert expected > 0 and metrics["icepop_masked_tokens"] == expected  # summed over the micro-batches
    assert 0 < metrics["icepop_masked_frac"] < 1
