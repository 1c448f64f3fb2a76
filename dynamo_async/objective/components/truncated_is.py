"""Token-level truncated importance sampling (decoupled PPO: Fu et al. 2025, AReaL, arXiv 2505.24298;
the cap C from Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training").

    w_t = min(pi_old(a_t) / pi_behavior(a_t), C)           (detached; C = off_policy.is_cap)

``pi_old`` is the learner's proximal policy, ``pi_behavior`` the worker's sampling policy; with
``off_policy.mode: behavior`` they are the same and the weight is 1.
"""

from __future__ import annotations

from dynamo_async.objective.registry import TokenWeights, register


@register
class TruncatedIS(TokenWeights):
    """Token-level truncated IS weight min(pi_old / pi_behavior, C)."""

    name = "truncated_is"
    reads = ("off_policy.is_cap",)

    def apply(self, s):
        log_rho = s.behavior_log_ratio()
        if log_rho is None:
            return
        w = log_rho.exp().clamp(max=self.cfg.off_policy.is_cap)
        s.metrics["truncated_is_frac"] = s.mean((w >= self.cfg.off_policy.is_cap).float())
        s.reweight(w)
