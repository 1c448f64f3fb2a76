"""Entropy-loss baseline: the entropy with its gradient, chunked like the main path (docs/design.md section 4.2, 4.4).

    H = -sum_b p_b log p_b,   dH/dz_j = -p_j (log p_j + H),   z = logits / T

Values and gradients against the naive full-vocabulary autograd, and the bytes the objective's
forward keeps for backward against plain GRPO's at the same shape.
"""

from __future__ import annotations

import pytest
import torch

from dynamo_async.algo.baselines.entropy_loss import entropy_bonus
from dynamo_async.algo.logprobs import token_stats
from dynamo_async.algo.objective import PolicyBatch, policy_objective
from dynamo_async.config import load_config


def _cfg(method: str, *overrides: str):
    return load_config(None, ["model.name=x", f"method={method}", *overrides])


def _padded(b: int, t: int, v: int, seed: int = 0, dtype=torch.float32):
    """Right-padded micro-batch as the objective sees it: padding rows hold real logits, token id 0."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, t, v, generator=g) * 3.0).to(dtype)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    lengths[0] = t
    mask = (torch.arange(t)[None, :] < lengths[:, None]).float()
    tokens = torch.randint(0, v, (b, t), generator=g) * mask.long()
    logp = torch.log_softmax(logits.float(), -1).gather(-1, tokens[..., None]).squeeze(-1)
    logp_old = logp + 0.2 * torch.randn(b, t, generator=g)
    adv = torch.randn(b, generator=g)
    return logits, PolicyBatch(tokens, mask, adv, logp_old)


def _naive(logits: torch.Tensor, tokens: torch.Tensor, temperature: float):
    z = logits.double() / temperature
    logp_all = torch.log_softmax(z, -1)
    return logp_all.gather(-1, tokens[..., None]).squeeze(-1), -(logp_all.exp() * logp_all).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.4])
@pytest.mark.parametrize("chunk_size", [1, 4, 1000])
def test_entropy_grad_values_and_gradients_match_naive_autograd(temperature, chunk_size):
    logits, batch = _padded(3, 6, 17, seed=1)
    g = torch.Generator().manual_seed(2)
    w_logp, w_ent = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    a = logits.double().requires_grad_(True)
    b = logits.double().requires_grad_(True)
    stats = token_stats(a, batch.tokens, temperature, chunk_size, entropy=True, entropy_grad=True)
    logp, ent = _naive(b, batch.tokens, temperature)
    torch.testing.assert_close(stats.logp.double(), logp.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.entropy.double(), ent.detach(), rtol=1e-5, atol=1e-5)
    # log-prob and entropy gradients together, padding rows included (masked by the weights)
    ((stats.logp * w_logp + stats.entropy * w_ent) * batch.mask).sum().backward()
    ((logp * w_logp + ent * w_ent) * batch.mask).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    assert (a.grad[~batch.mask.bool()] == 0).all()


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_entropy_bonus_gradient_matches_naive_autograd_fp32(mode):
    logits, batch = _padded(4, 5, 23, seed=3)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    stats = token_stats(a, batch.tokens, 0.8, 3, entropy=True, entropy_grad=True)
    entropy_bonus(stats.entropy, batch.mask, 0.1, mode, norm_length=5).backward()
    lp = torch.log_softmax(b / 0.8, -1)
    entropy_bonus(-(lp.exp() * lp).sum(-1), batch.mask, 0.1, mode, norm_length=5).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7)


def test_entropy_grad_bf16_logits_get_bf16_gradient_close_to_fp32():
    logits, batch = _padded(2, 4, 19, seed=4, dtype=torch.bfloat16)
    leaf = logits.clone().requires_grad_(True)
    ref = logits.float().requires_grad_(True)
    token_stats(leaf, batch.tokens, entropy=True, entropy_grad=True).entropy.sum().backward()
    lp = torch.log_softmax(ref, -1)
    (-(lp.exp() * lp).sum(-1)).sum().backward()
    assert leaf.grad.dtype == torch.bfloat16
    torch.testing.assert_close(leaf.grad.float(), ref.grad, rtol=2e-2, atol=2e-3)


def _saved_bytes(logits: torch.Tensor, batch: PolicyBatch, method: str) -> int:
    """Bytes of the tensors the objective's forward saves for backward, one count per storage."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        storages[ptr] = max(storages.get(ptr, 0), t.numel() * t.element_size())
        return t

    leaf = logits.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = policy_objective(leaf, batch, _cfg(method))
    loss.backward()
    return sum(storages.values())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_entropy_loss_saves_about_what_grpo_saves(dtype):
    # N = 2048 tokens, V = 8000: a naive entropy keeps two fp32 [N, V] tensors (125 MiB)
    logits, batch = _padded(8, 256, 8000, seed=5, dtype=dtype)
    grpo = _saved_bytes(logits, batch, "grpo")
    entropy_loss = _saved_bytes(logits, batch, "entropy_loss")
    print(f"saved for backward ({dtype}): grpo {grpo / 2**20:.2f} MiB, entropy_loss {entropy_loss / 2**20:.2f} MiB")
    assert grpo >= logits.numel() * logits.element_size()  # the logits themselves
    assert entropy_loss <= 1.5 * grpo
