"""What flows through the objective's stages for one micro-batch (docs/design.md section 4.6)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dynamo_async.algo.logprobs import TokenStats
from dynamo_async.algo.policy_loss import LOG_RATIO_CLAMP


@dataclass(frozen=True)
class PolicyBatch:
    """One micro-batch of responses, right-padded to ``[B, T]``.

    ``logp_old`` is the proximal policy (``off_policy.mode: decoupled``) or the behaviour
    policy (``behavior``); ``logp_behavior`` is the worker's, used by the IS corrections (None
    when the old policy is the behaviour policy). ``total_tokens``/``total_seqs`` are the
    mini-batch totals for gradient accumulation. ``entropy``/``vocab_sum``, when given, come
    from the proximal pass (docs/design.md section 8) and the training forward then computes
    log-probs only. ``normalisers``: the mini-batch's maxima the components collected in the
    proximal pass (``Component.mini_batch_stats``); None when this batch is the whole mini-batch.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    advantages: torch.Tensor
    logp_old: torch.Tensor
    logp_behavior: torch.Tensor | None = None
    total_tokens: float | None = None
    total_seqs: float | None = None
    entropy: torch.Tensor | None = None
    vocab_sum: torch.Tensor | None = None
    normalisers: dict[str, float] | None = None


@dataclass(frozen=True)
class ClipRange:
    """The ratio clip the run trains with: ``[1 - eps_low, 1 + eps_high]``, dual clip ``c`` or None."""

    eps_low: float
    eps_high: float
    dual_clip_c: float | None


@dataclass
class StepState:
    """The micro-batch, its token statistics, and what the stages have made of them so far.

    ``ratio`` is the detached ``pi_theta / pi_old``; ``adv`` the ``[B, T]`` token advantages;
    ``weight`` the product of the token-weight stage's factors (None: all 1); ``metrics`` the
    step's figures (means over valid tokens); ``normalisers`` the mini-batch's maxima
    (``PolicyBatch.normalisers``).
    """

    batch: PolicyBatch
    stats: TokenStats
    ratio: torch.Tensor
    adv: torch.Tensor
    clip: ClipRange
    totals: dict
    generator: torch.Generator | None = None
    weight: torch.Tensor | None = None
    metrics: dict = field(default_factory=dict)
    normalisers: dict[str, float] | None = None

    @property
    def valid(self) -> torch.Tensor:
        """Boolean ``[B, T]``: response tokens (not padding)."""
        return self.batch.mask.bool()

    def mean(self, x: torch.Tensor, where: torch.Tensor | None = None) -> float:
        """Mean of ``x`` over the valid tokens (or over ``where``); 0 when there are none."""
        where = self.valid if where is None else where
        return float(x[where].float().mean()) if where.any() else 0.0

    def reweight(self, w: torch.Tensor) -> None:
        """Multiply a detached per-token weight (``[B, T]``) into ``weight``."""
        w = w.detach()
        self.weight = w if self.weight is None else self.weight * w

    def in_band(self, ratio: torch.Tensor, low: float, high: float, name: str) -> torch.Tensor:
        """Boolean ``low <= ratio <= high`` (``ratio`` broadcast to ``[B, T]``); the valid tokens
        outside the band are counted in the metrics ``<name>_masked_tokens`` and ``<name>_masked_frac``."""
        keep = ((ratio >= low) & (ratio <= high)).expand_as(self.adv)
        dropped = self.valid & ~keep
        self.metrics[f"{name}_masked_tokens"] = float(dropped.sum())
        self.metrics[f"{name}_masked_frac"] = self.mean(dropped.float())
        return keep

    def behavior_log_ratio(self) -> torch.Tensor | None:
        """``log(pi_old / pi_behavior)`` per token, clamped like the ratio, 0 on padding; None
        when the old policy is the behaviour policy (``off_policy.mode: behavior``)."""
        if self.batch.logp_behavior is None:
            return None
        log_rho = (self.batch.logp_old - self.batch.logp_behavior).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        return log_rho * self.batch.mask

    def sequence_log_ratio(self, mean: bool = False) -> torch.Tensor | None:
        """Per response ``[B, 1]``: the sum (or the mean) of its tokens' log-ratios; None as above."""
        log_rho = self.behavior_log_ratio()
        if log_rho is None:
            return None
        total = log_rho.sum(-1, keepdim=True)
        if not mean:
            return total
        return total / self.batch.mask.sum(-1, keepdim=True).clamp(min=1)
