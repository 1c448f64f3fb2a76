"""The ``vllm`` engine's own logic, against ``FakeAsyncLLM``: a small in-test double of vLLM's
``AsyncLLM`` that implements exactly the calls ``VLLMEngine`` makes and records their order.

Checked here: mapping of vLLM outputs to results (tokens, sampled log-probs, per-token versions
from ``weight_versions`` spans, finish reasons), and the weight-swap choreography
(pause(keep, clear_cache) -> dynamo_apply_staged -> update_weight_version -> resume, only when
every tensor-parallel rank holds the same newer version), and the failure of a dead or hung
engine. ``tests/test_vllm_real.py`` runs vLLM's CPU build; a test marked ``gpu`` runs GPU vLLM.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from dynamo_async.config import load_config
from workers.engine import EngineFailure, GenRequest
from workers.vllm_engine import VLLMEngine, to_result

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
NEVER = 3600.0  # watcher period that never fires within a test


# ------------------------------------------------------------------------ the vLLM double


@dataclass
class FakeLogprob:
    logprob: float
    rank: int = 1
    decoded_token: str | None = None


@dataclass
class FakeSpan:
    version: str
    start: int
    end: int


@dataclass
class FakeCompletionOutput:
    token_ids: list[int]
    logprobs: list[dict[int, FakeLogprob]] | None
    finish_reason: str | None
    weight_versions: list[FakeSpan] | None = None
    index: int = 0


@dataclass
class FakeRequestOutput:
    request_id: str
    outputs: list[FakeCompletionOutput]
    finished: bool = True


def completion(tokens, logps, finish="length", spans=None, distractors=True) -> FakeCompletionOutput:
    """A CompletionOutput-like object; each position's dict also holds other tokens' log-probs
    (as vLLM's top-k entries would), so the engine must pick the sampled token's entry."""
    positions = []
    for t, lp in zip(tokens, logps):
        pos = {int(t): FakeLogprob(float(lp))}
        if distractors:
            pos[int(t) + 1000] = FakeLogprob(-0.01)
        positions.append(pos)
    return FakeCompletionOutput(list(tokens), positions, finish, spans)


@dataclass
class FakeAsyncLLM:
    """Double of ``vllm.v1.engine.async_llm.AsyncLLM`` for ``VLLMEngine``: ``generate`` (async
    generator of one final RequestOutput), ``collective_rpc`` (one result per fake TP rank),
    ``pause_generation``, ``resume_generation``, ``update_weight_version``, ``shutdown``."""

    tp: int = 2
    respond: object = None  # (prompt, params, request_id) -> FakeCompletionOutput
    staged: list[int] = field(default_factory=list)
    apply_error: BaseException | None = None
    hold: threading.Event | None = None  # generate waits for it before its final output
    calls: list[tuple] = field(default_factory=list)
    requests: list[tuple] = field(default_factory=list)
    paused: bool = False

    def __post_init__(self):
        self.staged = self.staged or [-1] * self.tp
        self.started = threading.Event()

    def stage(self, *versions: int) -> None:
        assert len(versions) == self.tp
        self.staged = list(versions)

    async def generate(self, prompt, sampling_params, request_id):
        self.calls.append(("generate", request_id))
        self.requests.append((prompt, sampling_params, request_id))
        self.started.set()
        if self.hold is not None:
            while not self.hold.is_set():
                await asyncio.sleep(0.005)
        yield FakeRequestOutput(request_id, [self.respond(prompt, sampling_params, request_id)])

    async def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        self.calls.append(("rpc", method))
        if method == "dynamo_staged_version":
            return list(self.staged)
        if method == "dynamo_apply_staged":
            assert self.paused, "weights applied while generation was running"
            if self.apply_error is not None:
                raise self.apply_error
            assert all(v >= 0 for v in self.staged), "dynamo_apply_staged with nothing staged"
            applied, self.staged = list(self.staged), [-1] * self.tp
            return applied
        raise AssertionError(f"unexpected collective_rpc {method!r}")

    async def pause_generation(self, *, mode="abort", clear_cache=True):
        self.calls.append(("pause", mode, clear_cache))
        self.paused = True

    async def resume_generation(self):
        self.calls.append(("resume",))
        self.paused = False

    async def update_weight_version(self, version):
        assert isinstance(version, str), f"weight version label must be a str, got {type(version)}"
        self.calls.append(("version", version))

    def shutdown(self):
        self.calls.append(("shutdown",))

    def names(self) -> list[str]:
        """The call sequence without generate calls, rpc names inlined."""
        return [c[1] if c[0] == "rpc" else c[0] for c in self.calls if c[0] != "generate"]


def make_engine(llm: FakeAsyncLLM, policy_version: int = 0, poll_s: float = NEVER, *overrides: str) -> VLLMEngine:
    cfg = load_config(TINY, ["rollout.engine=vllm", *overrides])
    return VLLMEngine(
        llm,
        cfg,
        make_prompt=lambda ids: {"prompt_token_ids": [int(i) for i in ids]},
        make_params=lambda run, seed: {"seed": seed, "max_tokens": run.rollout.max_new_tokens},
        poll_s=poll_s,
        policy_version=policy_version,
    )


@pytest.fixture
def engines():
    made: list[VLLMEngine] = []

    def make(llm, *args, **kwargs):
        e = make_engine(llm, *args, **kwargs)
        made.append(e)
        return e

    yield make
    for e in made:
        if e._thread.is_alive():
            e.close()
        assert not e._thread.is_alive()


def wait_until(cond, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


# --------------------------------------------------------------------------- output mapping


def test_to_result_maps_tokens_sampled_logprobs_and_version_spans():
    out = completion(
        [5, 6, 7, 8, 9, 10],
        [-0.1, -0.2, -0.3, -0.4, -0.5, -0.6],
        "stop",
        spans=[FakeSpan("3", 2, 4), FakeSpan("4", 4, 6)],
    )
    res = to_result(out, started_version=2)
    assert res.token_ids.tolist() == [5, 6, 7, 8, 9, 10] and res.token_ids.dtype == np.int32
    np.testing.assert_allclose(res.logprobs, [-0.1, -0.2, -0.3, -0.4, -0.5, -0.6], rtol=0, atol=1e-7)
    assert res.logprobs.dtype == np.float32
    assert res.versions.tolist() == [2, 2, 3, 3, 4, 4] and res.versions.dtype == np.int32
    assert res.finish_reason == "stop"


def test_to_result_versions_outside_spans_are_the_start_version():
    tokens = list(range(40, 48))
    no_spans = to_result(completion(tokens, [-1.0] * 8, spans=None), started_version=7)
    assert no_spans.versions.tolist() == [7] * 8
    empty = to_result(completion(tokens, [-1.0] * 8, spans=[]), started_version=7)
    assert empty.versions.tolist() == [7] * 8
    tail = to_result(completion(tokens, [-1.0] * 8, spans=[FakeSpan("8", 5, 8)]), started_version=7)
    assert tail.versions.tolist() == [7] * 5 + [8] * 3


@pytest.mark.parametrize(
    "reason, want", [("stop", "stop"), ("length", "length"), ("abort", "abort"), (None, "abort"), ("error", "abort")]
)
def test_to_result_maps_finish_reasons(reason, want):
    assert to_result(completion([1, 2], [-0.5, -0.5], reason), 0).finish_reason == want


def test_to_result_rejects_outputs_without_one_logprob_per_token():
    with pytest.raises(ValueError):
        to_result(FakeCompletionOutput([1, 2, 3], None, "stop"), 0)
    short = completion([1, 2, 3], [-0.1, -0.2, -0.3])
    short.logprobs = short.logprobs[:2]
    with pytest.raises(ValueError):
        to_result(short, 0)


def test_generate_maps_every_request_in_order_with_its_seed(engines):
    def respond(prompt, params, request_id):
        ids = prompt["prompt_token_ids"]
        tokens = [ids[-1] + 1, ids[-1] + 2, params["seed"]]
        return completion(tokens, [-0.25, -0.5, -1.0], "length" if params["seed"] % 2 else "stop")

    llm = FakeAsyncLLM(respond=respond)
    engine = engines(llm, policy_version=3)
    reqs = [GenRequest(np.array([1, 2, 10 * i], dtype=np.int32), seed=100 + i) for i in range(5)]
    results = engine.generate(reqs)
    assert len(results) == 5
    for i, res in enumerate(results):
        assert res.token_ids.tolist() == [10 * i + 1, 10 * i + 2, 100 + i]
        np.testing.assert_allclose(res.logprobs, [-0.25, -0.5, -1.0])
        assert res.versions.tolist() == [3, 3, 3]
        assert res.finish_reason == ("length" if i % 2 else "stop")
    prompts = [p["prompt_token_ids"] for p, _, _ in llm.requests]
    assert sorted(prompts) == sorted([1, 2, 10 * i] for i in range(5))
    ids = [rid for _, _, rid in llm.requests]
    assert len(set(ids)) == 5, "request ids must be unique"
    assert engine.generate([]) == []
    more = engine.generate(reqs[:2])
    assert len({rid for _, _, rid in llm.requests}) == 7, "request ids reused across calls"
    assert [r.token_ids.tolist() for r in more] == [r.token_ids.tolist() for r in results[:2]]


# ----------------------------------------------------------------------------- weight swaps


def test_swap_sequence_when_every_rank_has_the_same_newer_version(engines):
    llm = FakeAsyncLLM(tp=2)
    engine = engines(llm)
    llm.stage(1, 1)
    assert engine.swap_now() == 1
    assert engine.policy_version == 1 and engine.swaps == 1
    assert llm.names() == ["dynamo_staged_version", "pause", "dynamo_apply_staged", "version", "resume"]
    pause = next(c for c in llm.calls if c[0] == "pause")
    assert pause == ("pause", "keep", True)
    assert ("version", "1") in llm.calls
    assert not llm.paused
    # nothing new staged afterwards: no second swap
    llm.calls.clear()
    assert engine.swap_now() is None
    assert llm.names() == ["dynamo_staged_version"]


@pytest.mark.parametrize(
    "staged, version",
    [
        ((-1, -1), 0),  # nothing staged
        ((1, -1), 0),  # one rank has not received yet
        ((2, 1), 0),  # ranks disagree
        ((3, 3), 3),  # not newer than the version served
        ((2, 2), 3),  # older
    ],
)
def test_no_swap_when_nothing_new_or_ranks_disagree(engines, staged, version):
    llm = FakeAsyncLLM(tp=2)
    engine = engines(llm, policy_version=version)
    llm.stage(*staged)
    assert engine.swap_now() is None
    assert llm.names() == ["dynamo_staged_version"]
    assert engine.policy_version == version and engine.swaps == 0
    assert llm.staged == list(staged), "staged weights were taken without a swap"


def test_resume_happens_even_if_apply_raises(engines):
    llm = FakeAsyncLLM(tp=2, apply_error=RuntimeError("load_weights failed"))
    engine = engines(llm)
    llm.stage(1, 1)
    with pytest.raises(RuntimeError, match="load_weights failed"):
        engine.swap_now()
    assert llm.names() == ["dynamo_staged_version", "pause", "dynamo_apply_staged", "resume"]
    assert not llm.paused
    assert engine.policy_version == 0 and engine.swaps == 0
    # the engine keeps working: the next staged version is applied
    llm.apply_error = None
    llm.stage(2, 2)
    assert engine.swap_now() == 2


def test_watcher_applies_staged_weights_on_its_own(engines):
    llm = FakeAsyncLLM(tp=2)
    engine = engines(llm, poll_s=0.02)
    llm.stage(4, 4)
    assert wait_until(lambda: engine.policy_version == 4)
    assert engine.swaps == 1
    assert ("pause", "keep", True) in llm.calls and ("version", "4") in llm.calls


def test_watcher_survives_a_failed_swap(engines):
    """A swap that raises (a rank's load failed, an RPC timed out) must not end the watcher
    silently: the next staged version is still applied without anyone calling swap_now."""
    llm = FakeAsyncLLM(tp=2, apply_error=RuntimeError("load_weights failed"))
    engine = engines(llm, poll_s=0.02)
    llm.stage(1, 1)
    assert wait_until(lambda: ("rpc", "dynamo_apply_staged") in llm.calls)
    assert wait_until(lambda: ("resume",) in llm.calls)
    llm.apply_error = None
    llm.stage(2, 2)
    assert wait_until(lambda: engine.policy_version == 2, timeout_s=3.0), (
        f"the watcher stopped after a failed swap: {engine._watcher}"
    )


def test_request_in_flight_across_a_swap_keeps_its_start_version_outside_spans(engines):
    def respond(prompt, params, request_id):
        # vLLM labels the tokens generated after update_weight_version("1") with a span
        return completion([1, 2, 3, 4, 5], [-0.1] * 5, "length", spans=[FakeSpan("1", 3, 5)])

    llm = FakeAsyncLLM(tp=1, respond=respond, hold=threading.Event())
    engine = engines(llm)
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(engine.generate, [GenRequest(np.array([7], dtype=np.int32), 1)])
        assert llm.started.wait(5)
        llm.stage(1)
        assert engine.swap_now() == 1
        llm.hold.set()
        res = fut.result(timeout=5)[0]
    assert res.versions.tolist() == [0, 0, 0, 1, 1]
    # a request started after the swap is at version 1 throughout
    llm.respond = lambda *_: completion([1, 2], [-0.1, -0.1], "stop")
    assert engine.generate([GenRequest(np.array([7], dtype=np.int32), 2)])[0].versions.tolist() == [1, 1]


class FakeDeadError(Exception):
    """Stands for vLLM's EngineDeadError."""


def test_a_dead_engine_fails_the_generation_and_every_later_one(engines):
    def respond(*_):
        raise FakeDeadError("engine core died")

    llm = FakeAsyncLLM(tp=1, respond=respond)
    engine = make_engine(llm)
    engine.dead_errors = (FakeDeadError,)
    with pytest.raises(EngineFailure, match="process died"):
        engine.generate([GenRequest(np.array([7], dtype=np.int32), 1)])
    llm.respond = lambda *_: completion([1], [-0.1], "stop")  # even an answer now is not trusted
    with pytest.raises(EngineFailure, match="process died"):
        engine.generate([GenRequest(np.array([7], dtype=np.int32), 2)])
    engine.close()


def test_a_hung_engine_fails_the_generation_within_the_engine_timeout_and_is_killed_on_close():
    llm = FakeAsyncLLM(tp=1, respond=lambda *_: completion([1], [-0.1], "stop"), hold=threading.Event())
    real_rpc = llm.collective_rpc

    async def hung_rpc(method, timeout=None, args=(), kwargs=None):
        if llm.hold is not None and not llm.hold.is_set():
            await asyncio.sleep(3600)  # the engine core answers nothing
        return await real_rpc(method, timeout, args, kwargs)

    llm.collective_rpc = hung_rpc
    killed = []
    engine = make_engine(llm, 0, 0.05, "rollout.engine_timeout_s=0.5")
    engine._kill = lambda: killed.append(True)
    start = time.monotonic()
    with pytest.raises(EngineFailure, match="unanswered for 0 s|unanswered for 1 s"):
        engine.generate([GenRequest(np.array([7], dtype=np.int32), 1)])
    assert time.monotonic() - start < 3.0
    engine.close()
    assert killed == [True]


def test_close_stops_the_loop_thread_and_shuts_the_llm_down(engines):
    llm = FakeAsyncLLM()
    engine = engines(llm)
    engine.close()
    assert not engine._thread.is_alive()
    assert llm.calls[-1] == ("shutdown",)


# ------------------------------------------------------------------------------ real vLLM


@pytest.mark.gpu
def test_real_vllm_generates_through_build_vllm_parts():
    vllm = pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from dynamo_async.data.prompts import pool_prompts, training_problems
    from dynamo_async.models import load_tokenizer
    from dynamo_async.protocol import Welcome
    from workers.vllm_start import GPU_PIN, build_vllm_parts

    if vllm.__version__ != GPU_PIN:
        pytest.skip(f"vllm {vllm.__version__} installed, the GPU engine pins {GPU_PIN}")

    class NoScorer:
        def close(self):
            pass

    cfg = load_config(
        TINY,
        [
            "rollout.engine=vllm",
            "rollout.tensor_parallel=1",
            "rollout.max_new_tokens=8",
            "rollout.gpu_memory_utilization=0.3",
        ],
    )
    welcome = Welcome(worker_id="gpu-test", config_yaml="", sync_host="", sync_port=0, policy_version=0)
    parts = build_vllm_parts(cfg, "gpu-test", welcome, "cuda", NoScorer())
    try:
        tok = load_tokenizer(cfg.model.name)
        prompts = pool_prompts(training_problems(cfg.data), tok, cfg)[:3]
        results = parts.engine.generate([GenRequest(p.token_ids, seed=i) for i, p in enumerate(prompts)])
        assert len(results) == 3
        for res in results:
            assert 1 <= len(res.token_ids) <= 8
            assert np.all(res.logprobs <= 0) and np.all(np.isfinite(res.logprobs))
            assert set(res.versions.tolist()) == {0}
            assert res.finish_reason in ("stop", "length")
        again = parts.engine.generate([GenRequest(p.token_ids, seed=i) for i, p in enumerate(prompts)])
        assert [r.token_ids.tolist() for r in again] == [r.token_ids.tolist() for r in results]
    finally:
        parts.close()


def test_wait_for_weights_swaps_in_the_staged_version(engines):
    llm = FakeAsyncLLM(tp=2)
    engine = engines(llm)
    llm.stage(2, 2)
    engine.wait_for_weights(2, timeout_s=10, step_s=0.01)
    assert engine.policy_version == 2
    with pytest.raises(RuntimeError, match="no weights of version 3 arrived"):
        engine.wait_for_weights(3, timeout_s=0.1, step_s=0.01)
