"""AdamW with linear warm-up and gradient-norm clipping (Table 3: lr 1e-6, 10 warm-up steps,
weight decay 0.1, clip 1.0). The schedule counts learner steps, as verl's does."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from dynamo_async.config.schema import OptimConfig


def make_optimizer(
    params: list[torch.Tensor], cfg: OptimConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``params`` (the float32 masters) and its warm-up schedule."""
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    warmup = cfg.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
    return opt, sched


def clip_and_step(
    params: list[torch.Tensor], opt: torch.optim.Optimizer, max_norm: float, loss_finite: bool = True
) -> tuple[float, bool]:
    """Clip the gradient norm of ``params``, step, zero the gradients; returns the norm before
    clipping and whether the optimizer stepped.

    A parameter without a gradient (every sample of the mini-batch left out as zero-advantage)
    steps with a zero gradient, as after backpropagating a zero loss: AdamW's moments and weight
    decay still move it, exactly as they would have.

    The last guard against a poisoned batch (docs/design.md section 8): when the norm is not
    finite, or ``loss_finite`` is False, the gradients are dropped and nothing steps, so the
    masters and AdamW's moments and step count stay as they were. Under FSDP the norm is the
    global one, so with ``loss_finite`` agreed on (``finite_on_every_rank``) every rank decides alike.
    """
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    stepped = loss_finite and math.isfinite(norm)
    if stepped:
        opt.step()
    opt.zero_grad(set_to_none=True)
    return norm, stepped


def finite_on_every_rank(value: float, sharded: bool) -> bool:
    """Whether ``value`` is finite on this rank and, when ``sharded``, on every learner rank (a
    collective: every rank must call it)."""
    finite = math.isfinite(value)
    if not sharded:
        return finite
    flag = torch.tensor([1.0 if finite else 0.0], dtype=torch.float64)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() == 1.0)
