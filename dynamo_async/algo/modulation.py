"""DynaMO's gradient-aware advantage modulation factors (Sec. 2.2, Eqs. 3 and 4).

Gradient compensation (Eq. 3), for tokens with a positive advantage::

    beta_comp = 1 + alpha * (H_max - H_t) / (H_max - H_min)      (A > 0; else 1)

with ``H_max``/``H_min`` over the valid tokens of the mini-batch (``modulation.normaliser_scope:
mini_batch``, the default: taken in the proximal pass, which covers every sample, so neither
``optim.micro_batch_tokens`` nor leaving zero-advantage samples out changes them) or of the
micro-batch (``micro_batch``, as the authors' code); equal extremes give 1.

Update-magnitude stabilization (Eq. 4), with ``Xi_t`` the entropy-change magnitude
(``entropy_change.py``)::

    x_t       = Xi_t / max_j Xi_j            (0 when the max is 0; max over the same scope,
                                              the mini-batch's from the proximal pass's Xi)
    beta_stab = lambda_min + (1 - lambda_min) * sigmoid(-gamma (x_t - tau))

Both factors are detached and equal 1 on padding. ``A_final = A * beta_comp * beta_stab``.
Paper: Fang et al., DynaMO (arXiv 2602.19208).
"""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def compensation(
    entropy: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    alpha: float,
    h_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """beta_comp per token (Eq. 3); padding and non-positive advantages get 1. ``h_range``:
    (H_min, H_max) of the mini-batch; None takes them over this micro-batch's valid tokens."""
    valid = mask.bool()
    ones = torch.ones_like(entropy, dtype=torch.float32)
    if not valid.any():
        return ones
    h = entropy.float()
    h_min, h_max = (h[valid].min(), h[valid].max()) if h_range is None else h_range
    span = h_max - h_min
    if span <= 0:
        return ones
    boost = 1.0 + alpha * (h_max - h) / span
    return torch.where(valid & (advantages > 0), boost, ones)


@torch.no_grad()
def stabilization(
    xi: torch.Tensor,
    mask: torch.Tensor,
    lambda_min: float,
    gamma: float,
    tau: float,
    xi_max: float | None = None,
) -> torch.Tensor:
    """beta_stab per token (Eq. 4); padding gets 1. ``xi_max``: max Xi of the mini-batch; None
    takes it over this micro-batch's valid tokens."""
    valid = mask.bool()
    ones = torch.ones_like(xi, dtype=torch.float32)
    if not valid.any():
        return ones
    xi = xi.float()
    top = xi[valid].max() if xi_max is None else xi_max
    x = xi / top if top > 0 else torch.zeros_like(xi)
    beta = lambda_min + (1.0 - lambda_min) * torch.sigmoid(-gamma * (x - tau))
    return torch.where(valid, beta, ones)


BETA_BINS = 20


def beta_histogram(values: torch.Tensor, low: float, high: float) -> np.ndarray:
    """Token counts of ``values`` in ``BETA_BINS`` equal bins over [low, high] (summed over
    micro-batches by the trainer; ``dynamo-async plot`` draws their distribution)."""
    if high <= low:
        return np.zeros(BETA_BINS, dtype=np.int64)
    counts = torch.histc(values.detach().float().cpu(), bins=BETA_BINS, min=low, max=high)
    return counts.to(torch.int64).numpy()
