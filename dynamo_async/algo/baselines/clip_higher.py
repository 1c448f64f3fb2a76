"""Clip-Higher (DAPO; Yu et al. 2025, arXiv 2503.14476).

Decoupled clip range ``clip(r, 1 - eps_low, 1 + eps_high)`` with ``eps_high > eps_low``
(DAPO: 0.2 / 0.28), so low-probability tokens can grow more before the clip stops them.
"""

from __future__ import annotations


def clip_range(eps_low: float, eps_high: float) -> tuple[float, float]:
    """The (eps_low, eps_high) pair Clip-Higher trains with; eps_high must exceed eps_low."""
    if eps_high <= eps_low:
        raise ValueError(
            f"clip_higher: got eps_high={eps_high} <= eps_low={eps_low}, "
            "expected eps_high > eps_low (DAPO: 0.28 vs 0.2)"
        )
    return eps_low, eps_high
