"""The ``vllm`` engine's contract, against the real vLLM (the CPU build the README's test command
installs): token ids, the sampled tokens' log-probs after temperature against the learner's own
recomputation on the same weights, seeds, many samples per prompt, finish reasons, per-token
policy versions, and an in-flight weight update broadcast by the learner's ``WeightSender``.

One engine serves the module (vLLM's start takes about 20 s here) on ``builtin:tiny-math``.
The bad-input checks that need no engine run on their own (``check_version``, ``engine_kwargs``);
a model vLLM cannot serve is started for real and refused in one line.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dynamo_async.algo.logprobs import token_stats
from dynamo_async.config import load_config
from dynamo_async.data.prompts import pool_prompts, training_problems
from dynamo_async.errors import UsageError
from dynamo_async.models import load_model, load_tokenizer, resolve_model
from dynamo_async.weights.sender import WeightSender
from workers.engine import GenRequest
from workers.vllm_engine import to_result
from workers.vllm_start import GIB, check_version, cpu_binding, engine_kwargs, start_vllm_engine

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
MAX_NEW = 24
LOGP_TOL = 2e-4  # float32 on both sides: vLLM's CPU kernels against transformers' eager forward


def config(*overrides: str):
    return load_config(TINY, ["rollout.engine=vllm", f"rollout.max_new_tokens={MAX_NEW}", *overrides])


@pytest.fixture(scope="module")
def engine():
    eng = start_vllm_engine(config(), "cpu")
    eng.poll_s = 0.05
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("builtin:tiny-math")


@pytest.fixture(scope="module")
def prompts(tokenizer):
    cfg = config()
    return [p.token_ids for p in pool_prompts(training_problems(cfg.data), tokenizer, cfg)[:8]]


def learner_model(state: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    model = load_model("builtin:tiny-math", "float32")
    if state is not None:
        model.load_state_dict(state, strict=False)
    return model.eval()


def recompute(model, prompt_ids, token_ids, temperature: float) -> np.ndarray:
    """The learner's log-probs of ``token_ids`` after ``prompt_ids`` (the loss's own function)."""
    ids = torch.as_tensor(np.concatenate([prompt_ids, token_ids]).astype(np.int64))[None]
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1 : -1].float()
    return token_stats(logits, torch.as_tensor(token_ids.astype(np.int64)), temperature).logp.numpy()


def gaps(pairs) -> tuple[float, float, float]:
    """Mean and max |vLLM - learner| and the mean per-token KL estimate w - 1 - log w, w the ratio
    (as ``kl_behavior_proximal``), over every token of ``pairs`` (vLLM, learner)."""
    vl = np.concatenate([a for a, _ in pairs]).astype(np.float64)
    le = np.concatenate([b for _, b in pairs]).astype(np.float64)
    d = le - vl
    return float(np.abs(d).mean()), float(np.abs(d).max()), float(np.mean(np.exp(d) - 1 - d))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_after_temperature_match_the_learners_recomputation(engine, prompts, temperature):
    base = engine.cfg
    engine.cfg = config(f"rollout.temperature={temperature}")
    try:
        results = engine.generate([GenRequest(p, seed=i) for i, p in enumerate(prompts)])
    finally:
        engine.cfg = base
    model = learner_model()
    pairs = [(r.logprobs, recompute(model, p, r.token_ids, temperature)) for p, r in zip(prompts, results)]
    mean, worst, kl = gaps(pairs)
    print(f"vllm vs learner at T={temperature}: mean gap {mean:.2e}, max gap {worst:.2e}, KL/token {kl:.2e}")
    assert worst < LOGP_TOL and kl < 1e-7
    for r in results:
        assert r.token_ids.dtype == np.int32 and len(r.token_ids) == len(r.logprobs) == len(r.versions)
        assert np.all(r.logprobs <= 0) and set(r.versions.tolist()) == {0}


def test_same_seed_same_sample_whatever_else_is_in_the_batch(engine, prompts):
    n = 8
    together = engine.generate([GenRequest(prompts[0], seed=100 + s) for s in range(n)] + [GenRequest(prompts[1], 7)])
    assert len(together) == n + 1
    alone = engine.generate([GenRequest(prompts[0], seed=100 + s) for s in (3, 5)])
    for mine, again in zip(alone, (together[3], together[5])):
        np.testing.assert_array_equal(mine.token_ids, again.token_ids)
        np.testing.assert_allclose(mine.logprobs, again.logprobs, atol=LOGP_TOL)
    # n samples of one prompt are n draws, not one draw repeated
    assert len({r.token_ids.tobytes() for r in together[:n]}) > 1


def test_finish_reasons_stop_on_eos_and_length_at_the_limit(engine, prompts, tokenizer):
    results = engine.generate([GenRequest(p, seed=s) for p in prompts for s in range(4)])
    reasons = {r.finish_reason for r in results}
    assert reasons <= {"stop", "length"} and "stop" in reasons
    for r in results:
        if r.finish_reason == "stop":
            assert r.token_ids[-1] == tokenizer.eos_token_id and len(r.token_ids) <= MAX_NEW
        else:
            assert len(r.token_ids) == MAX_NEW and tokenizer.eos_token_id not in r.token_ids.tolist()


def _perturbed(scale: float, seed: int) -> dict[str, torch.Tensor]:
    """The learner's weights of the tiny model moved by relative noise (what a step would send)."""
    g = torch.Generator().manual_seed(seed)
    model = learner_model()
    return {
        n: (p.detach() * (1 + scale * torch.randn(p.shape, generator=g))).contiguous()
        for n, p in model.named_parameters()
    }


