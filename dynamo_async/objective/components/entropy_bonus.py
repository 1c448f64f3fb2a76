"""Entropy bonus (Mnih et al. 2016; verl's ``entropy_coeff``).

    loss = L_pg - coef * agg(H_t)          (H_t with its gradient, aggregated like the policy loss)

Formula module: ``dynamo_async/algo/baselines/entropy_loss.py``.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from dynamo_async.config.section import Section
from dynamo_async.objective.registry import ExtraTerm, register


class EntropyBonusSettings(Section):
    coef: Annotated[float, Meta(ge=0.0, description="c_H, the entropy coefficient (verl's legacy 0.001).")] = 0.001


@register
class EntropyBonus(ExtraTerm):
    """Entropy bonus -c_H * agg(H) (the entropy-loss baseline)."""

    name = "entropy_bonus"
    settings_type = EntropyBonusSettings

    def zero_advantage_contributes(self):
        # the entropy term has a gradient on every token, whatever its advantage
        return True

    def needs(self):
        return frozenset({"entropy", "entropy_grad"})

    def term(self, s):
        from dynamo_async.algo.baselines.entropy_loss import entropy_bonus

        return entropy_bonus(s.stats.entropy, s.batch.mask, self.settings.coef, self.cfg.loss.aggregation, **s.totals)
