"""Entropy advantages (Cheng et al. 2025, arXiv 2506.14758, "Reasoning with exploration:
an entropy perspective").

    psi(H_t) = min(alpha * H_t.detach(), |A_t| / kappa),      A_t' = A_t + psi(H_t)

With ``kappa > 1`` the sign of A never flips and tokens with ``A = 0`` stay at 0.
Defaults for GRPO: ``alpha = 0.4``, ``kappa = 2``.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def entropy_shaped_advantages(
    advantages: torch.Tensor, entropy: torch.Tensor, alpha: float, kappa: float
) -> torch.Tensor:
    """``A + min(alpha * H, |A| / kappa)`` per token (detached)."""
    if kappa <= 1.0:
        raise ValueError(f"entropy advantages: got kappa={kappa}, expected kappa > 1")
    bonus = torch.minimum(alpha * entropy.float(), advantages.abs() / kappa)
    return advantages + bonus
