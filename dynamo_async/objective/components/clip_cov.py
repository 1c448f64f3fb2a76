"""Clip-Cov (Cui et al. 2025, arXiv 2505.22617, "The entropy mechanism of RL for reasoning
language models").

    cov_t = (A_t - mean A)(logp_t - mean logp)          over the valid tokens
    candidates: not already clipped by the ratio clip, and lb < cov_t < ub
    n = max(1, floor(ratio * N_valid)) candidates chosen at random get weight 0

The ``clip_cov`` preset also trains with the paper's 1/1 clip range and no dual clip.
Formula module: ``dynamo_async/algo/baselines/clip_cov.py``.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from dynamo_async.config.section import Section
from dynamo_async.objective.registry import TokenWeights, register


class ClipCovSettings(Section):
    ratio: Annotated[float, Meta(gt=0.0, le=1.0, description="Fraction of valid tokens detached (2e-4).")] = 2e-4
    lb: Annotated[float, Meta(description="Lower covariance bound of a candidate token (1).")] = 1.0
    ub: Annotated[float, Meta(description="Upper covariance bound of a candidate token (5).")] = 5.0

    def __post_init__(self) -> None:
        if self.lb >= self.ub:
            raise ValueError(f"got objective.clip_cov.lb={self.lb} >= ub={self.ub}, expected lb < ub")


@register
class ClipCov(TokenWeights):
    """Clip-Cov: detach a random few high-covariance tokens."""

    name = "clip_cov"
    settings_type = ClipCovSettings
    reads = ("loss.eps_low", "loss.eps_high")

    def zero_advantage_contributes(self):
        # the covariance's means and the number of detached tokens count every valid token of the micro-batch
        return True

    def apply(self, s):
        from dynamo_async.algo.baselines.clip_cov import clip_cov_keep
        from dynamo_async.algo.policy_loss import clip_active

        st, c = self.settings, s.clip
        clipped = clip_active(s.ratio, s.adv, c.eps_low, c.eps_high)
        keep = clip_cov_keep(s.adv, s.stats.logp, s.batch.mask, clipped, st.ratio, st.lb, st.ub, s.generator)
        s.metrics["clip_cov_frac"] = s.mean(1.0 - keep)
        s.reweight(keep)
