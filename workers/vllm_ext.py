"""vLLM worker extension (``worker_extension_cls``): a weight receiver in every vLLM worker.

vLLM mixes this class into its Worker (the GPU worker of 0.33.0, the CPU worker of the CPU build
0.32.0; ``vllm/v1/worker/worker_base.py``); method names must not clash with the Worker's own
(``update_weights``, ``reload_weights``, ...), hence the ``dynamo_`` prefix. Each
tensor-parallel rank joins the weight-sync group as its own member (``<name>/tp<rank>``),
stages the full weights on its device, and at the engine's safe point hands them to the
Worker's ``reload_weights`` (vLLM's layerwise reload), which loads them into its own (sharded,
fused) parameters and redoes the processing that follows loading (kernel layouts).
"""

from __future__ import annotations

from dynamo_async.weights.group import sync_backend
from workers.receiver import WeightReceiver


class DynamoWorkerExtension:
    def dynamo_start_receiver(self, host: str, port: int, name: str, token: str, timeout_s: float) -> str:
        """Join the weight sync at ``host:port`` with the Welcome's ``token``; a receiver of an
        earlier learner start (it restarted on a new rendezvous) is stopped first."""
        old = getattr(self, "_dynamo_receiver", None)
        if old is not None:
            old.stop()
            old.join(timeout=5)
        member = f"{name}/tp{self.rank}"
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
        """The version staged and not yet applied (-1: none, or no receiver started)."""
        receiver = getattr(self, "_dynamo_receiver", None)
        return -1 if receiver is None else receiver.staged_version()

    def dynamo_apply_staged(self) -> int:
        staged = self._dynamo_receiver.take_staged()
        assert staged is not None, "dynamo_apply_staged called with nothing staged"
        version, tensors = staged
        # reload_weights, not model.load_weights: after loading, vLLM repacks some weights into
        # kernel layouts (on the CPU, linear weights become packed oneDNN copies and the
        # parameters are emptied), and only the layerwise reload restores and repacks them.
        self.reload_weights(weights_iterator=tensors.items(), is_checkpoint_format=True)
        return version
