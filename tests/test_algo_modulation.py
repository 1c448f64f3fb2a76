"""DynaMO advantage modulation: compensation (Eq. 3), stabilization (Eq. 4), Theorem 1."""

from __future__ import annotations

import math

import pytest
import torch

from dynamo_async.algo.entropy_change import entropy_change, unclipped
from dynamo_async.algo.logprobs import token_stats
from dynamo_async.algo.modulation import compensation, stabilization


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


# --------------------------------------------------------------------------- compensation


def test_compensation_hand_values():
    h = torch.tensor([[0.5, 1.0, 2.0]])
    a = torch.tensor([[1.0, 1.0, 1.0]])
    got = compensation(h, a, torch.ones(1, 3), alpha=0.3)
    # H_max = 2, H_min = 0.5, span 1.5: 1 + 0.3 * (2 - H) / 1.5 -> 1 + .3*1 = 1.3, 1 + .3*(1/1.5) = 1.2, 1.0
    torch.testing.assert_close(got, torch.tensor([[1.3, 1.2, 1.0]]), rtol=0, atol=1e-6)


def test_compensation_non_positive_advantage_gets_one():
    h = torch.tensor([[0.5, 1.0, 2.0, 0.5]])
    a = torch.tensor([[-1.0, 0.0, 2.0, 0.3]])
    got = compensation(h, a, torch.ones(1, 4), alpha=0.3)
    # only A > 0 tokens are boosted: token 2 (H = H_max) -> 1.0, token 3 (H = H_min) -> 1.3
    torch.testing.assert_close(got, torch.tensor([[1.0, 1.0, 1.0, 1.3]]), rtol=0, atol=1e-6)


def test_compensation_equal_extremes_give_one():
    h = torch.full((2, 3), 0.7)
    got = compensation(h, torch.ones(2, 3), torch.ones(2, 3), alpha=0.3)
    assert torch.equal(got, torch.ones(2, 3))


