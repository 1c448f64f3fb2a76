"""Clipped policy loss, IS weights, aggregation and the full objective's gradient (docs/design.md 4.2, 4.3)."""

from __future__ import annotations

import math

import pytest
import torch

from dynamo_async.algo.aggregation import aggregate
from dynamo_async.algo.objective import PolicyBatch, policy_objective
from dynamo_async.algo.policy_loss import clipped_token_loss, truncated_is_weights
from dynamo_async.config import load_config


def _cfg(method="grpo", *overrides):
    return load_config(None, ["model.name=x", f"method={method}", *overrides])


# --------------------------------------------------------------------------- clipped_token_loss


def _loss_at(ratio, adv, eps_low=0.2, eps_high=0.2, c=None):
    logp = torch.tensor([math.log(ratio)], dtype=torch.float64)
    loss, info = clipped_token_loss(
        logp, torch.zeros(1, dtype=torch.float64), torch.tensor([adv], dtype=torch.float64), eps_low, eps_high, c
    )
    return loss.item(), info


@pytest.mark.parametrize(
    "ratio, adv, expected",
    [
        (1.1, 1.0, -1.1),  # inside the range: -A r = -1.1
        (1.5, 1.0, -1.2),  # A > 0, above 1 + eps_high: max(-1.5, -1.2) = -1.2
        (0.5, 1.0, -0.5),  # A > 0, below 1 - eps_low: max(-0.5, -0.8) = -0.5 (not clipped)
        (0.5, -1.0, 0.8),  # A < 0, below 1 - eps_low: max(0.5, 0.8) = 0.8
        (1.5, -1.0, 1.5),  # A < 0, above 1 + eps_high: max(1.5, 1.2) = 1.5 (not clipped)
        (1.1, -2.0, 2.2),  # inside: -(-2)(1.1) = 2.2
        (1.3, 0.5, -0.6),  # max(-0.65, -0.5 * 1.2) = -0.6
    ],
)
def test_clipped_token_loss_hand_values(ratio, adv, expected):
    loss, _ = _loss_at(ratio, adv)
    assert loss == pytest.approx(expected, abs=1e-9)


def test_clipped_token_loss_asymmetric_range():
    # eps_low 0.2, eps_high 0.28: A > 0 at r = 1.5 -> -1.28; A < 0 at r = 0.5 -> 0.8
    assert _loss_at(1.5, 1.0, 0.2, 0.28)[0] == pytest.approx(-1.28, abs=1e-9)
    assert _loss_at(0.5, -1.0, 0.2, 0.28)[0] == pytest.approx(0.8, abs=1e-9)


def test_dual_clip_bounds_negative_advantage_loss():
    # A = -1, r = 20: max(20, 1.2) = 20 -> min(20, -c A = 10) = 10
    loss, info = _loss_at(20.0, -1.0, c=10.0)
    assert loss == pytest.approx(10.0, abs=1e-9)
    assert info["dual_clipped"].item()
    # A = -0.5, r = 30, c = 3: min(15, 1.5) = 1.5 = -c A
    assert _loss_at(30.0, -0.5, c=3.0)[0] == pytest.approx(1.5, abs=1e-9)
    # below the bound it is inactive: A = -1, r = 5 -> 5 < 10
    loss, info = _loss_at(5.0, -1.0, c=10.0)
    assert loss == pytest.approx(5.0, abs=1e-9) and not info["dual_clipped"].item()
    # never applied to A > 0: A = 1, r = 20 -> max(-20, -1.2) = -1.2
    assert _loss_at(20.0, 1.0, c=10.0)[0] == pytest.approx(-1.2, abs=1e-9)


def test_dual_clip_c_at_most_one_is_value_error():
    with pytest.raises(ValueError):
        _loss_at(1.0, -1.0, c=1.0)


def test_dual_clip_kills_gradient():
    logp = torch.tensor([math.log(20.0), math.log(1.1)], requires_grad=True)
    loss, _ = clipped_token_loss(logp, torch.zeros(2), torch.tensor([-1.0, -1.0]), 0.2, 0.2, 10.0)
    loss.sum().backward()
    # token 0 is dual-clipped: d/dlogp = 0; token 1 is inside: d(-A r)/dlogp = -A r = 1.1
    torch.testing.assert_close(logp.grad, torch.tensor([0.0, 1.1]))


def test_clip_info_masks():
    ratios = torch.tensor([1.1, 1.5, 0.5, 0.5])
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0])
    _, info = clipped_token_loss(ratios.log(), torch.zeros(4), adv, 0.2, 0.2)
    # clipped where the clipped branch wins: (1.5, A>0) and (0.5, A<0)
    assert info["clipped"].tolist() == [False, True, False, True]
    torch.testing.assert_close(info["ratio"], ratios)


