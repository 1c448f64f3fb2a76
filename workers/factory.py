"""Builds what a worker process runs: engine, tokenizer, scorer, weight receiver."""

from __future__ import annotations

from dataclasses import dataclass, field

from dynamo_async.config.schema import RunConfig
from dynamo_async.protocol import Welcome


@dataclass
class WorkerParts:
    engine: object
    tokenizer: object
    scorer: object
    receivers: list = field(default_factory=list)
    receiver_ids: tuple[str, ...] = ()

    def wait_for_weights(self, version: int, timeout_s: float) -> None:
        """A late joiner first loads the learner's current weights (``version`` > 0)."""
        if hasattr(self.engine, "swap_now"):
            from workers.vllm_engine import wait_for_version

            wait_for_version(self.engine, version, timeout_s)
            return
        staged = self.receivers[0].wait_for_version(version, timeout_s)
        if staged is None:
            raise RuntimeError(
                f"no weights of version {version} arrived from the learner within {timeout_s:.0f} s; "
                "check that the learner can reach this worker's weight-sync connection"
            )
        self.engine.apply_weights(*staged)

    def close(self) -> None:
        for r in self.receivers:
            r.stop()
        for r in self.receivers:
            r.join(timeout=5)
        self.scorer.close()
        self.engine.close()


def build_worker_parts(cfg: RunConfig, worker_id: str, welcome: Welcome, device: str) -> WorkerParts:
    """The ``hf`` or ``vllm`` engine of ``cfg.rollout.engine`` with its receiver(s) and scorer."""
    from dynamo_async.rewards import MathVerifyScorer

    if cfg.rollout.engine == "vllm":
        from workers.vllm_engine import build_vllm_parts

        return build_vllm_parts(cfg, worker_id, welcome, device, MathVerifyScorer.from_config(cfg.rewards))
    return _build_hf_parts(cfg, worker_id, welcome, device, MathVerifyScorer.from_config(cfg.rewards))


def _build_hf_parts(cfg: RunConfig, worker_id: str, welcome: Welcome, device: str, scorer) -> WorkerParts:
    from dynamo_async.models import load_model, load_tokenizer
    from workers.hf_engine import HFEngine
    from workers.receiver import WeightReceiver

    tokenizer = load_tokenizer(cfg.model.name)
    model = load_model(cfg.model.name, cfg.model.compute_dtype, device)
    receivers = []
    source = None
    if welcome.sync_port:
        backend = "nccl" if device.startswith("cuda") else "gloo"
        receiver = WeightReceiver(worker_id, welcome.sync_host, welcome.sync_port, backend, device=device)
        receiver.start()
        receivers.append(receiver)
        source = receiver.take_staged
    engine = HFEngine(model, tokenizer, cfg, device, weight_source=source)
    return WorkerParts(engine, tokenizer, scorer, receivers, (worker_id,) if receivers else ())
