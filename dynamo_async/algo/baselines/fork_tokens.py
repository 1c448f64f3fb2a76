"""Fork tokens: train only on high-entropy tokens (Wang et al. 2025, arXiv 2506.01939,
"Beyond the 80/20 rule"; official code ``get_global_entropy_top_mask``).

Over the valid tokens of the micro-batch take the top ``k = ceil(rho * N_valid)`` by entropy;
the policy loss is aggregated over those tokens only (token-mean over the selection).
Default ``rho = 0.2``. Ties at the threshold go to the earlier token (``topk`` order).
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def high_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, top_ratio: float) -> torch.Tensor:
    """Mask of the ``ceil(top_ratio * N_valid)`` highest-entropy valid tokens."""
    if not 0.0 < top_ratio <= 1.0:
        raise ValueError(f"fork tokens: got top_ratio={top_ratio}, expected 0 < top_ratio <= 1")
    valid = mask.bool().reshape(-1)
    n_valid = int(valid.sum())
    out = torch.zeros_like(valid)
    if n_valid == 0:
        return out.reshape(mask.shape)
    k = math.ceil(top_ratio * n_valid)
    scores = torch.where(valid, entropy.reshape(-1).float(), torch.full_like(valid, float("-inf"), dtype=torch.float32))
    out[torch.topk(scores, k).indices] = True
    return out.reshape(mask.shape)