def test_is_weights_multiply_and_are_detached():
    logp = torch.tensor([math.log(1.1), math.log(0.9)], requires_grad=True)
    adv = torch.tensor([1.0, -2.0])
    w = torch.tensor([0.5, 2.0], requires_grad=True)
    plain, _ = clipped_token_loss(logp, torch.zeros(2), adv, 0.2, 0.2)
    weighted, _ = clipped_token_loss(logp, torch.zeros(2), adv, 0.2, 0.2, is_weights=w)
    # -1 * 1.1 * 0.5 = -0.55 ; 2 * 0.9 * 2 = 3.6
    torch.testing.assert_close(weighted, torch.tensor([-0.55, 3.6]))
    torch.testing.assert_close(weighted, plain * w.detach())
    weighted.sum().backward()
    assert w.grad is None  # weights detached
    torch.testing.assert_close(logp.grad, torch.tensor([-1.1 * 0.5, 2.0 * 0.9 * 2.0]))


def test_truncated_is_weights_cap():
    logp_old = torch.log(torch.tensor([0.5, 0.3, 0.9, 0.2]))
    logp_beh = torch.log(torch.tensor([1.0, 0.2, 0.3, 0.2]))
    # ratios 0.5, 1.5, 3.0, 1.0 -> capped at C = 2: 0.5, 1.5, 2.0, 1.0
    got = truncated_is_weights(logp_old, logp_beh, cap=2.0)
    torch.testing.assert_close(got, torch.tensor([0.5, 1.5, 2.0, 1.0]))
    assert not truncated_is_weights(logp_old.requires_grad_(True), logp_beh, 2.0).requires_grad


# --------------------------------------------------------------------------- aggregation

LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def test_aggregate_token_mean_hand_value():
    # (1 + 2 + 4) / 3 = 7/3
    assert aggregate(LOSS, MASK, "token-mean").item() == pytest.approx(7 / 3)


def test_aggregate_seq_mean_token_mean_hand_value():
    # ((1 + 2)/2 + 4/1) / 2 = (1.5 + 4) / 2 = 2.75
    assert aggregate(LOSS, MASK, "seq-mean-token-mean").item() == pytest.approx(2.75)


def test_aggregate_seq_mean_token_sum_norm_hand_value():
    # (1 + 2 + 4) / (2 seqs * L = 3) = 7/6; with norm_length 10: 7/20
    assert aggregate(LOSS, MASK, "seq-mean-token-sum-norm").item() == pytest.approx(7 / 6)
    assert aggregate(LOSS, MASK, "seq-mean-token-sum-norm", norm_length=10).item() == pytest.approx(7 / 20)


def test_aggregate_padding_values_do_not_matter():
    garbage = LOSS.clone()
    garbage[MASK == 0] = 1e6
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        assert aggregate(garbage, MASK, mode).item() == pytest.approx(aggregate(LOSS, MASK, mode).item())


def test_aggregate_bad_mode_is_value_error():
    with pytest.raises(ValueError):
        aggregate(LOSS, MASK, "sum")


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_aggregate_micro_batches_sum_to_whole_batch(mode):
    g = torch.Generator().manual_seed(0)
    loss = torch.randn(6, 5, generator=g)
    lengths = torch.tensor([5, 1, 3, 4, 2, 5])
    mask = (torch.arange(5)[None, :] < lengths[:, None]).float()
    whole = aggregate(loss, mask, mode)
    totals = {"total_tokens": float(mask.sum()), "total_seqs": 6.0}
    parts = [aggregate(loss[rows], mask[rows], mode, **totals) for rows in (slice(0, 2), slice(2, 3), slice(3, 6))]
    torch.testing.assert_close(sum(parts), whole)


# --------------------------------------------------------------------------- THE gradient test

B, T, V = 2, 4, 5
MASK_BT = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
SEQ_ADV = torch.tensor([0.9, -1.3])
# Target ratios exp(logp - logp_old), chosen away from every clip boundary:
#   row 0 (A > 0): inside, above 1+eps (clipped), below 1-eps (alive), inside
#   row 1 (A < 0): below 1-eps (clipped), 12 > c = 10 (dual clip), inside, padding
RATIOS = torch.tensor([[1.05, 1.5, 0.6, 0.95], [0.6, 12.0, 1.1, 1.0]], dtype=torch.float64)
# Target behaviour weights exp(logp_old - logp_behavior) before the cap C = 2
BEHAVIOR_W = torch.tensor([[0.5, 1.0, 3.0, 1.5], [1.2, 0.8, 2.5, 1.0]], dtype=torch.float64)


