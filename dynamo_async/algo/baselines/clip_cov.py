"""Clip-Cov (Cui et al. 2025, arXiv 2505.22617, "The entropy mechanism of RL for reasoning
language models"; verl ``compute_policy_loss_clip_cov``).

    cov_t = (A_t - mean A)(logp_t - mean logp)     over valid tokens (covariance.py)
    candidates: valid, not already clipped by PPO, and lb < cov_t < ub
    pick n = max(1, floor(r * N_valid)) candidates uniformly at random -> gradient zeroed
    l_t = max(-A r_t, -A clip(r_t, 1 - eps, 1 + eps)) * keep_t          (no dual clip)

Defaults: ``r = 2e-4``, ``lb = 1``, ``ub = 5``, clip range ``eps = 1`` on both sides (the
paper's scripts), so Clip-Cov is the trust region.
"""

from __future__ import annotations

import torch

from dynamo_async.algo.baselines.covariance import token_covariance


@torch.no_grad()
def clip_cov_keep(
    advantages: torch.Tensor,
    logp: torch.Tensor,
    mask: torch.Tensor,
    already_clipped: torch.Tensor,
    ratio: float,
    lb: float,
    ub: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Float mask: 0 on the randomly chosen high-covariance tokens, 1 elsewhere."""
    valid = mask.bool()
    cov = token_covariance(advantages, logp, mask)
    candidates = valid & ~already_clipped.bool() & (cov > lb) & (cov < ub)
    keep = torch.ones_like(cov)
    n_clip = max(1, int(ratio * int(valid.sum())))
    idx = torch.nonzero(candidates.reshape(-1)).squeeze(-1)
    if idx.numel() == 0:
        return keep
    chosen = idx[torch.randperm(idx.numel(), generator=generator)[:n_clip]]
    keep.view(-1)[chosen] = 0.0
    return keep
