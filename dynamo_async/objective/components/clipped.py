"""The importance-ratio-clipped policy loss (PPO, Schulman et al. 2017; decoupled ranges, DAPO, Yu et
al. 2025; dual clip, Ye et al. 2020).

    r_t = exp(logp_theta - logp_old)
    l_t = max(-A r_t, -A clip(r_t, 1 - eps_low, 1 + eps_high));   l_t = min(l_t, -c A) where A < 0

Settings: ``loss.eps_low``, ``loss.eps_high``, ``loss.dual_clip``, ``loss.dual_clip_c`` (Clip-Higher
is ``loss.eps_high=0.28``). Formula module: ``dynamo_async/algo/policy_loss.py``.
"""

from __future__ import annotations

from dynamo_async.objective.registry import TokenLoss, register


@register
class Clipped(TokenLoss):
    """Ratio-clipped (and dual-clipped) policy loss."""

    name = "clipped"
    reads = ("loss.eps_low", "loss.eps_high", "loss.dual_clip", "loss.dual_clip_c")

    def per_token(self, s):
        from dynamo_async.algo.policy_loss import clipped_token_loss

        c = s.clip
        loss, info = clipped_token_loss(s.stats.logp, s.batch.logp_old, s.adv, c.eps_low, c.eps_high, c.dual_clip_c)
        s.metrics["clip_frac"] = s.mean(info["clipped"].float())
        s.metrics["dual_clip_frac"] = s.mean(info["dual_clipped"].float())
        return loss
