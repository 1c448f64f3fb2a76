"""Loss aggregation over a mini-batch (verl ``agg_loss``; Dr. GRPO; DAPO token-mean).

With per-token losses ``l[i, t]`` and response mask ``m[i, t]``::

    token-mean               sum_{i,t} m l / N_tokens                               (DAPO; default)
    seq-mean-token-mean      sum_i ( sum_t m l / |o_i| ) / N_seq                    (original GRPO)
    seq-mean-token-sum-norm  sum_{i,t} m l / (N_seq * L)                           (Dr. GRPO; L = norm_length)

When a mini-batch is split into micro-batches for gradient accumulation, pass the mini-batch
totals (``total_tokens``, ``total_seqs``) so that the accumulated gradient equals the one of
the whole mini-batch. ``L`` defaults to the padded response length.
"""

from __future__ import annotations

import torch

MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def aggregate(
    loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    total_tokens: float | None = None,
    total_seqs: float | None = None,
    norm_length: float | None = None,
) -> torch.Tensor:
    """Scalar loss from ``[B, T]`` per-token losses under the named aggregation."""
    m = mask.to(loss.dtype)
    if mode == "token-mean":
        denom = total_tokens if total_tokens is not None else m.sum().clamp(min=1)
        return (loss * m).sum() / denom
    seqs = total_seqs if total_seqs is not None else max(int((m.sum(-1) > 0).sum()), 1)
    if mode == "seq-mean-token-mean":
        per_seq = (loss * m).sum(-1) / m.sum(-1).clamp(min=1)
        return per_seq.sum() / seqs
    if mode == "seq-mean-token-sum-norm":
        length = norm_length if norm_length is not None else loss.shape[-1]
        return (loss * m).sum() / (seqs * length)
    raise ValueError(f"loss aggregation: got {mode!r}, expected one of {MODES}")
