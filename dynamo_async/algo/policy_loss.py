"""Importance-ratio-clipped policy loss with dual clip and truncated importance weights.

PPO clip (Schulman et al. 2017) with decoupled ranges (DAPO) and dual clip (Ye et al. 2020)::

    r_t  = exp(logp_theta - logp_old)               (log-ratio clamped to [-20, 20])
    l_t  = max(-A r_t, -A clip(r_t, 1 - eps_low, 1 + eps_high))
    l_t  = min(l_t, -c A)                            where A < 0   (dual clip, c > 1)
    l_t  = w_t * l_t,   w_t = min(exp(logp_old - logp_behavior), C)    (detached)

``w_t`` is AReaL's decoupled-PPO behaviour weight (Fu et al. 2025): ``logp_old`` is the
proximal policy recomputed by the learner, ``logp_behavior`` what the worker sampled with.
"""

from __future__ import annotations

import torch

LOG_RATIO_CLAMP = 20.0


def ratio(logp: torch.Tensor, logp_old: torch.Tensor) -> torch.Tensor:
    """``exp(logp - logp_old)`` with the log-ratio clamped for numerical safety."""
    return torch.exp(torch.clamp(logp - logp_old, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


@torch.no_grad()
def truncated_is_weights(logp_old: torch.Tensor, logp_behavior: torch.Tensor, cap: float) -> torch.Tensor:
    """``min(pi_old / pi_behavior, cap)`` per token (detached)."""
    return torch.clamp(ratio(logp_old, logp_behavior), max=cap)


def clip_active(r: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float) -> torch.Tensor:
    """Tokens where the ratio clip binds: ``-A clip(r, 1 - eps_low, 1 + eps_high) > -A r``."""
    return (-advantages * torch.clamp(r, 1.0 - eps_low, 1.0 + eps_high)) > (-advantages * r)


def clipped_token_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float,
    eps_high: float,
    dual_clip_c: float | None = None,
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token loss ``l_t`` and boolean masks ``clipped`` / ``dual_clipped`` for metrics."""
    r = ratio(logp, logp_old)
    unclipped_loss = -advantages * r
    clipped_loss = -advantages * torch.clamp(r, 1.0 - eps_low, 1.0 + eps_high)
    loss = torch.maximum(unclipped_loss, clipped_loss)
    dual = torch.zeros_like(loss, dtype=torch.bool)
    if dual_clip_c is not None:
        if dual_clip_c <= 1.0:
            raise ValueError(f"dual clip: got c={dual_clip_c}, expected c > 1")
        bound = -dual_clip_c * advantages
        dual = (advantages < 0) & (loss > bound)
        loss = torch.where(advantages < 0, torch.minimum(loss, bound), loss)
    if is_weights is not None:
        loss = loss * is_weights.detach()
    info = {"ratio": r.detach(), "clipped": (clipped_loss > unclipped_loss).detach(), "dual_clipped": dual}
    return loss, info
