"""Entropy bonus (Mnih et al. 2016; verl ``entropy_coeff``; legacy default 0.001).

    loss = L_pg - c_H * agg(H_t)

``H_t`` must carry its gradient (``token_stats(..., entropy_grad=True)``) and is aggregated
with the same mode as the policy loss. For ``z = logits / T`` that gradient is exact,

    dH_t / dz_j = -pi_j (log pi_j + H_t),

and ``algo/logprobs.py`` computes it chunk by chunk, recomputing the softmax in the backward
pass, so the baseline keeps no fp32 ``[tokens, vocab]`` tensor for backward (as plain GRPO).
"""

from __future__ import annotations

import torch

from dynamo_async.algo.aggregation import aggregate


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor, coef: float, mode: str, **totals) -> torch.Tensor:
    """``-c_H * agg(H)``: add it to the policy loss."""
    return -coef * aggregate(entropy, mask, mode, **totals)
