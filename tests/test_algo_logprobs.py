"""Chunked log-probs, entropy and the Theorem 1 vocabulary sum (docs/design.md section 4.2, 4.3)."""

from __future__ import annotations

import pytest
import torch

from dynamo_async.algo.logprobs import token_logprobs, token_stats


def _direct(logits, tokens, temperature):
    """Full-vocabulary reference in float64."""
    z = logits.double() / temperature
    logp_all = torch.log_softmax(z, dim=-1)
    p = logp_all.exp()
    logp = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    entropy = -(p * logp_all).sum(-1)
    vocab_sum = (p * p * (logp_all + entropy.unsqueeze(-1))).sum(-1)
    return logp, entropy, vocab_sum


def _example(seed=0, shape=(3, 4), vocab=11, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, vocab, generator=g) * scale
    tokens = torch.randint(0, vocab, shape, generator=g)
    return logits, tokens


@pytest.mark.parametrize("chunk_size", [1, 3, 5, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
def test_token_stats_match_full_vocab_computation(chunk_size, temperature):
    logits, tokens = _example()
    stats = token_stats(logits, tokens, temperature=temperature, chunk_size=chunk_size, entropy=True, vocab_sum=True)
    logp, entropy, vocab_sum = _direct(logits, tokens, temperature)
    assert stats.logp.shape == tokens.shape
    assert stats.logp.dtype == torch.float32
    torch.testing.assert_close(stats.logp.double(), logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.entropy.double(), entropy, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.vocab_sum.double(), vocab_sum, rtol=1e-5, atol=1e-6)


def test_chunk_sizes_give_identical_results():
    logits, tokens = _example(seed=1, shape=(2, 7), vocab=13)
    results = [
        token_stats(logits, tokens, temperature=0.8, chunk_size=c, entropy=True, vocab_sum=True)
        for c in (1, 3, 14, 1000)
    ]
    for other in results[1:]:
        torch.testing.assert_close(other.logp, results[0].logp, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(other.entropy, results[0].entropy, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(other.vocab_sum, results[0].vocab_sum, rtol=1e-6, atol=1e-7)


def test_vocab_sum_hand_value_uniform_distribution():
    # Uniform over V=4: log p = -log 4, H = log 4, Lambda = 0 everywhere -> S = 0, log pi(a) = -log 4
    logits = torch.zeros(1, 4)
    stats = token_stats(logits, torch.tensor([2]), entropy=True, vocab_sum=True)
    assert stats.logp.item() == pytest.approx(-1.3862944, abs=1e-6)
    assert stats.entropy.item() == pytest.approx(1.3862944, abs=1e-6)
    assert stats.vocab_sum.item() == pytest.approx(0.0, abs=1e-7)


def test_temperature_scales_logits():
    # logits [0, log 3] at T = 0.5 -> z = [0, 2 log 3] -> p = [1/10, 9/10]; log p(1) = log 0.9 = -0.1053605
    logits = torch.tensor([[0.0, torch.log(torch.tensor(3.0)).item()]])
    stats = token_stats(logits, torch.tensor([1]), temperature=0.5, entropy=True)
    assert stats.logp.item() == pytest.approx(-0.1053605, abs=1e-6)
    # H = -(0.1 log 0.1 + 0.9 log 0.9) = 0.2302585 + 0.0948245 = 0.3250830
    assert stats.entropy.item() == pytest.approx(0.3250830, abs=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
def test_logp_gradient_matches_direct(chunk_size):
    logits, tokens = _example(seed=2)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    w = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(3))
    (token_stats(a, tokens, temperature=0.7, chunk_size=chunk_size).logp * w).sum().backward()
    ref = torch.log_softmax(b / 0.7, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    (ref * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
def test_entropy_grad_matches_direct_entropy_gradient(chunk_size):
    logits, tokens = _example(seed=4)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    w = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(5))
    stats = token_stats(a, tokens, temperature=1.3, chunk_size=chunk_size, entropy=True, entropy_grad=True)
    assert stats.entropy.requires_grad
    (stats.entropy * w).sum().backward()
    logp_all = torch.log_softmax(b / 1.3, -1)
    (-(logp_all.exp() * logp_all).sum(-1) * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_entropy_grad_with_vocab_sum_still_differentiable_and_correct():
    logits, tokens = _example(seed=6)
    a = logits.clone().requires_grad_(True)
    stats = token_stats(a, tokens, chunk_size=2, entropy=True, vocab_sum=True, entropy_grad=True)
    _, entropy, vocab_sum = _direct(logits, tokens, 1.0)
    assert stats.entropy.requires_grad
    assert not stats.vocab_sum.requires_grad
    torch.testing.assert_close(stats.entropy.detach().double(), entropy, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.vocab_sum.double(), vocab_sum, rtol=1e-5, atol=1e-6)


def test_entropy_and_vocab_sum_detached_by_default():
    logits, tokens = _example(seed=7)
    stats = token_stats(logits.clone().requires_grad_(True), tokens, entropy=True, vocab_sum=True)
    assert stats.logp.requires_grad
    assert not stats.entropy.requires_grad
    assert not stats.vocab_sum.requires_grad


def test_entropy_and_vocab_sum_none_unless_requested():
    logits, tokens = _example(seed=8)
    plain = token_stats(logits, tokens)
    assert plain.entropy is None and plain.vocab_sum is None
    only_entropy = token_stats(logits, tokens, entropy=True)
    assert only_entropy.entropy is not None and only_entropy.vocab_sum is None
    torch.testing.assert_close(token_logprobs(logits, tokens, chunk_size=2), plain.logp)


def test_shape_mismatch_is_value_error():
    logits = torch.randn(2, 3, 5)
    with pytest.raises(ValueError):
        token_stats(logits, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError):
        token_stats(logits, torch.zeros(3, 2, dtype=torch.long))


def test_non_positive_temperature_is_value_error():
    with pytest.raises(ValueError):
        token_stats(torch.randn(2, 5), torch.zeros(2, dtype=torch.long), temperature=0.0)


def test_bf16_logits_are_upcast_to_fp32():
    logits, tokens = _example(seed=9, scale=4.0)
    bf16 = logits.to(torch.bfloat16)
    stats = token_stats(bf16, tokens, temperature=0.7, chunk_size=2, entropy=True, vocab_sum=True)
    assert stats.logp.dtype == torch.float32
    assert stats.entropy.dtype == torch.float32
    # same bf16 values computed in fp32/fp64: agreement far tighter than bf16 arithmetic would give
    logp, entropy, vocab_sum = _direct(bf16.float(), tokens, 0.7)
    torch.testing.assert_close(stats.logp.double(), logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.entropy.double(), entropy, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.vocab_sum.double(), vocab_sum, rtol=1e-5, atol=1e-6)
    # bf16 arithmetic would be visibly worse (bf16 has ~3 significant digits)
    bf16_logp = torch.log_softmax(bf16 / 0.7, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert (bf16_logp.double() - logp).abs().max() > (stats.logp.double() - logp).abs().max()


def test_bf16_gradient_flows_to_bf16_logits():
    logits, tokens = _example(seed=10)
    leaf = logits.to(torch.bfloat16).requires_grad_(True)
    token_stats(leaf, tokens, chunk_size=2).logp.sum().backward()
    assert leaf.grad is not None and leaf.grad.dtype == torch.bfloat16
    assert torch.isfinite(leaf.grad.float()).all() and leaf.grad.abs().sum() > 0


def test_empty_input_gives_empty_outputs():
    stats = token_stats(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), entropy=True)
    assert stats.logp.shape == (0,)
    assert stats.entropy.shape == (0,)
    assert stats.vocab_sum is None


def test_mask_computes_valid_rows_only_with_the_same_values_and_gradients():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 4, 7, generator=g)
    tokens = torch.randint(0, 7, (3, 4), generator=g)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    full_leaf, masked_leaf = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    full = token_stats(full_leaf, tokens, 0.8, chunk_size=2, entropy=True, vocab_sum=True)
    part = token_stats(masked_leaf, tokens, 0.8, chunk_size=2, entropy=True, vocab_sum=True, mask=mask)
    valid = mask.bool()
    for a, b in ((full.logp, part.logp), (full.entropy, part.entropy), (full.vocab_sum, part.vocab_sum)):
        torch.testing.assert_close(a[valid], b[valid])
        assert (b[~valid] == 0).all()
    (full.logp * mask).sum().backward()
    part.logp.sum().backward()
    torch.testing.assert_close(full_leaf.grad, masked_leaf.grad)
    assert (masked_leaf.grad[~valid] == 0).all()