def _grad_example(temperature):
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(B, T, V, generator=g) * 1.5
    tokens = torch.randint(0, V, (B, T), generator=g)
    logp = torch.log_softmax(logits.double() / temperature, -1).gather(-1, tokens[..., None]).squeeze(-1)
    logp_old = (logp - RATIOS.log()).float()
    logp_behavior = (logp_old.double() - BEHAVIOR_W.log()).float()
    batch = PolicyBatch(tokens=tokens, mask=MASK_BT, advantages=SEQ_ADV, logp_old=logp_old, logp_behavior=logp_behavior)
    return logits, batch


def _reference_objective(logits64, batch, cfg):
    """The docs/design.md section 4.2/4.3 formulas with plain autograd, float64, nothing from dynamo_async.algo."""
    temp = cfg.rollout.temperature
    el, eh, c, cap = cfg.loss.eps_low, cfg.loss.eps_high, cfg.loss.dual_clip_c, cfg.off_policy.is_cap
    m = batch.mask.double()
    valid = m.bool()
    logp_all = torch.log_softmax(logits64 / temp, -1)
    logp = logp_all.gather(-1, batch.tokens[..., None]).squeeze(-1)
    logp_old = batch.logp_old.double()
    adv = batch.advantages.double()[:, None].expand(B, T) * m

    if cfg.method == "dynamo":
        mod = cfg.modulation
        with torch.no_grad():
            p = logp_all.exp()
            h = -(p * logp_all).sum(-1)
            beta = torch.ones_like(adv)
            if mod.compensation:  # Eq. 3
                h_max, h_min = h[valid].max(), h[valid].min()
                comp = 1 + mod.alpha * (h_max - h) / (h_max - h_min)
                beta = beta * torch.where(valid & (adv > 0), comp, torch.ones_like(comp))
            if mod.stabilization:  # Theorem 1 + Eq. 4
                r = torch.exp(logp - logp_old)
                # gradient alive: inside the ratio clip, and r <= c under the dual clip (A < 0)
                alive = ((adv > 0) & (r <= 1 + eh)) | ((adv < 0) & (r >= 1 - el) & (r <= c))
                lam = logp_all + h[..., None]
                own = (p * lam).gather(-1, batch.tokens[..., None]).squeeze(-1)
                if mod.entropy_change == "exact":
                    centre = (p * p * lam).sum(-1)
                else:
                    centre = ((own * m).sum(-1) / m.sum(-1))[:, None].expand(B, T)
                big_xi = (alive.double() * r * adv * (own - centre)).abs() * m
                x = big_xi / big_xi[valid].max()
                stab = mod.lambda_min + (1 - mod.lambda_min) * torch.sigmoid(-mod.gamma * (x - mod.tau))
                beta = beta * torch.where(valid, stab, torch.ones_like(stab))
            adv = adv * beta

    r = torch.exp(logp - logp_old)
    loss = torch.maximum(-adv * r, -adv * torch.clamp(r, 1 - el, 1 + eh))
    loss = torch.where(adv < 0, torch.minimum(loss, -c * adv), loss)
    w = torch.clamp(torch.exp(logp_old - batch.logp_behavior.double()), max=cap)
    loss = loss * w
    mode = cfg.loss.aggregation
    if mode == "token-mean":
        return (loss * m).sum() / m.sum()
    if mode == "seq-mean-token-mean":
        return ((loss * m).sum(-1) / m.sum(-1)).mean()
    # Dr. GRPO: the constant length L is the response cap rollout.max_new_tokens
    return (loss * m).sum() / (B * cfg.rollout.max_new_tokens)


@pytest.mark.parametrize(
    "method, overrides",
    [
        ("grpo", []),
        ("grpo", ["rollout.temperature=0.7", "loss.aggregation=seq-mean-token-mean"]),
        ("dynamo", []),
        ("dynamo", ["rollout.temperature=0.7"]),
        ("dynamo", ["modulation.entropy_change=sequence_centered"]),
        ("dynamo", ["modulation.stabilization=false"]),
        ("dynamo", ["modulation.compensation=false", "loss.aggregation=seq-mean-token-sum-norm"]),
        ("dynamo", ["modulation.alpha=0.2", "modulation.gamma=50", "modulation.tau=0.99", "loss.eps_high=0.28"]),
    ],
)
def test_policy_objective_gradient_matches_hand_written_formula(method, overrides):
    cfg = _cfg(method, *overrides)
    logits, batch = _grad_example(cfg.rollout.temperature)
    leaf = logits.clone().requires_grad_(True)
    loss, metrics = policy_objective(leaf, batch, cfg)
    loss.backward()

    leaf64 = logits.double().requires_grad_(True)
    ref = _reference_objective(leaf64, batch, cfg)
    ref.backward()

    assert loss.item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-6)
    torch.testing.assert_close(leaf.grad.double(), leaf64.grad, rtol=1e-4, atol=1e-6)
    # the example exercises clipping and dual clipping, and the gradient is not trivially zero
    assert metrics["clip_frac"] > 0 and metrics["dual_clip_frac"] > 0
    assert leaf.grad.abs().sum() > 0
    assert leaf.grad[1, 3].abs().sum() == 0  # padding position gets no gradient


