"""The ``vllm`` engine: vLLM 0.33.0's ``AsyncLLM`` in-process, tensor parallel per worker.

Checked against the vLLM 0.33.0 wheel's own source (``vllm/v1/engine/async_llm.py``,
``vllm/outputs.py``, ``vllm/sampling_params.py``, ``vllm/v1/worker/worker_base.py``):

- requests: ``generate(TokensPrompt(prompt_token_ids=...), SamplingParams(n=1, seed=...,
  temperature, top_p, max_tokens, logprobs=0, output_kind=FINAL_ONLY, detokenize=False),
  request_id)``, an async generator; ``logprobs=0`` returns the sampled token's log-prob
  per position, and the engine runs with ``logprobs_mode="processed_logprobs"`` so that it is
  the log-prob after temperature scaling (with top_p=1.0, as in Table 3, nothing else changes);
- versions: ``CompletionOutput.weight_versions`` spans ``(version, start, end)``, labelled by
  ``update_weight_version(str(v))``; tokens outside any span get the version the request
  started under;
- weights: receivers run inside every vLLM worker process (``workers.vllm_ext``, attached with
  ``worker_extension_cls``) and stage the broadcast buckets; at a safe point the engine does
  ``pause_generation(mode="keep", clear_cache=True)`` -> ``collective_rpc("dynamo_apply_staged")``
  (each rank calls its model's ``load_weights``) -> ``update_weight_version`` ->
  ``resume_generation()``; kept requests recompute their KV cache under the new weights.

The engine's event loop runs in a thread of its own; ``generate`` is synchronous for the
worker loop, and a watcher polls the receivers for staged weights every ``poll_s``.
"""

from __future__ import annotations

import asyncio
import itertools
import threading

import numpy as np

from dynamo_async.config.schema import RunConfig
from dynamo_async.errors import UsageError
from workers.engine import GenRequest, GenResult, wait_for_version
from workers.parts import WorkerParts, register_engine

VLLM_VERSION = "0.33.0"


class VLLMEngine:
    """Wraps an ``AsyncLLM``-like object; ``make_prompt``/``make_params`` build vLLM inputs."""

    def __init__(self, llm, cfg: RunConfig, make_prompt, make_params, poll_s: float = 0.5, policy_version: int = 0):
        self.llm, self.cfg, self.make_prompt, self.make_params, self.poll_s = llm, cfg, make_prompt, make_params, poll_s
        self.policy_version = policy_version
        self.swaps = 0
        self.swap_errors = 0
        self.last_swap_error: str | None = None
        self._ids = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine-loop", daemon=True)
        self._thread.start()
        self._swap_lock: asyncio.Lock | None = None
        self._watcher = asyncio.run_coroutine_threadsafe(self._watch(), self._loop)

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        return asyncio.run_coroutine_threadsafe(self._generate_all(requests), self._loop).result()

    def apply_weights(self, version: int, tensors) -> None:
        raise ValueError(
            "the vllm engine loads weights inside its worker processes (workers.vllm_ext); "
            "got tensors in the driver, expected them to arrive through the weight receivers"
        )

    def swap_now(self) -> int | None:
        """Apply staged weights if any (the watcher does this on its own); returns the new version."""
        return asyncio.run_coroutine_threadsafe(self._swap_if_staged(), self._loop).result()

    def wait_for_weights(self, version: int, timeout_s: float, step_s: float = 0.5) -> None:
        """A late joiner first loads the learner's current weights (version > 0)."""
        wait_for_version(self, self.swap_now, version, timeout_s, step_s)

    def close(self) -> None:
        self._watcher.cancel()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self.llm.shutdown()

    async def _generate_all(self, requests: list[GenRequest]) -> list[GenResult]:
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def _one(self, req: GenRequest) -> GenResult:
        started = self.policy_version
        final = None
        params = self.make_params(self.cfg, req.seed)
        async for out in self.llm.generate(self.make_prompt(req.prompt_ids), params, f"r{next(self._ids)}"):
            final = out
        assert final is not None and final.outputs, "vLLM returned no output"
        return to_result(final.outputs[0], started)

    async def _watch(self) -> None:
        """Poll for staged weights. A failed swap is logged and counted, and the next poll tries
        again: the watcher must outlive one bad broadcast, or the worker would keep serving old
        weights until the staleness gate starves it."""
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self._swap_if_staged()
            except Exception as err:  # supervisory loop: report, keep watching
                self.swap_errors += 1
                self.last_swap_error = repr(err)
                print(f"vllm engine: weight swap failed ({err!r}); retrying at the next poll", flush=True)

    async def _swap_if_staged(self) -> int | None:
        if self._swap_lock is None:
            self._swap_lock = asyncio.Lock()
        async with self._swap_lock:
            staged = await self.llm.collective_rpc("dynamo_staged_version")
            # every tensor-parallel rank must hold the same new version before any loads it
            if len(set(staged)) != 1 or staged[0] <= self.policy_version:
                return None
            await self.llm.pause_generation(mode="keep", clear_cache=True)
            try:
                versions = await self.llm.collective_rpc("dynamo_apply_staged")
                assert len(set(versions)) == 1, f"tensor-parallel ranks applied different versions {versions}"
                self.policy_version = versions[0]
                await self.llm.update_weight_version(str(self.policy_version))
            finally:
                await self.llm.resume_generation()
            self.swaps += 1
            return self.policy_version


