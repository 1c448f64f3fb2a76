"""Group-relative advantages for groups of unequal size (GRPO; Dr. GRPO switch).

GRPO (Shao et al. 2024, DeepSeekMath), per group g of responses to one prompt::

    A_i = (R_i - mean_g) / (std_g + eps)        std_g unbiased (n - 1)

``scale_by_std=False`` gives Dr. GRPO (Liu et al. 2025): ``A_i = R_i - mean_g``. A group of
size < 2, or whose rewards are all equal, gives exactly 0. Group sizes may differ
(DynaMO's allocation), so statistics are scattered by group id, never by fixed strides.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def training_rewards(acc: torch.Tensor, mode: str) -> torch.Tensor:
    """Training reward from binary correctness: ``'pm1'`` gives ``2*acc-1``, ``'acc'`` gives acc."""
    acc = torch.as_tensor(acc, dtype=torch.float32)
    if mode == "pm1":
        return 2.0 * acc - 1.0
    if mode == "acc":
        return acc
    raise ValueError(f"reward mode: got {mode!r}, expected 'pm1' or 'acc'")


def group_index(group_ids: torch.Tensor | Sequence) -> tuple[torch.Tensor, int]:
    """Dense indices 0..G-1, in order of first appearance, for hashable ids or an id tensor."""
    if isinstance(group_ids, torch.Tensor):
        group_ids = group_ids.reshape(-1).tolist()
    index: dict = {}
    dense = [index.setdefault(g, len(index)) for g in group_ids]
    return torch.tensor(dense, dtype=torch.long), len(index)


def group_advantages(rewards, group_ids, eps: float = 1e-6, scale_by_std: bool = True) -> torch.Tensor:
    """One advantage per response; responses of a group share a group id, in any order."""
    r = torch.as_tensor(rewards, dtype=torch.float64).reshape(-1)
    idx, n_groups = group_index(group_ids)
    if idx.numel() != r.numel():
        raise ValueError(f"got {r.numel()} rewards and {idx.numel()} group ids, expected one id per reward")
    if r.numel() == 0:
        return torch.zeros(0, dtype=torch.float32)
    count = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, idx, torch.ones_like(r))
    mean = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, idx, r) / count
    centered = r - mean[idx]
    sq = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, idx, centered * centered)
    std = torch.sqrt(sq / (count - 1).clamp(min=1))
    adv = centered / (std[idx] + eps) if scale_by_std else centered
    # Exactly 0 for groups of one or of equal rewards (no float residue from the mean).
    signal = (count[idx] >= 2) & ~_equal_rewards(r, idx, n_groups)[idx]
    return torch.where(signal, adv, torch.zeros_like(adv)).to(torch.float32)


def zero_variance_groups(rewards, group_ids) -> torch.Tensor:
    """Boolean per group (order of first appearance): True where all its rewards are equal."""
    r = torch.as_tensor(rewards, dtype=torch.float64).reshape(-1)
    idx, n_groups = group_index(group_ids)
    return _equal_rewards(r, idx, n_groups)


def _equal_rewards(r: torch.Tensor, idx: torch.Tensor, n_groups: int) -> torch.Tensor:
    lo = torch.full((n_groups,), float("inf"), dtype=torch.float64).scatter_reduce(0, idx, r, "amin")
    hi = torch.full((n_groups,), float("-inf"), dtype=torch.float64).scatter_reduce(0, idx, r, "amax")
    return lo == hi
