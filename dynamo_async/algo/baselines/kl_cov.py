"""KL-Cov (Cui et al. 2025, arXiv 2505.22617; verl ``compute_policy_loss_kl_cov``).

    S   = the top k = max(1, floor(kappa * N_valid)) valid tokens by cov_t (covariance.py)
    l_t = -A_t r_t + beta * |logp_t - logp_old_t|     if t in S
    l_t = -A_t r_t                                    otherwise       (no ratio clipping)

Defaults: ``kappa = 2e-3`` (a fraction; the original repo's ``k_percent`` is a percentage),
``beta = 1``.
"""

from __future__ import annotations

import torch

from dynamo_async.algo.baselines.covariance import token_covariance
from dynamo_async.algo.policy_loss import ratio


def kl_cov_token_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    top_ratio: float,
    coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss and the boolean mask of penalised tokens."""
    loss = -advantages * ratio(logp, logp_old)
    selected = top_covariance_mask(advantages, logp, mask, top_ratio)
    penalty = coef * (logp - logp_old).abs()
    return torch.where(selected, loss + penalty, loss), selected


@torch.no_grad()
def top_covariance_mask(
    advantages: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor, top_ratio: float
) -> torch.Tensor:
    """Boolean mask of the ``max(1, floor(top_ratio * N_valid))`` highest-covariance valid tokens."""
    valid = mask.bool().reshape(-1)
    out = torch.zeros_like(valid)
    n_valid = int(valid.sum())
    if n_valid == 0:
        return out.reshape(mask.shape)
    k = max(1, int(top_ratio * n_valid))
    cov = token_covariance(advantages, logp, mask).reshape(-1)
    cov = torch.where(valid, cov, torch.full_like(cov, float("-inf")))
    out[torch.topk(cov, k).indices] = True
    return out.reshape(mask.shape)
