"""Variance-driven dynamic rollout allocation (DynaMO Sec. 2.1, Appendices C and D).

Bernoulli variance proxy (Eq. 2 / Eq. 22), with k_i correct answers of G_i attempts::

    P_i = k_i (G_i - k_i) / (G_i (G_i - 1)),        E[P_i] = p_i (1 - p_i)

Water-filling (Appendix D): every prompt starts at ``g_min``; the residual
``budget - N * g_min`` is shared in proportion to the priority, no prompt above ``g_max``,
overflow redistributed to the rest. The continuous solution is ``x_i = min(cap, lam * p_i)``
with ``cap = g_max - g_min`` and ``lam`` found by one sort (O(N log N)); integer counts come
from largest-remainder rounding, so the total is exactly ``min(budget, N * g_max)``. Once
every prompt with a positive priority is at ``g_max``, the rest is spread evenly over the
others, round robin (as the authors' public code does).

Paper: Fang et al., "DynaMO: Dynamic rollout allocation and advantage modulation for
policy optimization" (arXiv 2602.19208).
"""

from __future__ import annotations

import numpy as np


def bernoulli_variance(successes, attempts, prior: float = 0.25) -> np.ndarray:
    """Unbiased Bernoulli variance ``k(G-k)/(G(G-1))``; prompts with ``G < 2`` get ``prior``."""
    k = np.asarray(successes, dtype=np.float64)
    g = np.asarray(attempts, dtype=np.float64)
    if k.shape != g.shape:
        raise ValueError(f"got successes of shape {k.shape} and attempts {g.shape}, expected equal shapes")
    if np.any(k < 0) or np.any(k > g):
        raise ValueError("got successes outside [0, attempts], expected 0 <= k_i <= G_i")
    out = np.full(k.shape, float(prior))
    seen = g >= 2
    out[seen] = k[seen] * (g[seen] - k[seen]) / (g[seen] * (g[seen] - 1.0))
    return out


def allocation_priority(successes, attempts, prior: float = 0.25, power: float = 1.0) -> np.ndarray:
    """Water-filling priority ``P_i ** power`` (1.0: the paper; 0.5: Eq. 1 read literally)."""
    return bernoulli_variance(successes, attempts, prior) ** float(power)


def water_fill(priority, budget: int, g_min: int, g_max: int) -> np.ndarray:
    """Integer rollout counts in ``[g_min, g_max]`` summing to ``min(budget, N * g_max)``.

    Counts are monotone in priority and deterministic (ties go to the lower index).
    """
    p = _check_inputs(priority, budget, g_min, g_max)
    n = p.size
    cap = g_max - g_min
    residual = min(int(budget), n * g_max) - n * g_min
    counts = np.full(n, g_min, dtype=np.int64)
    if residual == 0 or n == 0:
        return counts
    positive = np.flatnonzero(p > 0)
    extra = np.zeros(n, dtype=np.int64)
    if positive.size:
        share = min(residual, positive.size * cap)
        scaled = p[positive] / p[positive].max()  # scale-free; avoids overflow at extreme values
        extra[positive] = _proportional_shares(scaled, share, cap)
        residual -= share
    if residual:
        _round_robin(extra, np.flatnonzero(p <= 0), residual, cap)
    counts += extra
    assert counts.sum() == min(int(budget), n * g_max)
    return counts


def _check_inputs(priority, budget: int, g_min: int, g_max: int) -> np.ndarray:
    p = np.asarray(priority, dtype=np.float64).reshape(-1)
    if g_min < 0 or g_max < g_min:
        raise ValueError(f"got g_min={g_min}, g_max={g_max}, expected 0 <= g_min <= g_max")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("got a negative or non-finite priority, expected finite values >= 0")
    if budget < p.size * g_min:
        raise ValueError(f"got budget={budget} for {p.size} prompts, expected at least N * g_min = {p.size * g_min}")
    return p


def _proportional_shares(p: np.ndarray, total: int, cap: int) -> np.ndarray:
    """Integers ``<= cap`` summing to ``total``, water-filled in proportion to ``p > 0``."""
    if total >= p.size * cap:
        return np.full(p.size, cap, dtype=np.int64)
    real = _water_level(p, total, cap)
    base = np.floor(real).astype(np.int64)
    np.minimum(base, cap, out=base)
    left = total - int(base.sum())
    if left > 0:
        frac = real - base
        # Largest remainder first; ties to the larger priority, then the lower index.
        order = np.lexsort((np.arange(p.size), -p, -frac))
        order = order[base[order] < cap][:left]
        assert order.size == left
        base[order] += 1
    return base


def _water_level(p: np.ndarray, total: int, cap: int) -> np.ndarray:
    """Continuous solution ``min(cap, lam * p)`` with sum ``total`` (p > 0, total < N * cap)."""
    order = np.argsort(-p, kind="stable")
    ps = p[order]
    # If the k largest are saturated, lam_k = (total - k*cap) / sum(ps[k:]).
    tail = np.cumsum(ps[::-1])[::-1]
    k = np.arange(ps.size)
    lam = (total - k * cap) / tail
    valid = lam * ps <= cap * (1 + 1e-12)
    first = int(np.argmax(valid))
    assert valid[first]
    real = np.empty_like(p)
    real[order] = np.minimum(cap, lam[first] * ps)
    real[order[:first]] = cap
    return real


def _round_robin(extra: np.ndarray, idx: np.ndarray, amount: int, cap: int) -> None:
    """Spread ``amount`` evenly over ``idx`` (lower indices first), at most ``cap`` each."""
    assert idx.size * cap >= amount
    each, rest = divmod(amount, idx.size)
    extra[idx] += each
    extra[idx[:rest]] += 1
