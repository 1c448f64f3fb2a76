"""What a worker process runs (``WorkerParts``), and the registry of engines by name.

An engine module registers a builder under its ``rollout.engine`` name::

    @register_engine("hf")
    def build_hf_parts(cfg, worker_id, welcome, device, scorer) -> WorkerParts: ...

``workers/factory.py`` imports the engine modules (``workers/vllm_start.py`` for vLLM, which
is itself imported only when its builder runs) and builds the parts for the configured name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from workers.engine import Engine

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from dynamo_async.config.schema import RunConfig
    from dynamo_async.protocol import Welcome
    from dynamo_async.rewards import MathVerifyScorer
    from workers.receiver import WeightReceiver


@dataclass
class WorkerParts:
    """An engine with its tokenizer, scorer and weight receivers (threads in this process; the
    vLLM engine's live in its own worker processes and only their ids are here)."""

    engine: Engine
    tokenizer: PreTrainedTokenizerBase
    scorer: MathVerifyScorer
    receivers: list[WeightReceiver] = field(default_factory=list)
    receiver_ids: tuple[str, ...] = ()
    # Joins the weight sync of a restarted learner's Welcome; returns the new receiver ids.
    restart_receivers: Callable[[Welcome], tuple[str, ...]] | None = None
    # Starts a new engine after the last one failed and joins the Welcome's weight sync under new
    # receiver names; returns (engine, receiver ids). None: this engine is not restarted.
    restart_engine: Callable[[Welcome], tuple[Engine, tuple[str, ...]]] | None = None

    def wait_for_weights(self, version: int, timeout_s: float) -> None:
        """A late joiner first loads the learner's current weights (``version`` > 0)."""
        self.engine.wait_for_weights(version, timeout_s)

    def rejoin(self, welcome: Welcome) -> None:
        """After the learner restarted: receivers join its new weight-sync rendezvous, and the
        engine forgets its version (its weights may be ahead of the resumed learner's), so that
        ``wait_for_weights`` loads the learner's current weights whatever their version."""
        assert self.restart_receivers is not None, "this engine's builder gave no way to rejoin"
        self.receiver_ids = self.restart_receivers(welcome)
        self.engine.policy_version = -1

    def close(self) -> None:
        for r in self.receivers:
            r.stop()
        for r in self.receivers:
            r.join(timeout=5)
        self.scorer.close()
        self.engine.close()


Builder = Callable[["RunConfig", str, "Welcome", str, "MathVerifyScorer"], WorkerParts]
ENGINES: dict[str, Builder] = {}


def register_engine(name: str) -> Callable[[Builder], Builder]:
    """Register ``builder`` as the engine ``name`` (a ``rollout.engine`` value)."""

    def register(builder: Builder) -> Builder:
        assert name not in ENGINES, f"engine {name!r} registered twice"
        ENGINES[name] = builder
        return builder

    return register