def to_result(output, started_version: int) -> GenResult:
    """Map a vLLM ``CompletionOutput`` to token ids, sampled log-probs and per-token versions."""
    tokens = np.asarray(list(output.token_ids), dtype=np.int32)
    if output.logprobs is None or len(output.logprobs) != len(tokens):
        raise ValueError("vLLM output without one sampled log-prob per token; expected SamplingParams(logprobs=0)")
    logprobs = np.asarray([pos[int(t)].logprob for pos, t in zip(output.logprobs, tokens)], dtype=np.float32)
    versions = np.full(len(tokens), started_version, dtype=np.int32)
    for span in output.weight_versions or ():
        if span.version.isdigit():
            versions[span.start : span.end] = int(span.version)
    reason = output.finish_reason if output.finish_reason in ("stop", "length", "abort") else "abort"
    return GenResult(tokens, logprobs, versions, reason)


@register_engine("vllm")
def build_vllm_parts(cfg: RunConfig, worker_id: str, welcome, device: str, scorer) -> WorkerParts:
    """Start AsyncLLM with the receiver extension and connect every rank's receiver."""
    from dynamo_async.models import load_tokenizer

    engine = start_vllm_engine(cfg)

    def join(welcome) -> tuple[str, ...]:
        """(Re)start every rank's receiver against ``welcome``'s rendezvous."""
        if not welcome.sync_port:
            return ()
        args = (welcome.sync_host, welcome.sync_port, worker_id, welcome.sync_token, cfg.weights.timeout_s)
        rpc = engine.llm.collective_rpc("dynamo_start_receiver", args=args)
        return tuple(asyncio.run_coroutine_threadsafe(rpc, engine._loop).result())

    ids = join(welcome)
    return WorkerParts(engine, load_tokenizer(cfg.model.name), scorer, [], ids, restart_receivers=join)


def start_vllm_engine(cfg: RunConfig) -> VLLMEngine:
    """AsyncLLM for ``cfg.model`` (tensor parallel ``cfg.rollout.tensor_parallel``) behind a
    ``VLLMEngine``; the receiver extension is attached but no receiver is started."""
    try:
        import vllm
    except ImportError:
        raise UsageError(
            "engine 'vllm': got no vllm package, expected vLLM "
            f"{VLLM_VERSION} (on a GPU node: pip install -e '.[vllm]'), or use the hf engine"
        ) from None
    from vllm import SamplingParams, TokensPrompt
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    from dynamo_async.models import resolve_model

    if vllm.__version__ != VLLM_VERSION:
        raise UsageError(f"vllm: got {vllm.__version__}, expected {VLLM_VERSION} (pip install -e '.[vllm]')")
    args = AsyncEngineArgs(
        model=resolve_model(cfg.model.name),
        dtype=cfg.model.compute_dtype,
        tensor_parallel_size=cfg.rollout.tensor_parallel,
        seed=cfg.rollout.seed,
        gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
        logprobs_mode="processed_logprobs",
        worker_extension_cls="workers.vllm_ext.DynamoWorkerExtension",
    )
    llm = AsyncLLM.from_engine_args(args)

    def make_params(run: RunConfig, seed: int):
        return SamplingParams(
            n=1,
            seed=seed,
            temperature=run.rollout.temperature,
            top_p=run.rollout.top_p,
            max_tokens=run.rollout.max_new_tokens,
            logprobs=0,
            detokenize=False,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    return VLLMEngine(llm, cfg, lambda ids: TokensPrompt(prompt_token_ids=[int(i) for i in ids]), make_params)
