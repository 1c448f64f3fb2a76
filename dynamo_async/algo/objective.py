"""The learner's policy objective, assembled once from the config's components (docs/design.md section 4.6).

For one micro-batch the ``Objective`` runs, in order::

    1. token statistics     log-probs (grad), and the entropy / vocabulary sums a component needs
    2. token advantages     the sequence advantage on every response token, then each
                            ``objective.token_advantage`` component (entropy shaping, DynaMO modulation)
    3. token weights        each ``objective.token_weights`` component multiplies in a detached
                            weight or mask (truncated IS, IcePop, clip-cov, fork tokens, ...)
    4. per-token loss       the ``objective.token_loss`` component (clipped, KL-Cov), times the weights
    5. aggregation          loss.aggregation (aggregation.py)
    6. extra terms          each ``objective.extra`` component (entropy bonus)

The components are registered modules of ``dynamo_async/objective/components``; ``method`` is a
preset of them (``dynamo_async/objective/presets.py``). The functions below the class keep the
``(…, cfg)`` call form for callers that hold only a config; each uses the cached assembly.
"""

from __future__ import annotations

import functools

import torch

from dynamo_async.algo import policy_loss
from dynamo_async.algo.aggregation import aggregate
from dynamo_async.algo.logprobs import TokenStats, token_stats
from dynamo_async.config.schema import RunConfig
from dynamo_async.objective.registry import component
from dynamo_async.objective.state import ClipRange, PolicyBatch, StepState

__all__ = ["Objective", "PolicyBatch", "assemble", "clip_bounds", "policy_objective", "proximal_stats"]


class Objective:
    """The run's components, built once; call it on a micro-batch's logits."""

    def __init__(self, cfg: RunConfig) -> None:
        o = cfg.objective
        self.cfg = cfg
        self.advantage = _build(o.advantage, cfg)
        self.token_advantage = tuple(_build(n, cfg) for n in o.token_advantage)
        self.token_weights = tuple(_build(n, cfg) for n in o.token_weights)
        self.token_loss = _build(o.token_loss, cfg)
        self.extra = tuple(_build(n, cfg) for n in o.extra)
        parts = (self.advantage, *self.token_advantage, *self.token_weights, self.token_loss, *self.extra)
        self.needs = frozenset().union(*(c.needs() for c in parts))
        # Samples with advantage exactly 0 add nothing to the update unless a component says so.
        self.skips_zero_advantage = not any(c.zero_advantage_contributes() for c in parts)
        loss = cfg.loss
        self.clip = ClipRange(loss.eps_low, loss.eps_high, loss.dual_clip_c if loss.dual_clip else None)

    def sequence_advantages(self, acc, group_ids, rewards=None) -> torch.Tensor:
        """One advantage per response (the ``objective.advantage`` component; ``rewards``: the
        records' training rewards, None: math-verify's of ``acc``)."""
        r = None if rewards is None else torch.as_tensor(rewards, dtype=torch.float32)
        return self.advantage.advantages(torch.as_tensor(acc), group_ids, r)

    @torch.no_grad()
    def proximal_stats(self, logits, tokens, entropy_metric: bool = True, mask=None) -> TokenStats:
        """The proximal pass: log-probs plus the entropy and vocabulary sums the components need."""
        return self._stats(logits, tokens, "entropy" in self.needs or entropy_metric, mask)

    @torch.no_grad()
    def mini_batch_stats(self, stats: TokenStats, batch: PolicyBatch) -> dict[str, float]:
        """One micro-batch's share of the mini-batch normalisers, from its proximal statistics:
        the token stages run in order up to the last component that collects any, each seeing
        the advantages as the update will hand them to it (keys ``<component>.<key>``)."""
        staged = (*self.token_advantage, *self.token_weights)
        collecting = [i for i, c in enumerate(staged) if "mini_batch_stats" in c.needs()]
        if not collecting:
            return {}
        ratio = policy_loss.ratio(stats.logp, batch.logp_old)
        s = StepState(batch, stats, ratio, self._token_advantages(batch), self.clip, self._totals(batch))
        s.normalisers = {}
        for c in staged[: collecting[-1] + 1]:
            s.normalisers.update({f"{c.name}.{k}": v for k, v in c.mini_batch_stats(s).items()})
            c.apply(s)
        return s.normalisers

    def __call__(self, logits, batch: PolicyBatch, generator=None, entropy_metric: bool = True):
        """Scalar loss to backpropagate and the step's metrics (means over valid tokens)."""
        s = self._state(logits, batch, generator, entropy_metric)
        for c in self.token_advantage:
            c.apply(s)
        for c in self.token_weights:
            c.apply(s)
        per_token = self.token_loss.per_token(s)
        if s.weight is not None:
            per_token = per_token * s.weight
        loss = aggregate(per_token, batch.mask, self.cfg.loss.aggregation, **s.totals)
        for c in self.extra:
            loss = loss + c.term(s)
        s.metrics.update(_summary(s))
        return loss, s.metrics

    def _state(self, logits, batch: PolicyBatch, generator, entropy_metric: bool) -> StepState:
        stats = self._training_stats(logits, batch, entropy_metric)
        ratio = policy_loss.ratio(stats.logp.detach(), batch.logp_old)
        s = StepState(batch, stats, ratio, self._token_advantages(batch), self.clip, self._totals(batch), generator)
        s.normalisers = batch.normalisers
        return s

    @staticmethod
    def _token_advantages(batch: PolicyBatch) -> torch.Tensor:
        adv = batch.advantages.float()
        if adv.dim() == 1:
            adv = adv[:, None].expand_as(batch.mask)
        return adv * batch.mask

    def _training_stats(self, logits, batch: PolicyBatch, entropy_metric: bool) -> TokenStats:
        have = batch.entropy is not None and (batch.vocab_sum is not None or "vocab_sum" not in self.needs)
        if "entropy_grad" in self.needs:
            return self._stats(logits, batch.tokens, True, None, entropy_grad=True)
        if have:
            logp = self._stats(logits, batch.tokens, False, batch.mask, vocab_sum=False).logp
            return TokenStats(logp=logp, entropy=batch.entropy, vocab_sum=batch.vocab_sum)
        return self._stats(logits, batch.tokens, "entropy" in self.needs or entropy_metric, batch.mask)

    def _stats(self, logits, tokens, entropy: bool, mask, entropy_grad=False, vocab_sum=None) -> TokenStats:
        return token_stats(
            logits,
            tokens,
            self.cfg.rollout.temperature,
            self.cfg.loss.logprob_chunk_size,
            entropy=entropy,
            vocab_sum="vocab_sum" in self.needs if vocab_sum is None else vocab_sum,
            entropy_grad=entropy_grad,
            mask=mask,
        )

    def _totals(self, batch: PolicyBatch) -> dict:
        # Dr. GRPO's constant length L is the response cap, so micro-batches padded to different
        # lengths accumulate to the mini-batch's value.
        return {
            "total_tokens": batch.total_tokens,
            "total_seqs": batch.total_seqs,
            "norm_length": self.cfg.rollout.max_new_tokens,
        }


