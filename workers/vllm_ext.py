"""vLLM worker extension (``worker_extension_cls``): a weight receiver in every vLLM worker.

vLLM mixes this class into its Worker (the GPU worker of 0.33.0, the CPU worker of the CPU build
0.32.0; ``vllm/v1/worker/worker_base.py``); method names must not clash with the Worker's own
(``update_weights``, ``reload_weights``, ...), hence the ``dynamo_`` prefix. Each
tensor-parallel rank joins the weight-sync group as its own member (``<name>/tp<rank>``),
stages the full weights on its device, and at the engine's safe point hands them to the
Worker's ``reload_weights`` (vLLM's layerwise reload), which loads them into its own (sharded,
fused) parameters and redoes the processing that follows loading (kernel layouts); tied
weights are re-tied and processed again for every module that uses them (``retie``).
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
        model = self.model_runner.get_model()
        if not hasattr(self, "_dynamo_ties"):
            self._dynamo_ties = tied_modules(model)  # before any reload: the ties as loaded
        self.reload_weights(weights_iterator=tensors.items(), is_checkpoint_format=True)
        retie(model, self._dynamo_ties)
        return version


def tied_modules(model) -> list[tuple[str, str]]:
    """(owner, follower) module names whose ``weight`` is one Parameter (tied embeddings:
    ``lm_head`` follows ``model.embed_tokens``), the owner being the first in module order."""
    owners: dict[int, str] = {}
    ties = []
    for name, module in model.named_modules():
        weight = module._parameters.get("weight")  # its own, not a submodule's
        if weight is None:
            continue
        if id(weight) in owners:
            ties.append((owners[id(weight)], name))
        else:
            owners[id(weight)] = name
    return ties


def retie(model, ties: list[tuple[str, str]]) -> None:
    """After a reload, point each follower at its owner's new weight and redo its processing.
    vLLM's layerwise reload processes a tied weight for its owner only: on the CPU the
    follower (``lm_head``) kept its packed copy of the old weights and sampled from them (seen
    with vLLM's CPU build 0.32.0; ``tests/test_vllm_real.py`` checks every token's log-prob)."""
    for owner, follower in ties:
        src, dst = model.get_submodule(owner), model.get_submodule(follower)
        dst.weight = src.weight
        method = getattr(dst, "quant_method", None)
        if method is not None:
            method.process_weights_after_loading(dst)