def test_dynamo_modulation_changes_the_gradient():
    # guards the test above against passing vacuously: dynamo's betas must differ from 1
    logits, batch = _grad_example(1.0)
    grads = {}
    for method in ("grpo", "dynamo"):
        leaf = logits.clone().requires_grad_(True)
        loss, metrics = policy_objective(leaf, batch, _cfg(method))
        loss.backward()
        grads[method] = leaf.grad
    assert not torch.allclose(grads["grpo"], grads["dynamo"], rtol=1e-3, atol=1e-6)
    assert metrics["beta_comp_mean"] > 1.0
    assert metrics["beta_stab_mean"] < 1.0


@pytest.mark.parametrize("method", ["grpo", "dynamo", "entropy_loss", "entropy_advantage", "clip_higher"])
@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean"])
def test_policy_objective_micro_batches_accumulate_to_whole_batch(method, aggregation):
    # Micro-batches (same padded length) with mini-batch totals: summed losses and gradients equal the
    # whole batch's for every method whose statistics are per-token or per-sequence. (dynamo's
    # H_max/H_min and max Xi, and the covariance / top-k selections of clip_cov, kl_cov and fork_tokens,
    # are per micro-batch by design, so dynamo is checked with modulation off and those are left out.)
    extra = ["modulation.compensation=false", "modulation.stabilization=false"] if method == "dynamo" else []
    cfg = _cfg(method, f"loss.aggregation={aggregation}", *extra)
    g = torch.Generator().manual_seed(3)
    nb, nt = 4, 5
    logits = torch.randn(nb, nt, V, generator=g)
    tokens = torch.randint(0, V, (nb, nt), generator=g)
    mask = (torch.arange(nt)[None, :] < torch.tensor([5, 2, 4, 3])[:, None]).float()
    logp_old = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1) + 0.1 * torch.randn(
        nb, nt, generator=g
    )
    adv = torch.tensor([1.0, -0.5, 0.3, -1.2])
    whole_leaf = logits.clone().requires_grad_(True)
    whole, _ = policy_objective(whole_leaf, PolicyBatch(tokens, mask, adv, logp_old), cfg)
    whole.backward()
    leaf = logits.clone().requires_grad_(True)
    total = 0.0
    for rows in (slice(0, 1), slice(1, 4)):
        part = PolicyBatch(
            tokens[rows], mask[rows], adv[rows], logp_old[rows], total_tokens=float(mask.sum()), total_seqs=float(nb)
        )
        loss, _ = policy_objective(leaf[rows], part, cfg)
        loss.backward()
        total += loss.item()
    assert total == pytest.approx(whole.item(), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(leaf.grad, whole_leaf.grad, rtol=1e-5, atol=1e-7)


def test_stats_from_the_proximal_pass_give_the_same_loss_and_gradient():
    # docs/design.md section 8: the proximal pass computes entropy and vocabulary sums; with unchanged weights
    # the training step must then give exactly what computing them in the step gives.
    from dynamo_async.algo.objective import proximal_stats

    cfg = _cfg("dynamo")
    logits, batch = _grad_example(cfg.rollout.temperature)
    stats = proximal_stats(logits, batch.tokens, cfg)
    assert stats.entropy is not None and stats.vocab_sum is not None and not stats.logp.requires_grad
    pre = PolicyBatch(
        tokens=batch.tokens,
        mask=batch.mask,
        advantages=batch.advantages,
        logp_old=batch.logp_old,
        logp_behavior=batch.logp_behavior,
        entropy=stats.entropy,
        vocab_sum=stats.vocab_sum,
    )
    grads = []
    for b in (batch, pre):
        leaf = logits.clone().requires_grad_(True)
        loss, _ = policy_objective(leaf, b, cfg)
        loss.backward()
        grads.append((loss.detach(), leaf.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
