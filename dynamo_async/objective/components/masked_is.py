"""Masked importance sampling: weights whose ratio leaves a band are masked, not clipped (TRL's
``vllm_importance_sampling_mode`` token_mask / sequence_mask; verl's rollout rejection sampling).

    token level:     w_t = rho_t * 1[low <= rho_t <= high],         rho_t = pi_old(a_t) / pi_behavior(a_t)
    sequence level:  w_i = rho_i * 1[low <= rho_i <= high],         rho_i = prod_t rho_t   (every token of i)

A masked token or response gets no gradient; the aggregation's denominator still counts it.
Use it instead of ``truncated_is``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from dynamo_async.config.section import Section
from dynamo_async.objective.registry import TokenWeights, register


class MaskedISSettings(Section):
    level: Annotated[
        Literal["token", "sequence"], Meta(description="Mask single tokens, or whole responses by their product ratio.")
    ] = "token"
    low: Annotated[float, Meta(ge=0.0, description="Lowest ratio kept (0: no lower bound, as TRL).")] = 0.0
    high: Annotated[float, Meta(gt=0.0, description="Highest ratio kept (verl's threshold 2.0).")] = 2.0

    def __post_init__(self) -> None:
        if self.low >= self.high:
            raise ValueError(f"got objective.masked_is.low={self.low} >= high={self.high}, expected low < high")


@register
class MaskedIS(TokenWeights):
    """Masked IS: the ratio as weight inside [low, high], 0 outside (token or sequence level)."""

    name = "masked_is"
    settings_type = MaskedISSettings

    def apply(self, s):
        st = self.settings
        log_rho = s.behavior_log_ratio() if st.level == "token" else s.sequence_log_ratio()
        if log_rho is None:
            return
        rho = log_rho.clamp(max=30.0).exp()  # above the band either way
        s.reweight(rho * s.in_band(rho, st.low, st.high, self.name))