def _build(name: str, cfg: RunConfig):
    cls = component(name)
    settings = None
    if cls.settings_type is not None:  # one registered after the config schema was built has only defaults
        settings = getattr(cfg.objective, name, None) or cls.settings_type()
    return cls(settings, cfg)


def _summary(s: StepState) -> dict[str, float]:
    out = {"ratio_mean": s.mean(s.ratio)}
    if s.stats.entropy is not None:
        out["entropy"] = s.mean(s.stats.entropy.detach())
    if s.batch.logp_behavior is not None:
        w = policy_loss.ratio(s.batch.logp_old, s.batch.logp_behavior)
        out["is_weight_mean"] = s.mean(w)
        out["is_weight_max"] = float(w[s.valid].max()) if s.valid.any() else 1.0
        out["kl_behavior_proximal"] = s.mean(w - 1.0 - torch.log(w))
    return out


@functools.lru_cache(maxsize=16)
def assemble(cfg: RunConfig) -> Objective:
    """The objective of ``cfg``, built once per config."""
    return Objective(cfg)


def policy_objective(logits, batch: PolicyBatch, cfg: RunConfig, generator=None, entropy_metric: bool = True):
    """``assemble(cfg)(logits, batch, generator, entropy_metric)``."""
    return assemble(cfg)(logits, batch, generator, entropy_metric)


def proximal_stats(logits, tokens, cfg: RunConfig, entropy_metric: bool = True, mask=None) -> TokenStats:
    """``assemble(cfg).proximal_stats(...)``."""
    return assemble(cfg).proximal_stats(logits, tokens, entropy_metric, mask)


def sequence_advantages(acc, group_ids, cfg: RunConfig, rewards=None) -> torch.Tensor:
    """``assemble(cfg).sequence_advantages(acc, group_ids, rewards)``."""
    return assemble(cfg).sequence_advantages(acc, group_ids, rewards)


def clip_bounds(cfg: RunConfig) -> tuple[float, float]:
    """(eps_low, eps_high) the run trains with."""
    clip = assemble(cfg).clip
    return clip.eps_low, clip.eps_high
