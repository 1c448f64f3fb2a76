"""Mixed precision: float32 masters and AdamW state, compute in ``model.compute_dtype`` (docs/precision.md).

Why: an AdamW step is about lr (1e-6 in Table 3) per element, and bf16 keeps 8 bits of
mantissa, so a bf16 weight of size |w| moves only if the step exceeds |w| * 2^-9; for weights
of normal size almost every update rounds away (measured on the tiny config, 3 steps at lr
1e-6: about 1% of the elements moved in pure bf16, 99.9% in float32). So the optimizer updates
float32 masters and only the forward and backward passes run in bf16.

One learner process (``MasterWeights``): the model's parameters hold the compute copy (bf16);
a float32 master per parameter is what the optimizer holds and updates. During the backward
pass, a post-accumulate-grad hook adds each parameter's bf16 gradient into its master's float32
gradient and frees it, so gradients sum over micro-batches in float32 (as FSDP2 does with
``reduce_dtype=float32``). After each optimizer step, ``push`` casts the masters into the
compute copy in place; in the learner that copy lives in the weight-broadcast buckets, so the
workers receive exactly the weights the learner computes with, in bf16 (half of float32's bytes).

Several learner ranks (``fsdp_policy``): the FSDP2-sharded parameters are the float32 masters,
and ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=float32)`` all-gathers them in bf16
for compute and reduce-scatters gradients in float32.

With ``compute_dtype: float32`` the parameters are the masters and nothing is copied.
"""

from __future__ import annotations

import torch


def fsdp_policy(dtype: torch.dtype):
    """FSDP2's mixed-precision policy for ``dtype`` compute over float32 sharded masters."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if dtype == torch.float32:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


class MasterWeights:
    """Float32 masters of a float32-loaded ``model`` whose parameters become ``dtype`` copies.

    ``sharded``: the model is FSDP2-sharded with ``fsdp_policy``; its parameters are the masters.
    """

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype, sharded: bool = False):
        params = dict(model.named_parameters())
        assert all(p.dtype == torch.float32 for p in params.values()), "masters are loaded in float32"
        self.dtype = dtype
        self._pairs: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        if dtype == torch.float32 or sharded:
            self.named = params
            return
        self.named = {}
        for name, p in params.items():
            master = p.detach().clone().requires_grad_(p.requires_grad)
            self.named[name] = master
            self._pairs.append((p, master))
            p.data = p.data.to(dtype)
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(self._accumulate_into(master))

    @staticmethod
    def _accumulate_into(master: torch.Tensor):
        def hook(param: torch.Tensor) -> None:
            if master.grad is None:
                master.grad = param.grad.to(torch.float32)
            else:
                master.grad.add_(param.grad)
            param.grad = None

        return hook

    def parameters(self) -> list[torch.Tensor]:
        """What the optimizer updates (the float32 masters that need a gradient)."""
        return [t for t in self.named.values() if t.requires_grad]

    @torch.no_grad()
    def push(self) -> None:
        """After an optimizer step: cast the masters into the compute copy, in place."""
        for param, master in self._pairs:
            param.data.copy_(master)
