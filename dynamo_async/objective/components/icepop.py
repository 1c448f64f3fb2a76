"""IcePop: two-sided token masking of the training/inference mismatch (Ling Team 2025, arXiv
2510.18855, "Every step evolves: scaling reinforcement learning for trillion-scale thinking model").

    k_t = pi_old(a_t) / pi_behavior(a_t)                 (trainer's over the rollout engine's probability)
    w_t = k_t * 1[alpha <= k_t <= beta]                  (detached; alpha = 0.5, beta = 5)

Tokens whose mismatch leaves the band get no gradient; the others are reweighted by k_t. Use it
instead of ``truncated_is``.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from dynamo_async.config.section import Section
from dynamo_async.objective.registry import TokenWeights, register


class IcePopSettings(Section):
    alpha: Annotated[float, Meta(gt=0.0, description="Lowest ratio kept (the paper: 0.5).")] = 0.5
    beta: Annotated[float, Meta(gt=0.0, description="Highest ratio kept (the paper: 5).")] = 5.0

    def __post_init__(self) -> None:
        if self.alpha >= self.beta:
            raise ValueError(f"got objective.icepop.alpha={self.alpha} >= beta={self.beta}, expected alpha < beta")


@register
class IcePop(TokenWeights):
    """IcePop: reweight by the mismatch ratio inside [alpha, beta], mask outside."""

    name = "icepop"
    settings_type = IcePopSettings

    def apply(self, s):
        log_k = s.behavior_log_ratio()
        if log_k is None:
            return
        k = log_k.exp()
        s.reweight(k * s.in_band(k, self.settings.alpha, self.settings.beta, self.name))
