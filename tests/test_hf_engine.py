"""The ``hf`` engine on the tiny builtin model: seeding, reported log-probs and entropy against a
full forward pass, finish reasons, nucleus sampling, and a weight swap in the middle of a
generation (exact per-token versions, and later tokens drawn from the new weights)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from dynamo_async.config import load_config
from dynamo_async.data.prompts import pool_prompts, training_problems
from dynamo_async.models import load_model, load_tokenizer
from workers.engine import GenRequest, GenResult
from workers.hf_engine import HFEngine, _top_p
from workers.receiver import load_staged

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
TOL = 1e-4


def config(*overrides: str):
    return load_config(TINY, list(overrides))


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("builtin:tiny")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return load_model("builtin:tiny")


@pytest.fixture(scope="module")
def prompts(tokenizer):
    cfg = config()
    pool = pool_prompts(training_problems(cfg.data), tokenizer, cfg)
    # prompts of different lengths, so the batch is left-padded
    chosen = sorted(pool, key=lambda p: len(p.token_ids))
    chosen = [chosen[0], chosen[len(chosen) // 2], chosen[-1]]
    extra = np.concatenate([chosen[0].token_ids, chosen[1].token_ids[-5:]])
    ids = [p.token_ids for p in chosen] + [extra]
    assert len({len(i) for i in ids}) > 1
    return ids


def requests(prompts, seeds) -> list[GenRequest]:
    return [GenRequest(np.asarray(p), int(s)) for p, s in zip(prompts, seeds)]


def same(a: GenResult, b: GenResult) -> bool:
    return (
        np.array_equal(a.token_ids, b.token_ids)
        and np.array_equal(a.logprobs, b.logprobs)
        and np.array_equal(a.versions, b.versions)
        and a.finish_reason == b.finish_reason
    )


@torch.no_grad()
def reference(model, prompt: np.ndarray, tokens: np.ndarray, temperature: float):
    """log pi(token) and entropy at every response position, from one full unpadded forward."""
    ids = torch.from_numpy(np.concatenate([np.asarray(prompt, np.int64), np.asarray(tokens, np.int64)]))[None]
    logits = model(input_ids=ids).logits[0].float()
    z = logits[len(prompt) - 1 : len(prompt) - 1 + len(tokens)] / temperature
    logp_all = torch.log_softmax(z, dim=-1)
    logp = logp_all.gather(-1, torch.as_tensor(tokens, dtype=torch.long)[:, None]).squeeze(-1)
    ent = -(logp_all.exp() * logp_all).sum(-1)
    return logp.numpy(), ent.numpy()


def lm_head_hook(model, fn):
    """Register ``fn(call_index, logits) -> logits`` on the lm_head output (a test double for a
    model with a crafted next-token distribution)."""
    calls = {"n": 0}

    def hook(_module, _inputs, output):
        out = fn(calls["n"], output)
        calls["n"] += 1
        return out

    return model.lm_head.register_forward_hook(hook)


# ---------------------------------------------------------------------------------- seeding


def test_same_seeds_give_identical_outputs(model, tokenizer, prompts):
    engine = HFEngine(model, tokenizer, config("rollout.temperature=1.0"))
    seeds = [11, 12, 13, 14]
    first = engine.generate(requests(prompts, seeds))
    second = engine.generate(requests(prompts, seeds))
    assert len(first) == len(prompts)
    assert all(same(a, b) for a, b in zip(first, second))
    assert all(np.array_equal(a.entropy, b.entropy) for a, b in zip(first, second))
    # a request's result does not depend on its position in the batch
    reordered = engine.generate(requests(prompts[::-1], seeds[::-1]))[::-1]
    assert all(np.array_equal(a.token_ids, b.token_ids) for a, b in zip(first, reordered))


def test_different_seeds_give_different_outputs(model, tokenizer, prompts):
    engine = HFEngine(model, tokenizer, config("rollout.temperature=1.0"))
    a = engine.generate(requests(prompts, [1, 2, 3, 4]))
    b = engine.generate(requests(prompts, [5, 6, 7, 8]))
    for x, y in zip(a, b):
        assert not np.array_equal(x.token_ids, y.token_ids)
    # the same prompt with two seeds in one batch also differs
    c = engine.generate(requests([prompts[0], prompts[0]], [21, 22]))
    assert not np.array_equal(c[0].token_ids, c[1].token_ids)


# ------------------------------------------------------------------- log-probs and entropy


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_logprobs_and_entropy_match_a_full_forward(model, tokenizer, prompts, temperature):
    cfg = config(f"rollout.temperature={temperature}", "rollout.max_new_tokens=12")
    engine = HFEngine(model, tokenizer, cfg)
    results = engine.generate(requests(prompts, [3, 4, 5, 6]))
    for prompt, res in zip(prompts, results):
        assert len(res.token_ids) > 0 and res.entropy is not None
        assert res.token_ids.dtype == np.int32 and res.logprobs.dtype == np.float32
        want_logp, want_ent = reference(model, prompt, res.token_ids, temperature)
        np.testing.assert_allclose(res.logprobs, want_logp, atol=TOL, rtol=0)
        np.testing.assert_allclose(res.entropy, want_ent, atol=TOL, rtol=0)
        assert np.all(res.logprobs <= 0)


def test_versions_equal_the_engines_policy_version(model, tokenizer, prompts):
    engine = HFEngine(model, tokenizer, config(), policy_version=5)
    for res in engine.generate(requests(prompts, [1, 2, 3, 4])):
        assert len(res.versions) == len(res.token_ids)
        assert res.versions.dtype == np.int32 and set(res.versions.tolist()) == {5}
    assert engine.policy_version == 5
    assert engine.generate([]) == []


# ---------------------------------------------------------------------------- finish reasons


def test_stops_at_eos_with_stop_and_at_max_new_tokens_with_length(model, tokenizer, prompts):
    max_new = 10
    eos = tokenizer.eos_token_id
    engine = HFEngine(model, tokenizer, config(f"rollout.max_new_tokens={max_new}"))
    assert eos in engine.eos_ids

    def fn(call, logits):  # row 0 says eos as its 4th token; the others never do
        logits = logits.clone()
        logits[:, :, eos] = -1e9
        if call == 3:
            logits[0, :, eos] = 1e9
        return logits

    handle = lm_head_hook(model, fn)
    try:
        results = engine.generate(requests(prompts, [1, 2, 3, 4]))
    finally:
        handle.remove()
    assert results[0].finish_reason == "stop"
    assert len(results[0].token_ids) == 4 and results[0].token_ids[-1] == eos
    for res in results[1:]:
        assert res.finish_reason == "length"
        assert len(res.token_ids) == max_new and eos not in res.token_ids.tolist()


def test_all_rows_stopping_ends_the_generation(model, tokenizer, prompts):
    eos = tokenizer.eos_token_id
    engine = HFEngine(model, tokenizer, config("rollout.max_new_tokens=16"))
    steps = {"n": 0}

    def fn(call, logits):
        steps["n"] = call + 1
        logits = logits.clone()
        logits[:, :, eos] = 1e9 if call >= 1 else -1e9
        return logits

    handle = lm_head_hook(model, fn)
    try:
        results = engine.generate(requests(prompts, [1, 2, 3, 4]))
    finally:
        handle.remove()
    assert [r.finish_reason for r in results] == ["stop"] * len(prompts)
    assert all(len(r.token_ids) == 2 and r.token_ids[-1] == eos for r in results)
    assert steps["n"] == 2, "the engine kept decoding after every row had stopped"


# ------------------------------------------------------------------------------------ top-p


def test_top_p_keeps_the_smallest_nucleus_and_renormalises():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3], [0.25, 0.25, 0.25, 0.25], [0.97, 0.01, 0.01, 0.01]])
    out = _top_p(probs, 0.7)
    # row 0: sorted 0.5, 0.3 reach 0.8 >= 0.7; 0.15 and 0.05 are outside
    torch.testing.assert_close(out[0], torch.tensor([0.0, 0.5 / 0.8, 0.0, 0.3 / 0.8]))
    # row 1: three of four equal tokens are needed for 0.7
    assert int((out[1] > 0).sum()) == 3
    torch.testing.assert_close(out[1].sum(), torch.tensor(1.0))
    # row 2: the top token alone covers the mass
    torch.testing.assert_close(out[2], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    # exactly reaching the mass with a prefix: 0.5 + 0.3 = 0.8
    assert torch.equal(_top_p(probs[:1], 0.8)[0] > 0, torch.tensor([False, True, False, True]))
    # a tiny top_p still keeps the most likely token; top_p = 1 changes nothing
    assert torch.equal(_top_p(probs, 1e-6) > 0, torch.nn.functional.one_hot(probs.argmax(-1), 4).bool())
    assert torch.equal(_top_p(probs, 1.0), probs)


def test_top_p_never_samples_outside_the_nucleus():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 50, generator=g) * 3
    probs = torch.softmax(logits, -1)
    top_p = 0.6
    kept = _top_p(probs, top_p)
    for i in range(probs.shape[0]):
        order = probs[i].argsort(descending=True)
        mass = probs[i][order].cumsum(0)
        size = int((mass < top_p).sum()) + 1  # smallest prefix with mass >= top_p
        nucleus = set(order[:size].tolist())
        assert set(torch.nonzero(kept[i]).flatten().tolist()) == nucleus
        draws = torch.multinomial(kept[i], 2000, replacement=True, generator=g)
        assert set(draws.tolist()) <= nucleus


def test_engine_with_top_p_samples_only_inside_the_nucleus(model, tokenizer, prompts):
    vocab = model.config.vocab_size
    crafted = torch.full((vocab,), -30.0)
    crafted[[10, 20, 30, 40, 50]] = torch.log(torch.tensor([0.4, 0.25, 0.15, 0.1, 0.1]))
    nucleus = {10, 20, 30}  # 0.4 + 0.25 = 0.65 < 0.7 <= 0.8

    def fn(call, logits):
        return crafted.expand_as(logits).clone()

    engine = HFEngine(model, tokenizer, config("rollout.top_p=0.7", "rollout.max_new_tokens=16"))
    handle = lm_head_hook(model, fn)
    try:
        results = engine.generate(requests(prompts * 4, range(16)))
    finally:
        handle.remove()
    drawn = {int(t) for r in results for t in r.token_ids}
    assert drawn <= nucleus, f"sampled outside the nucleus: {drawn - nucleus}"
    assert drawn == nucleus  # 256 draws: each nucleus token appears
    # the reported log-prob is the full (temperature-scaled) distribution's, not the nucleus'
    full = torch.log_softmax(crafted, -1)
    for r in results:
        np.testing.assert_allclose(r.logprobs, full[torch.as_tensor(r.token_ids, dtype=torch.long)].numpy(), atol=TOL)


# ------------------------------------------------------------------- mid-generation update


class SwapAfter:
    """A weight source that has new weights staged from its (k+1)-th call on, once."""

    def __init__(self, k: int, version: int, tensors: dict[str, torch.Tensor]):
        self.k, self.version, self.tensors, self.calls = k, version, tensors, 0

    def __call__(self):
        self.calls += 1
        return (self.version, self.tensors) if self.calls == self.k + 1 else None


def perturbed(model, seed: int = 1, scale: float = 0.5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: p.detach() + scale * torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}


def test_weight_update_mid_generation_switches_version_and_policy(model, tokenizer, prompts):
    k, max_new, temperature = 5, 14, 0.8
    cfg = config(f"rollout.max_new_tokens={max_new}", f"rollout.temperature={temperature}")
    seeds = [31, 32, 33, 34]
    old = copy.deepcopy(model)
    new_weights = perturbed(model)
    new = copy.deepcopy(model)
    load_staged(new, new_weights)
    fixed = torch.as_tensor(prompts[1], dtype=torch.long)[None]
    with torch.no_grad():
        before = model(input_ids=fixed).logits

    baseline = HFEngine(copy.deepcopy(model), tokenizer, cfg).generate(requests(prompts, seeds))
    source = SwapAfter(k, 1, new_weights)
    engine = HFEngine(model, tokenizer, cfg, weight_source=source)
    results = engine.generate(requests(prompts, seeds))

    assert engine.policy_version == 1
    with torch.no_grad():
        after = engine.model(input_ids=fixed).logits
        assert not torch.allclose(before, after), "the swap did not change the model"
        torch.testing.assert_close(after, new(input_ids=fixed).logits)

    changed = False
    for prompt, res, base in zip(prompts, results, baseline):
        n = len(res.token_ids)
        want_versions = [0] * min(k, n) + [1] * max(0, n - k)
        assert res.versions.tolist() == want_versions
        # before the swap: the same tokens and log-probs as without any swap
        assert np.array_equal(res.token_ids[:k], base.token_ids[:k])
        np.testing.assert_allclose(res.logprobs[:k], base.logprobs[:k], atol=TOL)
        # every token is scored by the weights that produced it (KV cache rebuilt at the swap)
        old_logp, old_ent = reference(old, prompt, res.token_ids, temperature)
        new_logp, new_ent = reference(new, prompt, res.token_ids, temperature)
        np.testing.assert_allclose(res.logprobs[:k], old_logp[:k], atol=TOL)
        np.testing.assert_allclose(res.entropy[:k], old_ent[:k], atol=TOL)
        np.testing.assert_allclose(res.logprobs[k:], new_logp[k:], atol=TOL)
        np.testing.assert_allclose(res.entropy[k:], new_ent[k:], atol=TOL)
        changed |= not np.array_equal(res.token_ids[k:], base.token_ids[k : len(res.token_ids)])
    assert changed, "the new weights changed no token after the swap"
    assert source.calls >= k + 1

    # the next generation runs entirely at the new version
    again = engine.generate(requests(prompts, seeds))
    assert all(set(r.versions.tolist()) == {1} for r in again)


def test_apply_weights_between_batches_bumps_the_version(model, tokenizer, prompts):
    engine = HFEngine(model, tokenizer, config())
    weights = perturbed(model, seed=2)
    engine.apply_weights(3, weights)
    assert engine.policy_version == 3
    for name, p in engine.model.named_parameters():
        assert torch.equal(p, weights[name]), name
    res = engine.generate(requests(prompts[:1], [1]))[0]
    assert set(res.versions.tolist()) == {3}
    with pytest.raises(ValueError):
        engine.apply_weights(4, {"no.such.weight": torch.zeros(1)})