def _long_generations(engine, prompts, n: int):
    """``n`` requests that ignore eos, so they run long enough to straddle a weight swap."""
    from vllm import SamplingParams, TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    async def one(i: int):
        params = SamplingParams(
            n=1, seed=i, max_tokens=200, logprobs=0, ignore_eos=True, detokenize=False,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )  # fmt: skip
        final = None
        prompt = TokensPrompt(prompt_token_ids=[int(t) for t in prompts[i % len(prompts)]])
        async for out in engine.llm.generate(prompt, params, f"long{i}"):
            final = out
        return to_result(final.outputs[0], 0)

    async def all_of():
        import asyncio

        return await asyncio.gather(*(one(i) for i in range(n)))

    return engine.run(all_of())


def test_a_broadcast_is_swapped_in_mid_generation_and_tags_tokens_with_their_weights(engine, prompts):
    sender = WeightSender("127.0.0.1", 0, backend="gloo", timeout_s=30, join_timeout_s=10)
    members = engine.run(
        engine.llm.collective_rpc("dynamo_start_receiver", args=("127.0.0.1", sender.port, "t", "", 30))
    )
    assert members == ["t/tp0"]
    new = _perturbed(0.5, seed=1)
    out: dict = {}
    gen = threading.Thread(target=lambda: out.setdefault("res", _long_generations(engine, prompts, 32)))
    gen.start()
    while engine.llm.get_num_unfinished_requests() < 32:  # the generations are running
        time.sleep(0.001)
    start = time.perf_counter()
    report = sender.broadcast(new, version=1, members=members)
    assert report.error is None, report.error
    while engine.swaps < 1 and time.perf_counter() - start < 30:
        time.sleep(0.01)
    swapped_s = time.perf_counter() - start
    gen.join(120)
    assert engine.policy_version == 1 and engine.swaps == 1
    print(f"broadcast start -> serving version 1: {swapped_s:.2f} s")

    old_model, new_model = learner_model(), learner_model(new)
    straddled = 0
    for i, r in enumerate(out["res"]):
        v = r.versions
        assert np.all(np.diff(v) >= 0) and set(v.tolist()) <= {0, 1}
        p = prompts[i % len(prompts)]
        before, after = v == 0, v == 1
        straddled += int(before.any() and after.any())
        old_lp, new_lp = recompute(old_model, p, r.token_ids, 1.0), recompute(new_model, p, r.token_ids, 1.0)
        assert np.abs(r.logprobs[before] - old_lp[before]).max(initial=0) < LOGP_TOL
        assert np.abs(r.logprobs[after] - new_lp[after]).max(initial=0) < LOGP_TOL
    assert straddled >= 1, "no generation was in flight across the swap"

    # a generation started after the swap is the new weights' throughout
    fresh = engine.generate([GenRequest(prompts[0], seed=3)])[0]
    assert set(fresh.versions.tolist()) == {1}
    np.testing.assert_allclose(fresh.logprobs, recompute(new_model, prompts[0], fresh.token_ids, 1.0), atol=LOGP_TOL)


