"""First-order entropy change a GRPO update causes at each token (DynaMO Appendix A).

Theorem 1: for a softmax policy, with ``a`` the sampled token, ``Lambda(b) = log pi(b) + H``
and ``xi_t = 1[token not clipped] * r_t * A_t`` (Eq. 12)::

    dH_t = -xi_t * ( pi(a) Lambda(a) - sum_b pi(b)^2 Lambda(b) )           ('exact')

The step size is a constant and cancels in the normalisation of Eq. 4, so it is dropped.
The authors' public code replaces the vocabulary sum by the mean of ``pi(a)Lambda(a)`` over
the sequence's valid tokens ('sequence_centered'). A token is "not clipped" when the ratio
clip leaves its gradient alive: ``A > 0 and r <= 1+eps_high`` or ``A < 0 and r >= 1-eps_low``
(and ``r <= c`` under a dual clip).
Returns ``Xi_t = |dH_t|`` (detached, 0 on padding).
"""

from __future__ import annotations

import torch


@torch.no_grad()
def unclipped(
    ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float, dual_clip_c: float | None = None
) -> torch.Tensor:
    """1 where the clipped objective still passes the gradient of token t (Eq. 12's indicator).

    With a dual clip, a token with ``A < 0`` and ``r > c`` has a constant loss ``-c A``: clipped.
    """
    pos = (advantages > 0) & (ratio <= 1.0 + eps_high)
    neg = (advantages < 0) & (ratio >= 1.0 - eps_low)
    if dual_clip_c is not None:
        neg = neg & (ratio <= dual_clip_c)
    return (pos | neg).float()


@torch.no_grad()
def entropy_change(
    logp: torch.Tensor,
    entropy: torch.Tensor,
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float,
    eps_high: float,
    mode: str = "exact",
    vocab_sum: torch.Tensor | None = None,
    dual_clip_c: float | None = None,
) -> torch.Tensor:
    """``Xi_t = |dH_t|`` for ``[B, T]`` tensors (``vocab_sum`` needed in 'exact' mode)."""
    m = mask.float()
    logp = logp.detach().float()
    xi = unclipped(ratio, advantages, eps_low, eps_high, dual_clip_c) * ratio.detach().float() * advantages.float()
    own = logp.exp() * (logp + entropy.float())
    if mode == "exact":
        if vocab_sum is None:
            raise ValueError(
                "entropy_change mode 'exact': got vocab_sum=None, expected the "
                "vocabulary sum from token_stats(..., vocab_sum=True)"
            )
        centre = vocab_sum.float()
    elif mode == "sequence_centered":
        count = m.sum(-1, keepdim=True).clamp(min=1)
        centre = (own * m).sum(-1, keepdim=True) / count
    else:
        raise ValueError(f"entropy_change mode: got {mode!r}, expected 'exact' or 'sequence_centered'")
    return (xi * (own - centre)).abs() * m
