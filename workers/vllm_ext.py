"""vLLM worker extension (``worker_extension_cls``): a weight receiver in every vLLM worker.

vLLM 0.33.0 mixes this class into its GPU Worker (``vllm/v1/worker/worker_base.py``); method
names must not clash with the Worker's own (``update_weights``, ``reload_weights``, ...), hence
the ``dynamo_`` prefix. Each tensor-parallel rank joins the weight-sync group as its own
member (``<worker_id>/tp<rank>``), stages the full weights on its GPU, and at the engine's
safe point hands them to ``model.load_weights``, which shards them for its rank.
"""

from __future__ import annotations

from dynamo_async.weights.group import sync_backend
from workers.receiver import WeightReceiver


class DynamoWorkerExtension:
    def dynamo_start_receiver(self, host: str, port: int, worker_id: str, token: str, timeout_s: float) -> str:
        """Join the weight sync at ``host:port`` with the Welcome's ``token``; a receiver of an
        earlier learner start (it restarted on a new rendezvous) is stopped first."""
        old = getattr(self, "_dynamo_receiver", None)
        if old is not None:
            old.stop()
            old.join(timeout=5)
        member = f"{worker_id}/tp{self.rank}"
        self._dynamo_receiver = WeightReceiver(
            member,
            host,
            port,
            backend=sync_backend(str(self.device)),
            timeout_s=timeout_s,
            device=str(self.device),
            token=token,
        )
        self._dynamo_receiver.start()
        return member

    def dynamo_staged_version(self) -> int:
        return self._dynamo_receiver.staged_version()

    def dynamo_apply_staged(self) -> int:
        staged = self._dynamo_receiver.take_staged()
        assert staged is not None, "dynamo_apply_staged called with nothing staged"
        version, tensors = staged
        self.model_runner.get_model().load_weights(weights=tensors.items())
        return version
