"""What each ``method`` expands to: DynaMO, GRPO and the seven Table 1 baselines as presets.

A preset is a set of ``key: value`` settings put under the user's own: a user's value wins, so
``method=dynamo loss.eps_high=0.28`` is DynaMO with Clip-Higher and ``method=grpo
allocation.dynamic=true`` is GRPO with dynamic allocation. The expanded settings are in the
resolved ``RUN_DIR/config.yaml`` (docs/design.md section 4.6).
"""

from __future__ import annotations

import copy
from typing import Any

from dynamo_async.errors import UsageError

# The baselines run as the paper ran them: uniform allocation, no modulation, token-level IS.
_BASE: dict[str, Any] = {
    "allocation.dynamic": False,
    "objective.advantage": "grpo",
    "objective.token_advantage": [],
    "objective.token_weights": ["truncated_is"],
    "objective.token_loss": "clipped",
    "objective.extra": [],
}

PRESETS: dict[str, dict[str, Any]] = {
    "dynamo": {**_BASE, "allocation.dynamic": True, "objective.token_advantage": ["modulation"]},
    "grpo": _BASE,
    "clip_higher": {**_BASE, "loss.eps_high": 0.28},
    "entropy_loss": {**_BASE, "objective.extra": ["entropy_bonus"]},
    "fork_tokens": {**_BASE, "objective.token_weights": ["truncated_is", "fork_tokens"]},
    "entropy_advantage": {**_BASE, "objective.token_advantage": ["entropy_advantage"]},
    "clip_cov": {
        **_BASE,
        "objective.token_weights": ["truncated_is", "clip_cov"],
        "loss.eps_low": 1.0,
        "loss.eps_high": 1.0,
        "loss.dual_clip": False,
    },
    "kl_cov": {**_BASE, "objective.token_loss": "kl_cov"},
    "w_reinforce": {**_BASE, "objective.advantage": "w_reinforce"},
}
METHODS = tuple(PRESETS)


def expand(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` (a user's config mapping) with its method's preset settings put under it."""
    method = raw.get("method", "dynamo")
    if method not in PRESETS:
        raise UsageError(f"config field method: got {method!r}, expected one of {list(METHODS)}")
    out: dict[str, Any] = {}
    for key, value in PRESETS[method].items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = copy.deepcopy(value)
    _merge(out, raw)
    return out


def _merge(into: dict[str, Any], top: dict[str, Any]) -> None:
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
