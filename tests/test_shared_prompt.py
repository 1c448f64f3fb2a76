"""Each group's prompt forwarded once (``dynamo_async/learner/shared_prompt.py``) gives the same
log-probs, entropy, loss and gradient as full rows, on the tiny model and on a 4-layer Llama, in
float32 and bf16 compute, with and without gradient checkpointing; a model that cannot share is
found by ``check`` and trained on full rows with a notice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dynamo_async.algo.logprobs import token_stats
from dynamo_async.algo.objective import PolicyBatch, policy_objective
from dynamo_async.config import load_config
from dynamo_async.learner import shared_prompt
from dynamo_async.learner.micro import Row, collate
from dynamo_async.learner.trainer import enable_checkpointing
from dynamo_async.models import load_model, resolve_model

# Differences between the layouts are float rounding; bf16 keeps 8 bits of mantissa (2^-8 = 0.004).
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.bfloat16: dict(rtol=3e-2, atol=3e-2)}
GRAD_COS = {torch.float32: 1 - 1e-6, torch.bfloat16: 0.999}


def _tiny():
    return load_model(str(resolve_model("builtin:tiny")), "float32", "cpu")


def _llama4():
    """A Llama with 4 layers, grouped-query attention and rope, weights large enough that
    attention is far from uniform (so a wrong key, value or position shows)."""
    torch.manual_seed(11)
    cfg = LlamaConfig(
        vocab_size=300, hidden_size=96, num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=2,
        intermediate_size=192, max_position_embeddings=256, initializer_range=0.15, tie_word_embeddings=False,
    )  # fmt: skip
    return LlamaForCausalLM(cfg)


MODELS = {"tiny": _tiny, "llama4": _llama4}


def _rows(vocab: int) -> list[Row]:
    """Three groups: prompts of 9, 4 and 1 tokens (the last one has an empty prefix), 2-3
    responses each of 1-7 tokens, mixed advantages."""
    rng = np.random.default_rng(5)
    rows = []
    for g, (p, lengths) in enumerate(((9, (3, 7, 1)), (4, (5, 2)), (1, (4, 6)))):
        prompt = rng.integers(3, vocab, p).astype(np.int64)
        for n in lengths:
            logp = (-0.5 - rng.random(n)).astype(np.float32)
            rows.append(Row(prompt, rng.integers(3, vocab, n).astype(np.int64), logp, float(rng.normal()), g))
    return rows


def _forward(model, rows, shared: bool, pack: bool = False):
    mb = collate(rows, shared, 0, float(sum(len(r.response) for r in rows)), float(len(rows)), pack)
    kw = shared_prompt.cache_keyword(model)
    logits = shared_prompt.shared_logits(model, mb.inputs, kw) if shared else shared_prompt.row_logits(model, mb)
    return mb, logits


def _per_response(mb, values: torch.Tensor) -> list[torch.Tensor]:
    """Each sample's values on its response tokens, whatever the layout's positions."""
    return [values[i][mb.mask[i].bool()] for i in range(values.shape[0])]


def _layout_results(model, rows, shared: bool, pack: bool = False):
    cfg = load_config(None, ["model.name=builtin:tiny", "method=dynamo", "modulation.entropy_change=exact"])
    model.zero_grad(set_to_none=True)
    mb, logits = _forward(model, rows, shared, pack)
    stats = token_stats(logits, mb.targets, entropy=True, vocab_sum=True, mask=mb.mask)
    batch = PolicyBatch(
        mb.targets, mb.mask, mb.advantages, _old_logp(mb, rows), mb.logp_behavior, mb.total_tokens, mb.total_seqs,
        stats.entropy, stats.vocab_sum,
    )  # fmt: skip
    loss, _ = policy_objective(logits, batch, cfg)
    loss.backward()
    grad = torch.cat([p.grad.float().flatten() for _, p in sorted(model.named_parameters()) if p.grad is not None])
    return {
        "logp": torch.cat(_per_response(mb, stats.logp.detach())),
        "entropy": torch.cat(_per_response(mb, stats.entropy)),
        "vocab_sum": torch.cat(_per_response(mb, stats.vocab_sum)),
        "loss": loss.detach(),
        "grad": grad,
    }


def _old_logp(mb, rows) -> torch.Tensor:
    """Old log-probs, the same per response token in both layouts (placed by the mask)."""
    out = torch.zeros_like(mb.mask)
    for i, r in enumerate(rows):
        offsets = torch.from_numpy(r.logp) * 0.9 + 0.01 * torch.arange(len(r.response))
        out[i, mb.mask[i].bool()] = offsets
    return out


@pytest.mark.parametrize("pack", [False, True], ids=["row-per-tail", "packed-tails"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_shared_prompt_gives_the_full_rows_logprobs_entropy_loss_and_gradient(name, dtype, checkpointing, pack):
    model = MODELS[name]().train()
    if checkpointing:
        enable_checkpointing(model)
        shared_prompt.keep_cache_under_checkpointing(model)
    model.to(dtype)
    rows = _rows(model.config.vocab_size)
    if pack:
        assert collate(rows, True, 0, 1.0, 1.0, pack_tails=True).inputs.segments is not None, "some tails share a row"
    full, shared = _layout_results(model, rows, False), _layout_results(model, rows, True, pack)
    for key in ("logp", "entropy", "vocab_sum", "loss"):
        torch.testing.assert_close(shared[key], full[key], **TOL[dtype], msg=key)
    cos = torch.nn.functional.cosine_similarity(shared["grad"], full["grad"], dim=0)
    assert cos > GRAD_COS[dtype], float(cos)
    torch.testing.assert_close(shared["grad"].norm(), full["grad"].norm(), **TOL[dtype])
    assert full["grad"].norm() > 0


def test_the_prompt_gets_its_gradient_from_every_response_of_its_group():
    """The embedding rows of prompt-only tokens get a gradient in the shared layout (it flows back
    through the shared keys and values), equal to the full rows'."""
    model = _llama4().train()
    rows = [r for r in _rows(model.config.vocab_size) if r.group == 0]
    only_prompt = sorted(set(rows[0].prompt[:-1].tolist()) - {t for r in rows for t in r.response.tolist()})
    grads = []
    for shared in (False, True):
        model.zero_grad(set_to_none=True)
        mb, logits = _forward(model, rows, shared)
        token_stats(logits, mb.targets, mask=mb.mask).logp.sum().backward()
        grads.append(model.model.embed_tokens.weight.grad[only_prompt].clone())
    assert only_prompt and grads[1].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-5)


