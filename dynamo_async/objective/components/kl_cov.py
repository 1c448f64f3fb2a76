"""KL-Cov (Cui et al. 2025, arXiv 2505.22617, "The entropy mechanism of RL for reasoning language
models").

    S   = the top max(1, floor(ratio * N_valid)) valid tokens by cov_t = (A_t - mean A)(logp_t - mean logp)
    l_t = -A_t r_t + coef * |logp_t - logp_old_t|   if t in S,   -A_t r_t otherwise   (no ratio clip)

Formula module: ``dynamo_async/algo/baselines/kl_cov.py``.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from dynamo_async.config.section import Section
from dynamo_async.objective.registry import TokenLoss, register


class KLCovSettings(Section):
    ratio: Annotated[float, Meta(gt=0.0, le=1.0, description="Fraction of valid tokens penalised (2e-3).")] = 2e-3
    coef: Annotated[float, Meta(ge=0.0, description="beta, the weight of the |log-ratio| penalty (1).")] = 1.0


@register
class KLCov(TokenLoss):
    """KL-Cov: unclipped policy loss, a |log-ratio| penalty on the highest-covariance tokens."""

    name = "kl_cov"
    settings_type = KLCovSettings

    def zero_advantage_contributes(self):
        # its |log-ratio| penalty has a gradient at A = 0, and its top-k covariance selection counts every token
        return True

    def per_token(self, s):
        from dynamo_async.algo.baselines.kl_cov import kl_cov_token_loss

        st = self.settings
        loss, selected = kl_cov_token_loss(s.stats.logp, s.batch.logp_old, s.adv, s.batch.mask, st.ratio, st.coef)
        s.metrics["kl_cov_frac"] = s.mean(selected.float())
        return loss
