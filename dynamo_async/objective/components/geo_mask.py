"""Geometric-mean sequence mask (OpenRLHF's ``seq-mask-tis``; verl's geometric rollout rejection).

    g_i    = exp( mean_t log(pi_old(a_t) / pi_behavior(a_t)) )        over the tokens of response i
    keep_i = 1[low <= g_i <= high]                                     (every token of response i)

A mask only, independent of length (a product ratio is not): keep ``truncated_is`` beside it for
the token weights (``objective.token_weights=[truncated_is, geo_mask]``).
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from dynamo_async.config.section import Section
from dynamo_async.objective.registry import TokenWeights, register


class GeoMaskSettings(Section):
    low: Annotated[float, Meta(gt=0.0, description="Lowest geometric-mean ratio kept (OpenRLHF: 0.5).")] = 0.5
    high: Annotated[float, Meta(gt=0.0, description="Highest geometric-mean ratio kept (OpenRLHF: 5).")] = 5.0

    def __post_init__(self) -> None:
        if self.low >= self.high:
            raise ValueError(f"got objective.geo_mask.low={self.low} >= high={self.high}, expected low < high")


@register
class GeoMask(TokenWeights):
    """Geometric-mean sequence mask: drop responses whose mean log-ratio leaves the band."""

    name = "geo_mask"
    settings_type = GeoMaskSettings

    def apply(self, s):
        log_g = s.sequence_log_ratio(mean=True)
        if log_g is None:
            return
        s.reweight(s.in_band(log_g.exp(), self.settings.low, self.settings.high, self.name).float())
