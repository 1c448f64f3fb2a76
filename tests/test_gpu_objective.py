"""The policy objective in bf16 on CUDA (marked gpu; run with ``pytest -m gpu``).

A random Llama-shaped model in bf16 on the GPU: DynaMO's and GRPO's loss-and-backward give
finite losses and gradients, and the bf16 loss matches an fp32 computation of the same step
to bf16 precision.
"""

from __future__ import annotations

import pytest
import torch

from dynamo_async.algo.objective import PolicyBatch, policy_objective
from dynamo_async.config import load_config

pytestmark = pytest.mark.gpu


def _model(dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(cfg).to(device="cuda", dtype=dtype)


def _batch(vocab: int):
    gen = torch.Generator().manual_seed(1)
    seq = torch.randint(0, vocab, (4, 48), generator=gen).cuda()
    tokens = seq[:, 16:]
    mask = torch.ones(tokens.shape, device="cuda")
    mask[0, 20:] = 0
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5], device="cuda")
    return seq, tokens, mask, adv


@pytest.mark.parametrize("method", ["dynamo", "grpo"])
def test_objective_bf16_on_cuda_matches_fp32(method):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cfg = load_config(None, ["model.name=x", f"method={method}"])
    losses = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = _model(dtype)
        seq, tokens, mask, adv = _batch(model.config.vocab_size)
        with torch.no_grad():
            logits = model(input_ids=seq).logits[:, 15:-1]
            logp = torch.log_softmax(logits.float(), -1).gather(-1, tokens[..., None]).squeeze(-1)
        batch = PolicyBatch(tokens, mask, adv, logp_old=logp.detach(), logp_behavior=logp.detach() - 0.05)
        logits = model(input_ids=seq).logits[:, 15:-1]
        loss, metrics = policy_objective(logits, batch, cfg)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads)
        losses[dtype] = float(loss)
        if method == "dynamo":
            assert 0.6 <= metrics["beta_stab_min"] <= 1.0 and metrics["beta_comp_mean"] >= 1.0
    assert losses[torch.bfloat16] == pytest.approx(losses[torch.float32], abs=2e-2)
