"""Where ``dynamo-async run`` puts the learner and the workers, and whether they fit on one GPU.

Placement (``place``), decided in the launcher before any process starts:

- ``--device cpu``: everything on the CPU;
- ``--device cuda`` on one visible GPU: the learner and every worker on ``cuda:0`` (shared);
- ``--device cuda`` on several: the learner on ``cuda:0``, the workers spread over the others
  (the workers process sees only those: ``CUDA_VISIBLE_DEVICES``);
- ``--device cuda:N``: the learner and every worker on GPU N (shared, as asked): both children
  see only that GPU (``CUDA_VISIBLE_DEVICES``), as ``cuda:0``, since vLLM takes the first
  visible GPUs whatever the worker's device;
- ``--device cuda`` without CUDA: one line naming ``--device cpu``.

A shared GPU changes two things. The weight sync runs over gloo, not NCCL: NCCL refuses two
ranks of one group on one device ("Duplicate GPU detected"), while gloo broadcasts CUDA
tensors through pinned host memory; the launcher says so with ``SHARED_GPU_ENV=1`` in both
children's environment (``dynamo_async.weights.group.sync_backend`` reads it). And a ``vllm``
worker may take only the share of the GPU that the learner leaves (``check_vllm_share``).

Memory of a shared GPU (bytes; P parameters, b = 2 for bf16 compute, 4 for float32; T =
``optim.micro_batch_tokens``, V the vocabulary; docs/precision.md for the masters):

    learner  >= P * (4 masters + 4 master grads + 8 AdamW m, v + b compute copy if b < 4)
                + 2 * T * V * b (the logits of one micro-batch and their gradient)
    receiver >= 2 * P * b (two staging slots of the weight receiver, outside vLLM's share)
    contexts ~= 2 * 0.5 GiB (CUDA contexts of the learner and vLLM's engine process)

vLLM's ``gpu_memory_utilization`` caps its own process (weights, activations, KV cache) at
that fraction of the GPU, so ``share * vllm_workers <= 1 - (learner + receivers + contexts) /
total``. These are lower bounds (activations of the layers are not counted): a share refused
here cannot fit; a share admitted may still need lowering if the learner runs out of memory.
"""

from __future__ import annotations

import dataclasses
import math
import os

from dynamo_async.config.schema import RunConfig
from dynamo_async.errors import UsageError

SHARED_GPU_ENV = "DYNAMO_ASYNC_SHARED_GPU"  # "1": the learner and its workers share one GPU
GIB = 1024**3
CONTEXT_BYTES = GIB // 2  # a CUDA context with PyTorch's kernels loaded, per process


@dataclasses.dataclass(frozen=True)
class Placement:
    """The learner's ``--device``, the workers' ``--device``, and what each child's environment adds."""

    learner: str
    workers: str
    shared: bool  # the learner and the workers on one GPU
    gpu: int = 0  # the learner's GPU, as this (the launcher's) process numbers them
    learner_env: dict[str, str] = dataclasses.field(default_factory=dict)
    worker_env: dict[str, str] = dataclasses.field(default_factory=dict)

    def child_env(self, extra: dict[str, str]) -> dict[str, str] | None:
        """The environment of a child: this process's, with ``extra`` and the shared-GPU flag
        (None: this process's, unchanged)."""
        if not self.shared and not extra:
            return None
        env = dict(os.environ) | extra
        if self.shared:
            env[SHARED_GPU_ENV] = "1"
        return env


def place(device: str, gpus: int, cuda_build: bool = True, visible: str | None = None) -> Placement:
    """Placement for ``--device device`` on a machine with ``gpus`` visible GPUs (``visible``:
    its ``CUDA_VISIBLE_DEVICES``, None when unset; ``cuda_build``: torch was built with CUDA)."""
    if device == "cpu":
        return Placement("cpu", "cpu", shared=False)
    if device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise UsageError(f"--device: got {device!r}, expected cpu, cuda or cuda:N")
    if gpus == 0:
        why = "this torch is a CPU-only build" if not cuda_build else "no GPU is visible to torch"
        raise UsageError(f"--device {device}: got no CUDA device ({why}), expected one; run with --device cpu")
    ids = visible.split(",")[:gpus] if visible else [str(i) for i in range(gpus)]
    if device != "cuda":
        index = int(device[5:])
        if index >= gpus:
            raise UsageError(f"--device {device}: got {gpus} visible GPU(s), expected cuda:0 .. cuda:{gpus - 1}")
        only = {"CUDA_VISIBLE_DEVICES": ids[index]}
        return Placement("cuda:0", "cuda:0", shared=True, gpu=index, learner_env=only, worker_env=only)
    if gpus == 1:
        return Placement("cuda:0", "cuda:0", shared=True)
    return Placement("cuda:0", "cuda", shared=False, worker_env={"CUDA_VISIBLE_DEVICES": ",".join(ids[1:])})


