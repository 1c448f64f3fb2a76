"""DynaMO's token-level advantage modulation (Fang et al., arXiv 2602.19208, Sec. 2.2, Eqs. 3-4).

    A_t' = A_t * beta_comp_t * beta_stab_t                                 (both detached)
    beta_comp = 1 + alpha (H_max - H_t) / (H_max - H_min)    where A_t > 0, else 1
    beta_stab = lambda_min + (1 - lambda_min) sigmoid(-gamma (Xi_t / max Xi - tau))

``Xi_t`` is the entropy-change magnitude of Theorem 1 under the run's clip range. Its settings
are the top-level ``modulation`` section (the Table 2 ablations switch either factor off).
Formula modules: ``dynamo_async/algo/modulation.py``, ``dynamo_async/algo/entropy_change.py``.
"""

from __future__ import annotations

from dynamo_async.objective.registry import TokenAdvantage, register


@register
class Modulation(TokenAdvantage):
    """DynaMO: gradient compensation and update-magnitude stabilization."""

    name = "modulation"
    reads = ("modulation.*", "loss.eps_low", "loss.eps_high", "loss.dual_clip", "loss.dual_clip_c")

    def needs(self):
        m = self.cfg.modulation
        out = {"entropy"} if m.compensation or m.stabilization else set()
        if m.stabilization and m.entropy_change == "exact":
            out.add("vocab_sum")
        return frozenset(out)

    def apply(self, s):
        m = self.cfg.modulation
        if not (m.compensation or m.stabilization):
            return
        beta = 1.0
        if m.compensation:
            beta = self._compensation(s)
        if m.stabilization:
            beta = beta * self._stabilization(s)
        s.adv = s.adv * beta

    def _compensation(self, s):
        from dynamo_async.algo.modulation import beta_histogram, compensation

        m = self.cfg.modulation
        comp = compensation(s.stats.entropy, s.adv, s.batch.mask, m.alpha)
        s.metrics["beta_comp_mean"] = s.mean(comp)
        s.metrics["beta_comp_hist"] = beta_histogram(comp[s.valid & (s.adv > 0)], 1.0, 1.0 + m.alpha)
        return comp

    def _stabilization(self, s):
        from dynamo_async.algo.entropy_change import entropy_change
        from dynamo_async.algo.modulation import beta_histogram, stabilization

        m, c = self.cfg.modulation, s.clip
        xi = entropy_change(
            s.stats.logp,
            s.stats.entropy,
            s.ratio,
            s.adv,
            s.batch.mask,
            c.eps_low,
            c.eps_high,
            m.entropy_change,
            s.stats.vocab_sum,
            c.dual_clip_c,
        )
        stab = stabilization(xi, s.batch.mask, m.lambda_min, m.gamma, m.tau)
        s.metrics["beta_stab_mean"] = s.mean(stab)
        s.metrics["beta_stab_min"] = float(stab[s.valid].min()) if s.valid.any() else 1.0
        s.metrics["beta_stab_hist"] = beta_histogram(stab[s.valid], m.lambda_min, 1.0)
        return stab
