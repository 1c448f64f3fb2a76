"""Sequence-level truncated importance sampling (Yao et al. 2025, "Your efficient RL framework
secretly brings you off-policy RL training"; verl's ``rollout_is: sequence``).

    w_i = min( prod_t pi_old(a_t) / pi_behavior(a_t), C )  =  min( exp(sum_t log rho_t), C )

one detached weight for every token of response i. Use it instead of ``truncated_is``
(``objective.token_weights=[seq_truncated_is]``): the two together weight twice.
"""

from __future__ import annotations

import math
from typing import Annotated

from msgspec import Meta

from dynamo_async.config.section import Section
from dynamo_async.objective.registry import TokenWeights, register


class SeqTruncatedISSettings(Section):
    cap: Annotated[float, Meta(gt=0.0, description="C, the truncation of the sequence weight (verl: 2.0).")] = 2.0


@register
class SeqTruncatedIS(TokenWeights):
    """Sequence-level truncated IS weight min(prod_t rho_t, C)."""

    name = "seq_truncated_is"
    settings_type = SeqTruncatedISSettings

    def apply(self, s):
        log_w = s.sequence_log_ratio()
        if log_w is None:
            return
        cap = self.settings.cap
        w = log_w.clamp(max=math.log(cap)).exp().expand_as(s.adv)  # = min(exp(log_w), C), no overflow
        rows = s.batch.mask.sum(-1) > 0
        s.metrics["seq_truncated_is_frac"] = float((w[:, 0][rows] >= cap).float().mean()) if rows.any() else 0.0
        s.reweight(w)