# ------------------------------------------------------------------------------ bad input


def test_an_unsupported_version_is_one_line_naming_both():
    with pytest.raises(UsageError, match=r"got version 0\.31\.0 for the CPU, expected 0\.32\.0 \(supported: "):
        check_version("0.31.0", on_cpu=True)
    with pytest.raises(UsageError, match=r"got version 0\.32\.0 for GPUs, expected 0\.33\.0"):
        check_version("0.32.0", on_cpu=False)
    check_version("0.32.0", on_cpu=True)
    check_version("0.33.0", on_cpu=False)


def test_cpu_settings_refuse_a_kv_cache_larger_than_free_ram_and_tensor_parallelism():
    path = "/models/m"
    kwargs = engine_kwargs(config(), path, on_cpu=True, available_bytes=8 * GIB)
    assert kwargs["kv_cache_memory_bytes"] == GIB and kwargs["enforce_eager"] and "gpu_memory_utilization" not in kwargs
    with pytest.raises(UsageError, match=r"cpu_kv_cache_gib: got 12 GiB, expected at most 8\.0 GiB"):
        engine_kwargs(config("rollout.cpu_kv_cache_gib=12"), path, on_cpu=True, available_bytes=8 * GIB)
    with pytest.raises(UsageError, match="rollout.tensor_parallel: got 2 with vLLM on the CPU, expected 1"):
        engine_kwargs(config("rollout.tensor_parallel=2"), path, on_cpu=True, available_bytes=8 * GIB)
    gpu = engine_kwargs(config("rollout.gpu_memory_utilization=0.5"), path, on_cpu=False, available_bytes=0)
    assert gpu["gpu_memory_utilization"] == 0.5 and "kv_cache_memory_bytes" not in gpu


def test_cpu_threads_bind_the_first_allowed_cores_and_no_more_than_there_are():
    assert cpu_binding(2, [3, 5, 7]) == "3,5"
    with pytest.raises(UsageError, match=r"rollout.cpu_threads: got 4, expected at most 3"):
        cpu_binding(4, [3, 5, 7])


def test_a_model_vllm_cannot_serve_is_refused_at_start_in_one_line(tmp_path):
    """Heads of 16 dimensions (the builtin tiny models before v2): vLLM's CPU attention refuses
    them only when it first runs the model, which the start does. Through ``eval`` in a process
    of its own: the dead engine's client sockets would otherwise stay in this one."""
    import json
    import shutil
    import subprocess
    import sys

    src = Path(resolve_model("builtin:tiny-math"))
    bad = tmp_path / "head16"
    shutil.copytree(src, bad)
    cfg_json = json.loads((bad / "config.json").read_text())
    cfg_json.update(num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    (bad / "config.json").write_text(json.dumps(cfg_json))
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"id": "0", "problem": "What is 1 + 1?", "answer": "2"}) + "\n")
    cmd = [sys.executable, "-m", "dynamo_async.cli", "eval", "--model", str(bad), "--data", str(data), "--engine"]
    cmd += ["vllm", "--out", str(tmp_path / "r.json"), "--config", str(TINY), "rollout.tensor_parallel=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("dynamo-async eval: error:")]
    assert f"vllm could not serve model '{bad}'" in line and "rollout.engine=hf" in line
