"""Entropy advantages (Cheng et al. 2025, arXiv 2506.14758, "Reasoning with exploration: an
entropy perspective").

    A_t' = A_t + min(alpha * H_t.detach(), |A_t| / kappa)       (kappa > 1: the sign never flips)

Formula module: ``dynamo_async/algo/baselines/entropy_advantage.py``.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from dynamo_async.config.section import Section
from dynamo_async.objective.registry import TokenAdvantage, register


class EntropyAdvantageSettings(Section):
    alpha: Annotated[float, Meta(ge=0.0, description="alpha_e, the entropy scale (paper: 0.4).")] = 0.4
    kappa: Annotated[float, Meta(gt=1.0, description="kappa, the bound |A| / kappa (paper: 2).")] = 2.0


@register
class EntropyAdvantage(TokenAdvantage):
    """Entropy-shaped token advantages."""

    name = "entropy_advantage"
    settings_type = EntropyAdvantageSettings

    def needs(self):
        return frozenset({"entropy"})

    def apply(self, s):
        from dynamo_async.algo.baselines.entropy_advantage import entropy_shaped_advantages

        st = self.settings
        s.adv = entropy_shaped_advantages(s.adv, s.stats.entropy.detach(), st.alpha, st.kappa)
