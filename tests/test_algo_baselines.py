"""Table 1 baselines against their formulas, and every method through policy_objective (docs/design.md section 4.4)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamo_async.algo.aggregation import aggregate
from dynamo_async.algo.baselines.clip_cov import clip_cov_keep
from dynamo_async.algo.baselines.clip_higher import clip_range
from dynamo_async.algo.baselines.covariance import token_covariance
from dynamo_async.algo.baselines.entropy_advantage import entropy_shaped_advantages
from dynamo_async.algo.baselines.entropy_loss import entropy_bonus
from dynamo_async.algo.baselines.fork_tokens import high_entropy_mask
from dynamo_async.algo.baselines.kl_cov import kl_cov_token_loss, top_covariance_mask
from dynamo_async.algo.baselines.w_reinforce import w_reinforce_advantages
from dynamo_async.algo.logprobs import token_stats
from dynamo_async.algo.objective import PolicyBatch, clip_bounds, policy_objective, sequence_advantages
from dynamo_async.config import METHODS, load_config


def _cfg(method, *overrides):
    return load_config(None, ["model.name=x", f"method={method}", *overrides])


# --------------------------------------------------------------------------- clip-higher


def test_clip_higher_range():
    assert clip_range(0.2, 0.28) == (0.2, 0.28)
    assert clip_bounds(_cfg("clip_higher")) == (0.2, 0.28)  # loss.eps_low and baselines.clip_higher_eps_high
    assert clip_bounds(_cfg("grpo")) == (0.2, 0.2)
    assert clip_bounds(_cfg("clip_cov")) == (1.0, 1.0)  # the Clip-Cov paper's 1/1 range


def test_clip_higher_eps_high_not_above_eps_low_is_value_error():
    with pytest.raises(ValueError):
        clip_range(0.2, 0.2)
    with pytest.raises(ValueError):
        clip_range(0.3, 0.28)


def test_clip_higher_lets_positive_tokens_grow_past_1_2():
    # A > 0 token at r = 1.25: clipped by GRPO (1 + 0.2) -> zero gradient; alive under Clip-Higher (1 + 0.28)
    logits = torch.zeros(1, 1, 3)
    tokens = torch.tensor([[0]])
    logp = math.log(1 / 3)
    batch = PolicyBatch(tokens, torch.ones(1, 1), torch.tensor([1.0]), torch.tensor([[logp - math.log(1.25)]]))
    grads = {}
    for method in ("grpo", "clip_higher"):
        leaf = logits.clone().requires_grad_(True)
        loss, _ = policy_objective(leaf, batch, _cfg(method))
        loss.backward()
        grads[method] = leaf.grad
    assert grads["grpo"].abs().sum() == 0
    assert grads["clip_higher"].abs().sum() > 0


# --------------------------------------------------------------------------- entropy loss


def test_entropy_bonus_hand_value():
    h = torch.tensor([[1.0, 2.0], [3.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # token-mean H = (1 + 2 + 3) / 3 = 2 -> -0.001 * 2 = -0.002
    assert entropy_bonus(h, mask, 0.001, "token-mean").item() == pytest.approx(-0.002)
    # seq-mean-token-mean: ((1 + 2)/2 + 3/1) / 2 = 2.25 -> -0.5 * 2.25 = -1.125
    assert entropy_bonus(h, mask, 0.5, "seq-mean-token-mean").item() == pytest.approx(-1.125)
    assert entropy_bonus(h, mask, 0.5, "token-mean", total_tokens=6.0).item() == pytest.approx(-0.5 * 6 / 6)


def test_entropy_bonus_gradient_flows_to_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 6, generator=g)
    tokens = torch.randint(0, 6, (2, 3), generator=g)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    a = logits.clone().requires_grad_(True)
    stats = token_stats(a, tokens, entropy=True, entropy_grad=True)
    entropy_bonus(stats.entropy, mask, 0.01, "token-mean").backward()
    b = logits.clone().requires_grad_(True)
    lp = torch.log_softmax(b, -1)
    h = -(lp.exp() * lp).sum(-1)
    (-0.01 * (h * mask).sum() / mask.sum()).backward()
    assert a.grad.abs().sum() > 0
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-8)


def test_entropy_loss_method_adds_minus_c_times_mean_entropy():
    logits, batch = _padded_batch()
    c = 0.05
    losses, grads = {}, {}
    for method in ("grpo", "entropy_loss"):
        leaf = logits.clone().requires_grad_(True)
        loss, metrics = policy_objective(leaf, batch, _cfg(method, f"baselines.entropy_coef={c}"))
        loss.backward()
        losses[method], grads[method] = loss.item(), leaf.grad
    b = logits.clone().requires_grad_(True)
    lp = torch.log_softmax(b, -1)
    mean_h = (-(lp.exp() * lp).sum(-1) * batch.mask).sum() / batch.mask.sum()
    (-c * mean_h).backward()
    assert losses["entropy_loss"] - losses["grpo"] == pytest.approx(-c * mean_h.item(), rel=1e-4)
    torch.testing.assert_close(grads["entropy_loss"] - grads["grpo"], b.grad, rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------- fork tokens


def test_fork_tokens_selects_ceil_fraction_of_highest_entropy_valid_tokens():
    h = torch.tensor([[0.1, 0.9, 0.5, 100.0], [0.3, 0.8, 0.2, 0.7]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    got = high_entropy_mask(h, mask, 0.2)
    # N_valid = 7 -> k = ceil(0.2 * 7) = ceil(1.4) = 2: entropies 0.9 and 0.8; padding (100) ignored
    expected = torch.tensor([[False, True, False, False], [False, True, False, False]])
    assert torch.equal(got, expected)
    # k = ceil(0.5 * 7) = 4: 0.9, 0.8, 0.7, 0.5
    got = high_entropy_mask(h, mask, 0.5)
    assert got.sum() == 4 and not got[0, 3]
    torch.testing.assert_close(h[got].sort().values, torch.tensor([0.5, 0.7, 0.8, 0.9]))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(1, 8), st.floats(0.01, 1.0), st.integers(0, 2**16))
def test_fork_tokens_count_and_padding_property(b, t, ratio, seed):
    g = torch.Generator().manual_seed(seed)
    h = torch.rand(b, t, generator=g)
    mask = (torch.rand(b, t, generator=g) < 0.7).float()
    h = torch.where(mask.bool(), h, torch.full_like(h, 1e6))  # padding would win if not ignored
    got = high_entropy_mask(h, mask, ratio)
    n_valid = int(mask.sum())
    assert int(got.sum()) == math.ceil(ratio * n_valid)
    assert not got[mask == 0].any()
    if got.any() and (mask.bool() & ~got).any():
        assert h[got].min() >= h[mask.bool() & ~got].max()


def test_fork_tokens_bad_ratio_is_value_error():
    with pytest.raises(ValueError):
        high_entropy_mask(torch.rand(2, 2), torch.ones(2, 2), 0.0)


def test_fork_tokens_objective_trains_only_selected_tokens():
    logits, batch = _padded_batch()
    # ratio 1 everywhere, so no selected token loses its gradient to the ratio clip
    logp = torch.log_softmax(logits, -1).gather(-1, batch.tokens[..., None]).squeeze(-1)
    batch = PolicyBatch(batch.tokens, batch.mask, batch.advantages, logp)
    leaf = logits.clone().requires_grad_(True)
    loss, metrics = policy_objective(leaf, batch, _cfg("fork_tokens"))
    loss.backward()
    lp = torch.log_softmax(logits, -1)
    h = -(lp.exp() * lp).sum(-1)
    selected = high_entropy_mask(h, batch.mask, 0.2)
    n_valid = int(batch.mask.sum())
    assert int(selected.sum()) == math.ceil(0.2 * n_valid)
    assert metrics["fork_frac"] == pytest.approx(selected.sum().item() / n_valid)
    per_position = leaf.grad.abs().sum(-1)
    assert (per_position[~selected] == 0).all()
    assert (per_position[selected] > 0).all()


# --------------------------------------------------------------------------- entropy advantages


def test_entropy_advantages_hand_values():
    a = torch.tensor([1.0, -1.0, 0.0, 2.0, -0.2])
    h = torch.tensor([0.5, 3.0, 1.0, 10.0, 0.1])
    got = entropy_shaped_advantages(a, h, alpha=0.4, kappa=2.0)
    # psi = min(0.4 H, |A| / 2) = [min(.2,.5), min(1.2,.5), min(.4,0), min(4,1), min(.04,.1)] = [.2,.5,0,1,.04]
    # A + psi = [1.2, -0.5, 0, 3.0, -0.16]
    torch.testing.assert_close(got, torch.tensor([1.2, -0.5, 0.0, 3.0, -0.16]))


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-5, 5, width=32, allow_subnormal=False), st.floats(0, 10)), min_size=1, max_size=20),
    st.floats(0, 2),
    st.floats(1.01, 10),
)
def test_entropy_advantages_never_flip_sign(pairs, alpha, kappa):
    """(Advantages are normal float32 numbers: a subnormal |A| / kappa rounds to |A| itself.)"""
    a = torch.tensor([p[0] for p in pairs])
    h = torch.tensor([p[1] for p in pairs])
    got = entropy_shaped_advantages(a, h, alpha, kappa)
    assert (got[a > 0] > 0).all()
    assert (got[a < 0] < 0).all()
    assert (got[a == 0] == 0).all()
    assert ((got - a) >= 0).all() and ((got - a) <= a.abs() / kappa + 1e-6).all()


def test_entropy_advantages_kappa_at_most_one_is_value_error():
    with pytest.raises(ValueError):
        entropy_shaped_advantages(torch.ones(2), torch.ones(2), 0.4, 1.0)


# --------------------------------------------------------------------------- covariance, clip-cov, kl-cov


def test_token_covariance_hand_values_and_padding():
    a = torch.tensor([[1.0, 3.0, 100.0]])
    lp = torch.tensor([[-1.0, -3.0, 50.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # valid means: A 2, logp -2 -> (1-2)(-1+2) = -1, (3-2)(-3+2) = -1; padding 0
    torch.testing.assert_close(token_covariance(a, lp, mask), torch.tensor([[-1.0, -1.0, 0.0]]))


def _cov_example(seed=0):
    g = torch.Generator().manual_seed(seed)
    b, t = 4, 12
    adv = torch.randn(b, t, generator=g) * 2.0
    logp = torch.randn(b, t, generator=g) * 1.5 - 1.0
    mask = (torch.arange(t)[None, :] < torch.tensor([12, 9, 12, 5])[:, None]).float()
    clipped = torch.rand(b, t, generator=g) < 0.3
    return adv, logp, mask, clipped


def _reference_cov(adv, logp, mask):
    v = mask.bool()
    return (adv - adv[v].mean()) * (logp - logp[v].mean())


@pytest.mark.parametrize("ratio", [1e-4, 0.1, 0.15])
def test_clip_cov_zeroes_exactly_n_unclipped_candidates(ratio):
    adv, logp, mask, clipped = _cov_example()
    cov = _reference_cov(adv, logp, mask)
    candidates = mask.bool() & ~clipped & (cov > 1.0) & (cov < 5.0)
    n_valid = int(mask.sum())  # 38
    n_clip = max(1, math.floor(ratio * n_valid))  # max(1, 0) = 1, floor(3.8) = 3, floor(5.7) = 5
    assert int(candidates.sum()) >= n_clip  # enough candidates: the count is exact
    for seed in range(20):
        keep = clip_cov_keep(adv, logp, mask, clipped, ratio, 1.0, 5.0, torch.Generator().manual_seed(seed))
        zeroed = keep == 0
        assert int(zeroed.sum()) == n_clip
        assert not (zeroed & ~candidates).any()  # never padding, already clipped, or out of (lb, ub)
        assert set(keep.unique().tolist()) <= {0.0, 1.0}


def test_clip_cov_too_few_candidates_zeroes_all_of_them():
    adv, logp, mask, clipped = _cov_example(1)
    cov = _reference_cov(adv, logp, mask)
    candidates = mask.bool() & ~clipped & (cov > 1.0) & (cov < 5.0)
    keep = clip_cov_keep(adv, logp, mask, clipped, 1.0, 1.0, 5.0, torch.Generator().manual_seed(0))
    assert torch.equal(keep == 0, candidates)


def test_clip_cov_no_candidates_keeps_everything():
    adv, logp, mask, clipped = _cov_example(2)
    keep = clip_cov_keep(adv, logp, mask, clipped, 0.1, 1e6, 2e6, torch.Generator().manual_seed(0))
    assert torch.equal(keep, torch.ones_like(keep))


def test_clip_cov_is_reproducible_with_seeded_generator():
    adv, logp, mask, clipped = _cov_example(3)
    first = clip_cov_keep(adv, logp, mask, clipped, 0.05, 1.0, 5.0, torch.Generator().manual_seed(7))
    second = clip_cov_keep(adv, logp, mask, clipped, 0.05, 1.0, 5.0, torch.Generator().manual_seed(7))
    assert torch.equal(first, second)
    picks = {
        tuple(
            clip_cov_keep(adv, logp, mask, clipped, 0.05, 1.0, 5.0, torch.Generator().manual_seed(s))
            .reshape(-1)
            .tolist()
        )
        for s in range(10)
    }
    assert len(picks) > 1  # the choice is random, not a fixed rule


def test_clip_cov_objective_reproducible_with_generator():
    logits, batch = _padded_batch()
    cfg = _cfg("clip_cov", "baselines.clip_cov_ratio=0.3", "baselines.clip_cov_lb=-10", "baselines.clip_cov_ub=10")
    runs = []
    for _ in range(2):
        leaf = logits.clone().requires_grad_(True)
        loss, metrics = policy_objective(leaf, batch, cfg, generator=torch.Generator().manual_seed(5))
        loss.backward()
        runs.append((loss.item(), leaf.grad, metrics["clip_cov_frac"]))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])
    # 0.3 * 13 valid tokens -> floor 3.9 = 3 zeroed (all 13 are candidates with this wide (lb, ub),
    # unless PPO-clipped; the clip range is 1/1 so r in [0, 2] is never clipped here)
    assert runs[0][2] == pytest.approx(3 / 13)


def test_kl_cov_selects_top_k_by_covariance():
    adv, logp, mask, _ = _cov_example(4)
    cov = _reference_cov(adv, logp, mask)
    n_valid = int(mask.sum())
    for ratio in (1e-3, 0.1, 0.25):
        k = max(1, math.floor(ratio * n_valid))  # 1, 3, 9
        got = top_covariance_mask(adv, logp, mask, ratio)
        assert int(got.sum()) == k
        assert not got[mask == 0].any()
        threshold = torch.topk(cov[mask.bool()], k).values.min()
        assert (cov[got] >= threshold).all()
        assert (cov[mask.bool() & ~got] <= threshold).all()


def test_kl_cov_loss_formula_and_no_ratio_clipping():
    # 3 valid tokens + 1 pad. A = [2, -1, 0.5], logp = [-1, -3, -2]: means A 0.5, logp -2 ->
    # cov = (1.5)(1) = 1.5, (-1.5)(-1) = 1.5, (0)(0) = 0. Make token 0 win: A0 = 2.5 -> mean 2/3,
    # cov0 = (1.8333)(1) = 1.8333, cov1 = (-1.6667)(-1) = 1.6667, cov2 = (-0.1667)(0) = 0.
    adv = torch.tensor([[2.5, -1.0, 0.5, 0.0]])
    logp = torch.tensor([[-1.0, -3.0, -2.0, 0.0]], requires_grad=True)
    logp_old = torch.tensor([[-1.0 - math.log(5.0), -3.0 + math.log(4.0), -2.0, 0.0]])  # r = 5, 0.25, 1
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, selected = kl_cov_token_loss(logp, logp_old, adv, mask, top_ratio=0.34, coef=1.0)
    # k = max(1, floor(0.34 * 3)) = 1 -> token 0 selected
    assert selected.tolist() == [[True, False, False, False]]
    # token 0: -A r + beta |logp - logp_old| = -2.5*5 + log 5 = -12.5 + 1.6094379 = -10.8905621
    # token 1: -A r = 1 * 0.25 = 0.25 (r = 0.25 is far below 1 - eps: still unclipped)
    # token 2: -0.5 * 1 = -0.5
    expected = torch.tensor([-12.5 + math.log(5.0), 0.25, -0.5])
    torch.testing.assert_close(loss[0, :3].detach(), expected, rtol=1e-5, atol=1e-6)
    loss[0, :3].sum().backward()
    # d/dlogp: token 0: -A r + beta sign(logp - logp_old) = -12.5 + 1; token 1: -A r = 0.25; token 2: -0.5
    torch.testing.assert_close(logp.grad[0, :3], torch.tensor([-11.5, 0.25, -0.5]), rtol=1e-5, atol=1e-6)


def test_kl_cov_objective_no_clipping_for_unselected_tokens():
    # In the objective the unselected token with r = 5 (A > 0) still gets the full -A r loss
    logits = torch.zeros(1, 3, 4)
    tokens = torch.tensor([[0, 1, 2]])
    logp = math.log(0.25)
    logp_old = torch.tensor([[logp - math.log(5.0), logp, logp]])
    adv = torch.tensor([[1.0, 1.0, 1.0]])
    cfg = _cfg("kl_cov", "baselines.kl_cov_ratio=0.01", "baselines.kl_cov_coef=0")
    loss, metrics = policy_objective(logits, PolicyBatch(tokens, torch.ones(1, 3), adv, logp_old), cfg)
    # beta 0: loss = token-mean of -A r = -(5 + 1 + 1) / 3 = -7/3 (GRPO would clip r = 5 to 1.2: -3.2/3)
    assert loss.item() == pytest.approx(-7 / 3, rel=1e-5)
    assert metrics["kl_cov_frac"] == pytest.approx(1 / 3)  # k = max(1, floor(0.01 * 3)) = 1


# --------------------------------------------------------------------------- W-REINFORCE


def test_w_reinforce_advantages():
    got = w_reinforce_advantages([1, 0, 1, 0, 0])
    torch.testing.assert_close(got, torch.tensor([0.1, -1.0, 0.1, -1.0, -1.0]))
    torch.testing.assert_close(w_reinforce_advantages(torch.tensor([1.0, 0.0]), 0.5), torch.tensor([0.5, -1.0]))


def test_w_reinforce_has_no_group_baseline():
    acc = torch.tensor([1.0, 1.0, 1.0, 0.0])
    ids = ["a", "a", "a", "b"]  # group a all correct, group b size 1
    got = sequence_advantages(acc, ids, _cfg("w_reinforce"))
    torch.testing.assert_close(got, torch.tensor([0.1, 0.1, 0.1, -1.0]))
    grpo = sequence_advantages(acc, ids, _cfg("grpo"))
    assert grpo.tolist() == [0.0, 0.0, 0.0, 0.0]  # GRPO: zero-variance and size-1 groups carry nothing


def test_sequence_advantages_use_configured_reward_and_scaling():
    acc = torch.tensor([1.0, 0.0, 0.0])
    ids = [0, 0, 0]
    # pm1: rewards [1, -1, -1], mean -1/3: Dr. GRPO -> [4/3, -2/3, -2/3]
    dr = sequence_advantages(acc, ids, _cfg("grpo", "advantage.scale_by_std=false"))
    torch.testing.assert_close(dr, torch.tensor([4 / 3, -2 / 3, -2 / 3]))
    # acc: rewards [1, 0, 0], mean 1/3 -> [2/3, -1/3, -1/3]
    acc_mode = sequence_advantages(acc, ids, _cfg("grpo", "advantage.scale_by_std=false", "advantage.reward=acc"))
    torch.testing.assert_close(acc_mode, torch.tensor([2 / 3, -1 / 3, -1 / 3]))


# --------------------------------------------------------------------------- every method via policy_objective


def _padded_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    b, t, v = 3, 5, 7
    logits = torch.randn(b, t, v, generator=g)
    tokens = torch.randint(0, v, (b, t), generator=g)
    mask = (torch.arange(t)[None, :] < torch.tensor([5, 3, 5])[:, None]).float()
    tokens = tokens * mask.long()  # padding token id 0
    logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    logp_old = logp + 0.3 * torch.randn(b, t, generator=g)
    logp_behavior = logp_old + 0.3 * torch.randn(b, t, generator=g)
    adv = torch.tensor([1.2, -0.7, 0.4])
    return logits, PolicyBatch(tokens, mask, adv, logp_old, logp_behavior)


METHOD_KEYS = {
    "dynamo": {"beta_comp_mean", "beta_stab_mean", "beta_stab_min", "clip_frac", "dual_clip_frac"},
    "grpo": {"clip_frac", "dual_clip_frac"},
    "clip_higher": {"clip_frac", "dual_clip_frac"},
    "entropy_loss": {"clip_frac", "dual_clip_frac"},
    "fork_tokens": {"fork_frac", "clip_frac"},
    "entropy_advantage": {"clip_frac", "dual_clip_frac"},
    "clip_cov": {"clip_cov_frac", "clip_frac"},
    "kl_cov": {"kl_cov_frac"},
    "w_reinforce": {"clip_frac", "dual_clip_frac"},
}


def test_method_key_table_covers_every_method():
    assert set(METHOD_KEYS) == set(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_policy_objective_every_method_on_padded_batch(method):
    logits, batch = _padded_batch()
    leaf = logits.clone().requires_grad_(True)
    loss, metrics = policy_objective(leaf, batch, _cfg(method), generator=torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
    assert leaf.grad.abs().sum() > 0
    # padding positions never receive gradient
    assert (leaf.grad[batch.mask == 0] == 0).all()
    expected = METHOD_KEYS[method] | {
        "ratio_mean",
        "entropy",
        "is_weight_mean",
        "is_weight_max",
        "kl_behavior_proximal",
    }
    assert expected <= set(metrics), expected - set(metrics)
    scalars = {k: v for k, v in metrics.items() if not k.endswith("_hist")}
    assert all(isinstance(v, float) and math.isfinite(v) for v in scalars.values())
    if method == "dynamo":  # token histograms of the beta factors: A > 0 tokens, and every token
        valid = batch.mask.bool()
        assert metrics["beta_comp_hist"].sum() == int((valid & (batch.advantages[:, None] > 0)).sum())
        assert metrics["beta_stab_hist"].sum() == int(valid.sum())
    else:
        assert not any(k.startswith("beta_") for k in metrics)


@pytest.mark.parametrize("method", METHODS)
def test_policy_objective_every_method_ignores_padding_logits(method):
    logits, batch = _padded_batch(1)
    garbage = logits.clone()
    garbage[batch.mask == 0] = torch.randn_like(garbage[batch.mask == 0]) * 50
    cfg = _cfg(method)
    loss_a, _ = policy_objective(logits, batch, cfg, generator=torch.Generator().manual_seed(0))
    loss_b, _ = policy_objective(garbage, batch, cfg, generator=torch.Generator().manual_seed(0))
    assert loss_a.item() == pytest.approx(loss_b.item(), rel=1e-6, abs=1e-7)


def test_entropy_advantage_method_shapes_advantages_before_the_loss():
    logits, batch = _padded_batch(2)
    cfg = _cfg("entropy_advantage")
    loss, _ = policy_objective(logits, batch, cfg)
    lp = torch.log_softmax(logits, -1)
    h = -(lp.exp() * lp).sum(-1)
    adv = batch.advantages[:, None] * batch.mask
    shaped = adv + torch.minimum(0.4 * h, adv.abs() / 2.0)
    logp = lp.gather(-1, batch.tokens[..., None]).squeeze(-1)
    r = torch.exp(logp - batch.logp_old)
    per = torch.maximum(-shaped * r, -shaped * r.clamp(0.8, 1.2))
    per = torch.where(shaped < 0, torch.minimum(per, -10 * shaped), per)
    per = per * torch.exp(batch.logp_old - batch.logp_behavior).clamp(max=2.0)
    assert loss.item() == pytest.approx(aggregate(per, batch.mask).item(), rel=1e-5)