@pytest.mark.parametrize("pad_value", [1e9, -1e9, 0.0, 3.0, float("inf"), float("nan")])
def test_compensation_ignores_padding(pad_value):
    h = torch.tensor([[0.5, 1.0, pad_value], [2.0, pad_value, pad_value]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    a = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    got = compensation(h, a, mask, alpha=0.3)
    # extremes over valid tokens only: H_max 2, H_min 0.5 -> 1.3, 1.2 | 1.0; padding -> 1
    expected = torch.tensor([[1.3, 1.2, 1.0], [1.0, 1.0, 1.0]])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_compensation_no_valid_tokens_gives_ones():
    got = compensation(torch.randn(2, 3), torch.ones(2, 3), torch.zeros(2, 3), alpha=0.3)
    assert torch.equal(got, torch.ones(2, 3))


def test_compensation_is_detached():
    h = torch.tensor([[0.5, 1.0, 2.0]], requires_grad=True)
    got = compensation(h, torch.ones(1, 3), torch.ones(1, 3), alpha=0.3)
    assert not got.requires_grad


# --------------------------------------------------------------------------- stabilization


def test_stabilization_hand_values():
    xi = torch.tensor([[0.0, 1.0, 2.0, 4.0]])
    got = stabilization(xi, torch.ones(1, 4), lambda_min=0.6, gamma=5.0, tau=0.5)
    # x = Xi / 4 = [0, .25, .5, 1]; beta = 0.6 + 0.4 * sigmoid(-5 (x - 0.5))
    # sigmoid(2.5) = .9241418, sigmoid(1.25) = .7772999, sigmoid(0) = .5, sigmoid(-2.5) = .0758582
    # -> 0.9696567, 0.9109200, 0.8, 0.6303433
    expected = torch.tensor([[0.9696567, 0.9109200, 0.8, 0.6303433]])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    for x, g in zip([0.0, 0.25, 0.5, 1.0], got[0].tolist()):
        assert g == pytest.approx(0.6 + 0.4 * _sigmoid(-5.0 * (x - 0.5)), abs=1e-6)


def test_stabilization_other_parameters():
    xi = torch.tensor([[3.0, 0.3]])
    got = stabilization(xi, torch.ones(1, 2), lambda_min=0.2, gamma=50.0, tau=0.99)
    # x = [1, 0.1]; beta = 0.2 + 0.8 * sigmoid(-50 (x - 0.99)) -> 0.2 + 0.8*sigmoid(-0.5) = 0.2 + 0.8*0.3775407
    # = 0.5020326; 0.2 + 0.8 * sigmoid(44.5) ~ 1.0
    torch.testing.assert_close(got, torch.tensor([[0.5020326, 1.0]]), rtol=0, atol=1e-6)


def test_stabilization_zero_max_gives_x_zero():
    got = stabilization(torch.zeros(1, 3), torch.ones(1, 3), lambda_min=0.6, gamma=5.0, tau=0.5)
    # x = 0 -> 0.6 + 0.4 * sigmoid(2.5) = 0.9696567
    torch.testing.assert_close(got, torch.full((1, 3), 0.9696567), rtol=0, atol=1e-6)


@pytest.mark.parametrize("pad_value", [1e9, 0.0, 1e-12, float("inf")])
def test_stabilization_ignores_padding_for_max(pad_value):
    xi = torch.tensor([[1.0, 2.0, pad_value], [4.0, pad_value, pad_value]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    got = stabilization(xi, mask, lambda_min=0.6, gamma=5.0, tau=0.5)
    # max over valid = 4 -> x = .25, .5 | 1 -> 0.9109200, 0.8 | 0.6303433; padding -> 1
    expected = torch.tensor([[0.9109200, 0.8, 1.0], [0.6303433, 1.0, 1.0]])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_stabilization_bounds():
    xi = torch.rand(4, 6, generator=torch.Generator().manual_seed(0)) * 10
    got = stabilization(xi, torch.ones(4, 6), lambda_min=0.6, gamma=5.0, tau=0.5)
    assert (got >= 0.6).all() and (got <= 1.0).all()
    # larger Xi -> smaller factor (monotone decreasing)
    order = torch.argsort(xi.reshape(-1))
    assert (got.reshape(-1)[order].diff() <= 1e-7).all()


# --------------------------------------------------------------------------- entropy change (Theorem 1)


def _softmax_state(seed, batch=2, length=4, vocab=6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=g, dtype=torch.float64) * 1.5
    tokens = torch.randint(0, vocab, (batch, length), generator=g)
    return logits, tokens


def _theorem1_direct(logits, tokens, ratio, adv, eps_low, eps_high):
    """dH from the full softmax: -xi (pi(a) Lambda(a) - sum_b pi(b)^2 Lambda(b))."""
    logp_all = torch.log_softmax(logits, -1)
    p = logp_all.exp()
    h = -(p * logp_all).sum(-1, keepdim=True)
    lam = logp_all + h
    own = (p * lam).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    total = (p * p * lam).sum(-1)
    alive = ((adv > 0) & (ratio <= 1 + eps_high)) | ((adv < 0) & (ratio >= 1 - eps_low))
    xi = alive.double() * ratio * adv
    return -xi * (own - total)


def test_entropy_change_exact_matches_theorem1_from_full_softmax():
    logits, tokens = _softmax_state(0)
    adv = torch.tensor([[1.0, 1.0, 1.0, 1.0], [-0.5, -0.5, -0.5, -0.5]], dtype=torch.float64)
    # token (0, 1): A > 0, r = 1.5 > 1.2 -> clipped -> 0; token (1, 2): A < 0, r = 0.5 < 0.8 -> clipped -> 0
    ratio = torch.tensor([[1.0, 1.5, 0.9, 1.1], [1.0, 1.3, 0.5, 0.85]], dtype=torch.float64)
    mask = torch.ones(2, 4)
    stats = token_stats(logits, tokens, entropy=True, vocab_sum=True)
    got = entropy_change(stats.logp, stats.entropy, ratio, adv, mask, 0.2, 0.2, "exact", stats.vocab_sum)
    expected = _theorem1_direct(logits, tokens, ratio, adv, 0.2, 0.2).abs()
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6)
    assert got[0, 1].item() == 0.0
    assert got[1, 2].item() == 0.0
    assert (got[0, [0, 2, 3]] > 0).all()


def test_entropy_change_exact_hand_value():
    # V = 2, logits [0, log 3] -> pi = [.25, .75]; H = -(.25 log .25 + .75 log .75) = 0.5623351
    # Lambda = log pi + H = [-1.3862944 + .5623351, -0.2876821 + .5623351] = [-0.8239592, 0.2746530]
    # sum_b pi^2 Lambda = .0625 * -0.8239592 + .5625 * 0.2746530 = -0.0514975 + 0.1544923 = 0.1029948
    # a = 0: pi(a) Lambda(a) = .25 * -0.8239592 = -0.2059898; xi = r A = 1.1 * 2 = 2.2
    # dH = -2.2 * (-0.2059898 - 0.1029948) = 0.6797661
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    stats = token_stats(logits, torch.tensor([[0]]), entropy=True, vocab_sum=True)
    got = entropy_change(
        stats.logp,
        stats.entropy,
        torch.tensor([[1.1]]),
        torch.tensor([[2.0]]),
        torch.ones(1, 1),
        0.2,
        0.2,
        "exact",
        stats.vocab_sum,
    )
    assert got.item() == pytest.approx(0.6797661, abs=1e-5)


def test_entropy_change_sequence_centered_uses_sequence_mean_over_valid_tokens():
    logits, tokens = _softmax_state(1, batch=2, length=4)
    stats = token_stats(logits, tokens, entropy=True)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    adv = torch.tensor([[0.7] * 4, [-1.2] * 4])
    ratio = torch.tensor([[1.0, 0.9, 1.1, 1.0], [1.05, 1.0, 0.95, 1.3]])
    got = entropy_change(stats.logp, stats.entropy, ratio, adv, mask, 0.2, 0.2, "sequence_centered")
    own = stats.logp.exp() * (stats.logp + stats.entropy)
    # row 0 centre: mean of the 3 valid tokens only; row 1: all 4
    centre = torch.stack([own[0, :3].mean(), own[1].mean()])[:, None]
    expected = (ratio * adv * (own - centre)).abs() * mask
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert got[0, 3].item() == 0.0


def test_entropy_change_sequence_centered_ignores_padding_values():
    logits, tokens = _softmax_state(2, batch=1, length=4)
    stats = token_stats(logits, tokens, entropy=True)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    adv, ratio = torch.full((1, 4), 0.5), torch.ones(1, 4)
    base = entropy_change(stats.logp, stats.entropy, ratio, adv, mask, 0.2, 0.2, "sequence_centered")
    logp2, ent2 = stats.logp.clone(), stats.entropy.clone()
    logp2[0, 2:], ent2[0, 2:] = -50.0, 1e6  # garbage in padding
    other = entropy_change(logp2, ent2, ratio, adv, mask, 0.2, 0.2, "sequence_centered")
    torch.testing.assert_close(other, base)


def test_entropy_change_padding_gives_zero():
    logits, tokens = _softmax_state(3)
    stats = token_stats(logits, tokens, entropy=True, vocab_sum=True)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    adv, ratio = torch.ones(2, 4), torch.ones(2, 4)
    for mode in ("exact", "sequence_centered"):
        got = entropy_change(stats.logp, stats.entropy, ratio, adv, mask, 0.2, 0.2, mode, stats.vocab_sum)
        assert (got[mask == 0] == 0).all()
        # (sequence_centered: a one-token sequence is its own centre, so only 'exact' is checked here)
        assert mode == "sequence_centered" or (got[mask == 1] > 0).all()


def test_entropy_change_exact_without_vocab_sum_is_value_error():
    z = torch.zeros(1, 2)
    with pytest.raises(ValueError):
        entropy_change(z, z, torch.ones(1, 2), torch.ones(1, 2), torch.ones(1, 2), 0.2, 0.2, "exact", None)


def test_entropy_change_bad_mode_is_value_error():
    z = torch.zeros(1, 2)
    with pytest.raises(ValueError):
        entropy_change(z, z, torch.ones(1, 2), torch.ones(1, 2), torch.ones(1, 2), 0.2, 0.2, "approx", z)


def test_unclipped_indicator():
    ratio = torch.tensor([1.1, 1.3, 0.5, 0.9, 0.7, 1.5, 1.0])
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 0.0])
    # A>0: alive iff r <= 1.2 -> 1, 0, 1; A<0: alive iff r >= 0.8 -> 1, 0, 1; A = 0: no gradient -> 0
    assert unclipped(ratio, adv, 0.2, 0.2).tolist() == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("xi", [1.0, -0.7, 2.5])
def test_theorem1_first_order_entropy_change(seed, xi):
    # For one softmax state the policy-gradient step on the logits is z' = z + eta*xi*(e_a - pi);
    # (H(z') - H(z)) / eta -> dH = -xi (pi(a) Lambda(a) - sum_b pi(b)^2 Lambda(b)) as eta -> 0.
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(7, generator=g, dtype=torch.float64) * 2.0
    a = int(torch.randint(0, 7, (1,), generator=g))

    def entropy(logits):
        lp = torch.log_softmax(logits, -1)
        return -(lp.exp() * lp).sum()

    pi = torch.softmax(z, -1)
    step = xi * (torch.nn.functional.one_hot(torch.tensor(a), 7).double() - pi)
    eta = 1e-5
    numeric = (entropy(z + eta * step) - entropy(z - eta * step)) / (2 * eta)  # central difference

    stats = token_stats(z[None, None, :], torch.tensor([[a]]), entropy=True, vocab_sum=True)
    own = stats.logp.exp() * (stats.logp + stats.entropy)
    dh = -xi * (own - stats.vocab_sum)
    assert dh.item() == pytest.approx(numeric.item(), rel=1e-4, abs=1e-6)
    # and entropy_change returns its magnitude (ratio 1, A = xi, nothing clipped)
    got = entropy_change(
        stats.logp,
        stats.entropy,
        torch.ones(1, 1),
        torch.tensor([[xi]]),
        torch.ones(1, 1),
        0.2,
        0.2,
        "exact",
        stats.vocab_sum,
    )
    assert got.item() == pytest.approx(abs(numeric.item()), rel=1e-4, abs=1e-6)
