"""Centred token covariance shared by Clip-Cov and KL-Cov (Cui et al. 2025, arXiv 2505.22617).

cov_t = (A_t - mean(A)) * (logp_t - mean(logp))       means over the valid tokens
"""

from __future__ import annotations

import torch


@torch.no_grad()
def token_covariance(advantages: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``cov_t`` per token (detached); padding gets 0."""
    valid = mask.bool()
    if not valid.any():
        return torch.zeros_like(logp, dtype=torch.float32)
    a = advantages.float()
    lp = logp.detach().float()
    cov = (a - a[valid].mean()) * (lp - lp[valid].mean())
    return torch.where(valid, cov, torch.zeros_like(cov))