def learner_bytes(cfg: RunConfig, params: int, vocab: int) -> int:
    """Lower bound on the learner's GPU memory (module docstring): its float32 state, compute
    copy and one micro-batch's logits with their gradient."""
    b = 2 if cfg.model.compute_dtype == "bfloat16" else 4
    state = params * (4 + 4 + 8 + (b if b < 4 else 0))
    return state + 2 * cfg.optim.micro_batch_tokens * vocab * b


def receiver_bytes(cfg: RunConfig, params: int) -> int:
    """Two staging slots of one worker's weight receiver, in the compute dtype."""
    return 2 * params * (2 if cfg.model.compute_dtype == "bfloat16" else 4)


def max_vllm_share(cfg: RunConfig, params: int, vocab: int, total: int, vllm_workers: int) -> float:
    """The largest ``rollout.gpu_memory_utilization`` each of ``vllm_workers`` may have next to
    the learner on a GPU of ``total`` bytes (lower-bound needs, module docstring)."""
    need = learner_bytes(cfg, params, vocab) + vllm_workers * (receiver_bytes(cfg, params) + CONTEXT_BYTES)
    return (1.0 - (need + CONTEXT_BYTES) / total) / vllm_workers


def suggested_share(cfg: RunConfig, params: int, vocab: int, total: int, vllm_workers: int) -> float:
    """A share to set: 80% of the largest (the rest for the learner's activations), in steps of
    0.05, at most 0.5 (a 24 GB card with a 135M model then still leaves the learner half)."""
    room = 0.8 * max_vllm_share(cfg, params, vocab, total, vllm_workers)
    return min(0.5, math.floor(room * 20) / 20)


def check_vllm_share(cfg: RunConfig, params: int, vocab: int, total: int, vllm_workers: int, gpu: str) -> None:
    """Refuse a ``vllm`` rollout on the learner's GPU whose tensor parallelism or memory share
    cannot fit next to the learner (one line: got, expected, what to set)."""
    if cfg.rollout.tensor_parallel != 1:
        raise UsageError(
            f"rollout.tensor_parallel: got {cfg.rollout.tensor_parallel}, expected 1 when vLLM shares {gpu} "
            "with the learner; add rollout.tensor_parallel=1"
        )
    share = cfg.rollout.gpu_memory_utilization
    largest = max_vllm_share(cfg, params, vocab, total, vllm_workers)
    if share <= largest:
        return
    learner = learner_bytes(cfg, params, vocab) / GIB
    fix = (
        f"set rollout.gpu_memory_utilization={suggested_share(cfg, params, vocab, total, vllm_workers):.2f}"
        if largest >= 0.1
        else "use rollout.engine=hf, a smaller model or optim.micro_batch_tokens, or a second GPU"
    )
    raise UsageError(
        f"rollout.gpu_memory_utilization: got {share} for each of {vllm_workers} vLLM worker(s) on {gpu} "
        f"({total / GIB:.1f} GiB), expected at most {max(largest, 0.0):.2f}: the learner needs at least "
        f"{learner:.1f} GiB ({params / 1e9:.2f}B parameters: float32 masters, gradients and AdamW state, "
        f"the compute copy, one micro-batch's logits); {fix}"
    )


def model_size(name: str) -> tuple[int, int]:
    """Parameters and vocabulary of the causal LM ``name`` (a Hugging Face name, folder or
    builtin), counted on the meta device: only its config is read, no weights are loaded."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from dynamo_async.models.loader import is_builtin, model_source

    config = AutoConfig.from_pretrained(model_source(name), local_files_only=is_builtin(name))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters()), int(model.get_output_embeddings().weight.shape[0])
