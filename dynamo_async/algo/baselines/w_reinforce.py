"""W-REINFORCE (Zhu et al. 2025, arXiv 2506.01347, "The surprising effectiveness of
negative reinforcement in LLM reasoning"; official ``compute_psr_nsr_outcome_advantage``).

    A_i = lambda   if response i is correct,      A_i = -1   otherwise

No group baseline and no normalisation; ``lambda = 0.1`` (the authors' recommendation).
"""

from __future__ import annotations

import torch


def w_reinforce_advantages(acc, positive_weight: float = 0.1) -> torch.Tensor:
    """One advantage per response from binary correctness ``acc`` in {0, 1}."""
    acc = torch.as_tensor(acc).reshape(-1)
    return torch.where(acc > 0, torch.full(acc.shape, float(positive_weight)), torch.full(acc.shape, -1.0))
