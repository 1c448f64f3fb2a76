"""Fork tokens: train on the high-entropy tokens only (Wang et al. 2025, arXiv 2506.01939, "Beyond
the 80/20 rule").

    S = the top ceil(rho * N_valid) valid tokens of the micro-batch by entropy
    w_t = 1[t in S] * N_valid / |S|

so token-mean aggregation gives the token-mean over the selection, weighted by the micro-batch's
share of the mini-batch's tokens (the official code's micro/mini scaling).
Formula module: ``dynamo_async/algo/baselines/fork_tokens.py``.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from dynamo_async.config.section import Section
from dynamo_async.objective.registry import TokenWeights, register


class ForkTokensSettings(Section):
    top_ratio: Annotated[
        float, Meta(gt=0.0, le=1.0, description="rho, the fraction of highest-entropy tokens trained on (0.2).")
    ] = 0.2


@register
class ForkTokens(TokenWeights):
    """Fork tokens: only the highest-entropy tokens get a gradient."""

    name = "fork_tokens"
    settings_type = ForkTokensSettings

    def zero_advantage_contributes(self):
        # the entropy quantile and the weight N_valid / |S| count every valid token of the micro-batch
        return True

    def needs(self):
        return frozenset({"entropy"})

    def apply(self, s):
        from dynamo_async.algo.baselines.fork_tokens import high_entropy_mask

        selected = high_entropy_mask(s.stats.entropy, s.batch.mask, self.settings.top_ratio)
        n_selected = selected.sum().clamp(min=1)
        s.metrics["fork_frac"] = s.mean(selected.float())
        s.reweight(selected.float() * (s.batch.mask.sum() / n_selected))