def test_shared_layout_forwards_fewer_positions_than_full_rows():
    rows = _rows(300)
    full, shared = (collate(rows, s, 0, 1.0, 1.0) for s in (False, True))
    # full: 7 rows x (9 + 7); shared: width 1 + 7, prompts without their last token of 8, 3
    # and 0 tokens (one chunk each for the first two groups), then 7 tails
    assert (full.computed_tokens, shared.computed_tokens) == (7 * 16, (2 + 7) * 8)
    used = sum(len(r.prompt) + len(r.response) for r in rows)
    assert full.padded_tokens == full.computed_tokens - used
    shared_used = (8 + 3 + 0) + sum(1 + len(r.response) for r in rows)
    assert shared.padded_tokens == shared.computed_tokens - shared_used


def test_a_prompt_longer_than_the_tails_is_cut_into_chunks():
    rng = np.random.default_rng(0)
    prompt = rng.integers(3, 300, 20).astype(np.int64)
    rows = [Row(prompt, rng.integers(3, 300, n).astype(np.int64), np.zeros(n, np.float32), 1.0, 0) for n in (2, 4)]
    x = collate(rows, True, 0, 1.0, 1.0).inputs
    assert (x.tails, x.chunk_rows.tolist(), x.input_ids.shape) == (4, [[0, 1, 2, 3]], (4 + 2, 5))  # 19 in chunks of 5
    assert torch.equal(x.input_ids[:4].flatten()[:19], torch.from_numpy(prompt[:19]))
    model = _llama4().train()
    full, shared = (_layout_results(model, rows, s) for s in (False, True))
    torch.testing.assert_close(shared["logp"], full["logp"], **TOL[torch.float32])
    torch.testing.assert_close(shared["grad"], full["grad"], rtol=1e-4, atol=1e-6)


def test_check_accepts_a_llama_and_finds_a_cache_dropped_under_checkpointing():
    model = _llama4().train()
    assert shared_prompt.check(model) is None
    enable_checkpointing(model)
    why = shared_prompt.check(model)  # transformers' layers drop the cache unless told otherwise
    assert why is not None and "fails with a shared prompt" in why, why
    shared_prompt.keep_cache_under_checkpointing(model)
    assert shared_prompt.check(model) is None


def test_a_model_that_cannot_share_trains_on_full_rows_with_a_notice(monkeypatch, capsys):
    from dynamo_async.learner.trainer import Trainer

    monkeypatch.setattr(shared_prompt, "check", lambda model: "its forward takes no key/value cache")
    trainer = Trainer(load_config(None, ["model.name=builtin:tiny"]), "cpu")
    err = capsys.readouterr().err
    assert "optim.shared_prompt: LlamaForCausalLM cannot share prompts (its forward takes no key/value cache)" in err
    assert trainer.cache_kw is None and not trainer.packing.shared_prompt
    assert sum("optim.shared_prompt" in line for line in err.splitlines()) == 1


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_tails_share_rows_and_give_the_full_rows_results_with_either_attention(attention):
    model = _llama4().train()
    model.config._attn_implementation = attention
    rows = _rows(model.config.vocab_size)
    one, packed = collate(rows, True, 0, 1.0, 1.0), collate(rows, True, 0, 1.0, 1.0, pack_tails=True)
    assert packed.computed_tokens < one.computed_tokens and packed.padded_tokens < one.padded_tokens
    full, shared = _layout_results(model, rows, False), _layout_results(model, rows, True, True)
    for key in ("logp", "entropy", "loss"):
        torch.testing.assert_close(shared[key], full[key], **TOL[torch.float32], msg=key)
    torch.testing.assert_close(shared["grad"], full["grad"], rtol=1e-3, atol=1e-5)
