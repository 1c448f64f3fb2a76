"""The ``vllm`` engine at run time: vLLM's ``AsyncLLM`` in-process, driven from the worker loop.

Checked against vLLM's own source and run against vLLM's CPU build 0.32.0 (``tests/test_vllm_real.py``);
the GPU pin 0.33.0 has the same calls (docs/launching.md):

- requests: ``generate(TokensPrompt(prompt_token_ids=...), SamplingParams(n=1, seed=...,
  temperature, top_p, max_tokens, logprobs=0, output_kind=FINAL_ONLY, detokenize=False),
  request_id)``, an async generator; ``logprobs=0`` returns the sampled token's log-prob
  per position, and the engine runs with ``logprobs_mode="processed_logprobs"`` so that it is
  the log-prob after temperature scaling (with top_p=1.0, as in Table 3, nothing else changes);
- versions: ``CompletionOutput.weight_versions`` spans ``(version, start, end)``, labelled by
  ``update_weight_version(str(v))`` (set at start, so every span carries a number);
- weights: receivers run inside every vLLM worker process (``workers.vllm_ext``, attached with
  ``worker_extension_cls``) and stage the broadcast buckets; at a safe point the engine does
  ``pause_generation(mode="keep", clear_cache=True)`` -> ``collective_rpc("dynamo_apply_staged")``
  (each rank calls its model's ``load_weights``) -> ``update_weight_version`` ->
  ``resume_generation()``. The keep rule: a request in flight across a swap is kept; its tokens
  before the swap carry the old version, those after it the new one, and its KV cache is
  recomputed under the new weights (``clear_cache=True``), so later tokens are the new policy's.
- faults: vLLM raises ``EngineDeadError`` when its engine process dies; a hung engine is one
  that leaves the watcher's poll unanswered for ``rollout.engine_timeout_s``. Either fails
  the generation in progress with ``EngineFailure`` and every later call, until the worker
  restarts the engine (``workers/worker.py``).

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
from workers.engine import EngineFailure, GenRequest, GenResult, wait_for_version


class VLLMEngine:
    """Wraps an ``AsyncLLM``-like object; ``make_prompt``/``make_params`` build vLLM inputs;
    ``dead_errors``: the exception types that mean the engine process is gone."""

    def __init__(
        self,
        llm,
        cfg: RunConfig,
        make_prompt,
        make_params,
        poll_s: float = 0.5,
        policy_version: int = 0,
        dead_errors: tuple[type[BaseException], ...] = (),
        kill=None,
        refused_errors: tuple[type[BaseException], ...] = (),
    ):
        self.llm, self.cfg, self.make_prompt, self.make_params, self.poll_s = llm, cfg, make_prompt, make_params, poll_s
        self.policy_version = policy_version
        self.dead_errors, self._kill, self.refused_errors = dead_errors, kill, refused_errors
        self.swaps = 0
        self.swap_errors = 0
        self.last_swap_error: str | None = None
        self.failure: str | None = None  # why the engine is unusable (dead or hung); None while healthy
        self._ids = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine-loop", daemon=True)
        self._thread.start()
        self._swap_lock: asyncio.Lock | None = None
        self._failed: asyncio.Event | None = None
        self._watcher = asyncio.run_coroutine_threadsafe(self._watch(), self._loop)

    def run(self, coro):
        """Run ``coro`` on the engine's loop and wait for its result (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """Sample one response per request; ``EngineFailure`` if the engine dies or hangs."""
        if self.failure is not None:
            raise EngineFailure(self.failure)
        return self.run(self._generate_all(requests))

    def swap_now(self) -> int | None:
        """Apply staged weights if any (the watcher does this on its own); returns the new version."""
        return self.run(self._swap_if_staged())

    def wait_for_weights(self, version: int, timeout_s: float, step_s: float = 0.5) -> None:
        """A late joiner first loads the learner's current weights (version > 0)."""
        wait_for_version(self, self.swap_now, version, timeout_s, step_s)

    def close(self) -> None:
        """Stop the watcher and vLLM; a failed engine's processes are killed first (a hung one
        would not answer vLLM's own shutdown)."""
        self._watcher.cancel()
        if self.failure is not None and self._kill is not None:
            self._kill()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self.llm.shutdown()

    async def _generate_all(self, requests: list[GenRequest]) -> list[GenResult]:
        failed = self._failure_event()
        work = asyncio.gather(*(self._one(r) for r in requests))
        watch = asyncio.ensure_future(failed.wait())
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if not work.done():
            work.cancel()
            raise EngineFailure(self.failure or "the vLLM engine failed")
        try:
            return list(work.result())
        except self.dead_errors as err:
            self._died(err)
            raise EngineFailure(self.failure) from err
        except self.refused_errors as err:  # the request itself, e.g. a prompt longer than the model's context
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UsageError(f"vllm refused a request: {first}; shorten the prompts (data.max_prompt_tokens)") from err

    async def _one(self, req: GenRequest) -> GenResult:
        started = self.policy_version
        final = None
        params = self.make_params(self.cfg, req.seed)
        async for out in self.llm.generate(self.make_prompt(req.prompt_ids), params, f"r{next(self._ids)}"):
            final = out
        assert final is not None and final.outputs, "vLLM returned no output"
        return to_result(final.outputs[0], started)

    def _failure_event(self) -> asyncio.Event:
        if self._failed is None:
            self._failed = asyncio.Event()
        return self._failed

    def _mark_failed(self, why: str) -> None:
        if self.failure is None:
            self.failure = why
        self._failure_event().set()

    def _died(self, err: BaseException) -> None:
        self._mark_failed(f"the vLLM engine process died ({type(err).__name__})")

    async def _watch(self) -> None:
        """Poll for staged weights, which also checks that the engine answers. An engine that
        leaves a poll unanswered for ``rollout.engine_timeout_s``, or whose process is gone, is
        marked failed. A failed swap is logged and counted, and the next poll tries again: the
        watcher must outlive one bad broadcast, or the worker would keep serving old weights
        until the staleness gate starves it."""
        timeout_s = self.cfg.rollout.engine_timeout_s
        while self.failure is None:
            await asyncio.sleep(self.poll_s)
            try:  # the poll must answer in time; a swap it starts (a weight reload) may take longer
                await self._swap_if_staged(poll_timeout_s=timeout_s)
            except TimeoutError:
                self._mark_failed(f"the vLLM engine left a request unanswered for {timeout_s:.0f} s (hung)")
            except self.dead_errors as err:
                self._died(err)
            except Exception as err:  # supervisory loop: report, keep watching
                self.swap_errors += 1
                self.last_swap_error = repr(err)
                print(f"vllm engine: weight swap failed ({err!r}); retrying at the next poll", flush=True)

    async def _swap_if_staged(self, poll_timeout_s: float | None = None) -> int | None:
        if self._swap_lock is None:
            self._swap_lock = asyncio.Lock()
        async with self._swap_lock:
            staged = await asyncio.wait_for(self.llm.collective_rpc("dynamo_staged_version"), poll_timeout_s)
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
