"""Builds what a worker process runs: the engine of ``rollout.engine`` with its tokenizer,
scorer and weight receivers. Each engine module registers its builder (``workers/parts.py``)."""

from __future__ import annotations

from dynamo_async.config.schema import RunConfig
from dynamo_async.protocol import Welcome
from workers import hf_engine, vllm_start  # noqa: F401 - importing them registers the engines
from workers.parts import ENGINES, WorkerParts


def build_worker_parts(cfg: RunConfig, worker_id: str, welcome: Welcome, device: str) -> WorkerParts:
    """The engine named by ``cfg.rollout.engine`` with its receiver(s) and scorer."""
    from dynamo_async.rewards import MathVerifyScorer

    build = ENGINES[cfg.rollout.engine]  # the config admits only registered names (a test checks)
    return build(cfg, worker_id, welcome, device, MathVerifyScorer.for_run(cfg))
