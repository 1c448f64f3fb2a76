"""The rollout engine interface: what a worker needs from transformers or vLLM.

An engine samples one response per request from token ids, with the temperature and top-p
of the run, and reports for every sampled token its log-probability under the
temperature-scaled distribution (the behaviour policy of the loss), and the policy version
that produced it. Staged weights from the weight receiver are applied at the engine's next
safe point (``WeightSource`` for the ``hf`` engine; inside vLLM's processes for ``vllm``), which
bumps ``policy_version``. An engine that can no longer generate raises ``EngineFailure``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

# Returns newly staged (version, {name: tensor}) once, or None.
WeightSource = Callable[[], "tuple[int, dict[str, torch.Tensor]] | None"]


@dataclass(frozen=True)
class GenRequest:
    """One sample to generate: prompt token ids and its sampling seed."""

    prompt_ids: np.ndarray
    seed: int


@dataclass(frozen=True)
class GenResult:
    """One generated response; arrays have one entry per generated token."""

    token_ids: np.ndarray
    logprobs: np.ndarray
    versions: np.ndarray
    finish_reason: str
    entropy: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.token_ids)
        assert len(self.logprobs) == n and len(self.versions) == n, "result arrays differ in length"


def wait_for_version(
    engine: Engine, try_swap: Callable[[], None], version: int, timeout_s: float, poll_s: float
) -> None:
    """``Engine.wait_for_weights`` for an engine whose ``try_swap`` applies staged weights if any."""
    deadline = time.monotonic() + timeout_s
    while True:
        try_swap()
        if engine.policy_version >= version:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"no weights of version {version} arrived from the learner within {timeout_s:.0f} s; "
                "check that the learner can reach this worker's weight-sync connection"
            )
        time.sleep(poll_s)


class EngineFailure(RuntimeError):
    """The engine can no longer generate (its process died or hung); the worker hands its
    leases back and restarts it (``workers/worker.py``)."""


class Engine(Protocol):
    policy_version: int

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """Sample one response per request (order kept)."""

    def wait_for_weights(self, version: int, timeout_s: float) -> None:
        """Block until serving weights of at least ``version`` (a worker that joins a running
        learner first loads its current weights); RuntimeError after ``timeout_s``."""

    def close(self) -> None:
        """Release the engine's resources."""
