"""DynaMO's token-level advantage modulation (Fang et al., arXiv 2602.19208, Sec. 2.2, Eqs. 3-4).

    A_t' = A_t * beta_comp_t * beta_stab_t                                 (both detached)
    beta_comp = 1 + alpha (H_max - H_t) / (H_max - H_min)    where A_t > 0, else 1
    beta_stab = lambda_min + (1 - lambda_min) sigmoid(-gamma (Xi_t / max Xi - tau))

``Xi_t`` is the entropy-change magnitude of Theorem 1 under the run's clip range. Its settings
are the top-level ``modulation`` section (the Table 2 ablations switch either factor off).
The normalisers H_max, H_min and max Xi are the mini-batch's by default (``normaliser_scope``):
the proximal pass collects them over every sample (``mini_batch_stats``, Xi at the proximal
weights), so a micro-batch's composition does not change its factors; ``micro_batch`` takes them
over each micro-batch, as the authors' code.
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
        if not (m.compensation or m.stabilization):
            return frozenset()
        out = {"entropy"}
        if m.stabilization and m.entropy_change == "exact":
            out.add("vocab_sum")
        if m.normaliser_scope == "mini_batch":
            out.add("mini_batch_stats")
        return frozenset(out)

    def zero_advantage_contributes(self):
        # per micro-batch, H_max and H_min count the zero-advantage samples' tokens too
        m = self.cfg.modulation
        return (m.compensation or m.stabilization) and m.normaliser_scope == "micro_batch"

    def mini_batch_stats(self, s):
        m, valid = self.cfg.modulation, s.valid
        if m.normaliser_scope != "mini_batch":
            return {}
        top = (lambda x: float(x[valid].max())) if valid.any() else (lambda x: -float("inf"))  # same keys on every rank
        out = {}
        if m.compensation:
            h = s.stats.entropy.float()
            out.update(h_max=top(h), neg_h_min=top(-h))
        if m.stabilization:
            out["xi_max"] = top(self._xi(s))
        return out

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

    def _normaliser(self, s, key):
        """The mini-batch's value of ``key``; None: this micro-batch's (the ``micro_batch`` scope,
        or a caller that hands the objective a whole mini-batch without normalisers)."""
        if self.cfg.modulation.normaliser_scope == "micro_batch" or s.normalisers is None:
            return None
        full = f"{self.name}.{key}"
        assert full in s.normalisers or not s.valid.any(), f"the proximal pass collects {full}"
        return s.normalisers.get(full)

    def _compensation(self, s):
        from dynamo_async.algo.modulation import beta_histogram, compensation

        m = self.cfg.modulation
        h_max = self._normaliser(s, "h_max")
        h_range = None if h_max is None else (-self._normaliser(s, "neg_h_min"), h_max)
        comp = compensation(s.stats.entropy, s.adv, s.batch.mask, m.alpha, h_range)
        s.metrics["beta_comp_mean"] = s.mean(comp)
        s.metrics["beta_comp_hist"] = beta_histogram(comp[s.valid & (s.adv > 0)], 1.0, 1.0 + m.alpha)
        return comp

    def _stabilization(self, s):
        from dynamo_async.algo.modulation import beta_histogram, stabilization

        m = self.cfg.modulation
        stab = stabilization(self._xi(s), s.batch.mask, m.lambda_min, m.gamma, m.tau, self._normaliser(s, "xi_max"))
        s.metrics["beta_stab_mean"] = s.mean(stab)
        s.metrics["beta_stab_min"] = float(stab[s.valid].min()) if s.valid.any() else 1.0
        s.metrics["beta_stab_hist"] = beta_histogram(stab[s.valid], m.lambda_min, 1.0)
        return stab

    def _xi(self, s):
        from dynamo_async.algo.entropy_change import entropy_change

        m, c = self.cfg.modulation, s.clip
        return entropy_change(
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
