"""AdamW with linear warm-up and gradient-norm clipping (Table 3: lr 1e-6, 10 warm-up steps,
weight decay 0.1, clip 1.0). The schedule counts learner steps, as verl's does."""

from __future__ import annotations

import torch

from dynamo_async.config.schema import OptimConfig


def make_optimizer(
    params: list[torch.Tensor], cfg: OptimConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``params`` (the float32 masters) and its warm-up schedule."""
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    warmup = cfg.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
    return opt, sched


def clip_and_step(params: list[torch.Tensor], opt: torch.optim.Optimizer, max_norm: float) -> float:
    """Clip the gradient norm of ``params``, step, zero the gradients; returns the norm before clipping.

    A parameter without a gradient (every sample of the mini-batch left out as zero-advantage)
    steps with a zero gradient, as after backpropagating a zero loss: AdamW's moments and weight
    decay still move it, exactly as they would have."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(norm)
