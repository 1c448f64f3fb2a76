"""The learner's policy objective for one micro-batch, as a sequence of named steps.

    1. token statistics     log-probs (grad), entropy and vocabulary sums when needed
    2. token advantages     sequence advantage on every response token (+ entropy shaping)
    3. modulation           DynaMO: A * beta_comp * beta_stab (Eqs. 3-4), all detached
    4. per-token loss       clipped / dual-clipped (or a baseline's loss), IS-weighted
    5. aggregation          token-mean / seq-mean-token-mean / seq-mean-token-sum-norm
    6. regularisers         entropy bonus (entropy-loss baseline)

``method`` picks DynaMO or one Table 1 baseline (config ``method``); each piece is a small
module of ``dynamo_async.algo`` with its formula in the docstring.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dynamo_async.algo import policy_loss
from dynamo_async.algo.advantage import group_advantages, training_rewards
from dynamo_async.algo.aggregation import aggregate
from dynamo_async.algo.baselines.clip_cov import clip_cov_keep
from dynamo_async.algo.baselines.clip_higher import clip_range
from dynamo_async.algo.baselines.entropy_advantage import entropy_shaped_advantages
from dynamo_async.algo.baselines.entropy_loss import entropy_bonus
from dynamo_async.algo.baselines.fork_tokens import high_entropy_mask
from dynamo_async.algo.baselines.kl_cov import kl_cov_token_loss
from dynamo_async.algo.baselines.w_reinforce import w_reinforce_advantages
from dynamo_async.algo.entropy_change import entropy_change
from dynamo_async.algo.logprobs import TokenStats, token_stats
from dynamo_async.algo.modulation import beta_histogram, compensation, stabilization
from dynamo_async.config.schema import RunConfig


@dataclass(frozen=True)
class PolicyBatch:
    """One micro-batch of responses, right-padded to ``[B, T]``.

    ``logp_old`` is the proximal policy (``off_policy.mode: decoupled``) or the behaviour
    policy (``behavior``); ``logp_behavior`` is the worker's, used for the IS weight.
    ``total_tokens``/``total_seqs`` are the mini-batch totals for gradient accumulation.
    ``entropy``/``vocab_sum``, when given, come from the proximal pass (``proximal_stats``,
    docs/design.md section 8) and the training forward then computes log-probs only.
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


def sequence_advantages(acc, group_ids, cfg: RunConfig) -> torch.Tensor:
    """One advantage per response: W-REINFORCE's, or the group-relative GRPO advantage."""
    if cfg.method == "w_reinforce":
        return w_reinforce_advantages(acc, cfg.baselines.w_reinforce_positive)
    rewards = training_rewards(torch.as_tensor(acc), cfg.advantage.reward)
    return group_advantages(rewards, group_ids, cfg.advantage.eps, cfg.advantage.scale_by_std)


def policy_objective(
    logits: torch.Tensor,
    batch: PolicyBatch,
    cfg: RunConfig,
    generator: torch.Generator | None = None,
    entropy_metric: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Scalar loss to backpropagate and the step's metrics (means over valid tokens)."""
    stats = _token_statistics(logits, batch, cfg, entropy_metric)
    adv = _token_advantages(batch, stats, cfg)
    r = policy_loss.ratio(stats.logp.detach(), batch.logp_old)
    adv, metrics = _modulate(adv, stats, r, batch, cfg)
    per_token, train_mask, loss_metrics = _per_token_loss(stats, batch, adv, cfg, generator)
    loss = _aggregate(per_token, train_mask, batch, cfg)
    if cfg.method == "entropy_loss":
        loss = loss + entropy_bonus(
            stats.entropy, batch.mask, cfg.baselines.entropy_coef, cfg.loss.aggregation, **_totals(batch, cfg)
        )
    metrics.update(loss_metrics)
    metrics.update(_summary(stats, r, batch))
    return loss, metrics


def clip_bounds(cfg: RunConfig) -> tuple[float, float]:
    """(eps_low, eps_high) the method trains with."""
    if cfg.method == "clip_higher":
        return clip_range(cfg.loss.eps_low, cfg.baselines.clip_higher_eps_high)
    if cfg.method == "clip_cov":
        return cfg.baselines.clip_cov_eps, cfg.baselines.clip_cov_eps
    return cfg.loss.eps_low, cfg.loss.eps_high


@torch.no_grad()
def proximal_stats(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    cfg: RunConfig,
    entropy_metric: bool = True,
    mask: torch.Tensor | None = None,
) -> TokenStats:
    """The proximal pass: log-probs plus the entropy and vocabulary sums the method needs."""
    entropy, vocab_sum = _needs(cfg)
    return token_stats(
        logits,
        tokens,
        cfg.rollout.temperature,
        cfg.loss.logprob_chunk_size,
        entropy=entropy or entropy_metric,
        vocab_sum=vocab_sum,
        mask=mask,
    )


def _needs(cfg: RunConfig) -> tuple[bool, bool]:
    """(entropy, vocabulary sum) the method's loss needs."""
    m = cfg.modulation
    modulated = cfg.method == "dynamo" and (m.compensation or m.stabilization)
    exact = modulated and m.stabilization and m.entropy_change == "exact"
    needs_entropy = modulated or cfg.method in ("entropy_loss", "fork_tokens", "entropy_advantage")
    return needs_entropy, exact


def _token_statistics(logits, batch: PolicyBatch, cfg: RunConfig, entropy_metric: bool) -> TokenStats:
    entropy, vocab_sum = _needs(cfg)
    entropy_grad = cfg.method == "entropy_loss"
    have = batch.entropy is not None and (batch.vocab_sum is not None or not vocab_sum)
    if have and not entropy_grad:
        logp = token_stats(
            logits, batch.tokens, cfg.rollout.temperature, cfg.loss.logprob_chunk_size, mask=batch.mask
        ).logp
        return TokenStats(logp=logp, entropy=batch.entropy, vocab_sum=batch.vocab_sum)
    return token_stats(
        logits,
        batch.tokens,
        cfg.rollout.temperature,
        cfg.loss.logprob_chunk_size,
        entropy=entropy or entropy_metric,
        vocab_sum=vocab_sum,
        entropy_grad=entropy_grad,
        mask=None if entropy_grad else batch.mask,
    )


def _token_advantages(batch: PolicyBatch, stats: TokenStats, cfg: RunConfig) -> torch.Tensor:
    adv = batch.advantages.float()
    if adv.dim() == 1:
        adv = adv[:, None].expand_as(batch.mask)
    adv = adv * batch.mask
    if cfg.method == "entropy_advantage":
        b = cfg.baselines
        adv = entropy_shaped_advantages(adv, stats.entropy.detach(), b.entropy_adv_alpha, b.entropy_adv_kappa)
    return adv


def _modulate(adv, stats: TokenStats, r, batch: PolicyBatch, cfg: RunConfig):
    m = cfg.modulation
    if cfg.method != "dynamo" or not (m.compensation or m.stabilization):
        return adv, {}
    beta = torch.ones_like(adv)
    valid = batch.mask.bool()
    metrics: dict[str, float] = {}
    if m.compensation:
        comp = compensation(stats.entropy, adv, batch.mask, m.alpha)
        beta = beta * comp
        metrics["beta_comp_mean"] = _mean(comp, valid)
        metrics["beta_comp_hist"] = beta_histogram(comp[valid & (adv > 0)], 1.0, 1.0 + m.alpha)
    if m.stabilization:
        eps_low, eps_high = clip_bounds(cfg)
        xi = entropy_change(
            stats.logp,
            stats.entropy,
            r,
            adv,
            batch.mask,
            eps_low,
            eps_high,
            m.entropy_change,
            stats.vocab_sum,
            _dual_clip(cfg),
        )
        stab = stabilization(xi, batch.mask, m.lambda_min, m.gamma, m.tau)
        beta = beta * stab
        metrics["beta_stab_mean"] = _mean(stab, valid)
        metrics["beta_stab_min"] = float(stab[valid].min()) if valid.any() else 1.0
        metrics["beta_stab_hist"] = beta_histogram(stab[valid], m.lambda_min, 1.0)
    return adv * beta, metrics


def _per_token_loss(stats: TokenStats, batch: PolicyBatch, adv, cfg: RunConfig, generator):
    mask = batch.mask.bool()
    weights = _is_weights(batch, cfg)
    if cfg.method == "kl_cov":
        b = cfg.baselines
        loss, selected = kl_cov_token_loss(stats.logp, batch.logp_old, adv, batch.mask, b.kl_cov_ratio, b.kl_cov_coef)
        loss = loss * weights if weights is not None else loss
        return loss, mask, {"kl_cov_frac": _mean(selected.float(), mask)}
    eps_low, eps_high = clip_bounds(cfg)
    loss, info = policy_loss.clipped_token_loss(
        stats.logp, batch.logp_old, adv, eps_low, eps_high, _dual_clip(cfg), weights
    )
    metrics = {
        "clip_frac": _mean(info["clipped"].float(), mask),
        "dual_clip_frac": _mean(info["dual_clipped"].float(), mask),
    }
    if cfg.method == "clip_cov":
        b = cfg.baselines
        keep = clip_cov_keep(
            adv, stats.logp, batch.mask, info["clipped"], b.clip_cov_ratio, b.clip_cov_lb, b.clip_cov_ub, generator
        )
        loss = loss * keep
        metrics["clip_cov_frac"] = _mean(1.0 - keep, mask)
    if cfg.method == "fork_tokens":
        mask = high_entropy_mask(stats.entropy, batch.mask, cfg.baselines.fork_top_ratio)
        metrics["fork_frac"] = _mean(mask.float(), batch.mask.bool())
    return loss, mask, metrics


def _aggregate(per_token, train_mask, batch: PolicyBatch, cfg: RunConfig) -> torch.Tensor:
    if cfg.method != "fork_tokens":
        return aggregate(per_token, train_mask, cfg.loss.aggregation, **_totals(batch, cfg))
    # Fork tokens: token-mean over the selected tokens of this micro-batch, weighted by the
    # micro-batch's share of the mini-batch's tokens (verl's micro/mini scaling).
    local = aggregate(per_token, train_mask, "token-mean")
    if batch.total_tokens is None:
        return local
    return local * (batch.mask.sum() / batch.total_tokens)


def _totals(batch: PolicyBatch, cfg: RunConfig) -> dict:
    # Dr. GRPO's constant length L is the response cap, so micro-batches padded to different
    # lengths accumulate to the mini-batch's value.
    return {
        "total_tokens": batch.total_tokens,
        "total_seqs": batch.total_seqs,
        "norm_length": cfg.rollout.max_new_tokens,
    }


def _dual_clip(cfg: RunConfig) -> float | None:
    """Clip-Cov has no dual clip (its reference loss); every other method uses ``loss.dual_clip_c``."""
    return None if cfg.method == "clip_cov" else cfg.loss.dual_clip_c


def _is_weights(batch: PolicyBatch, cfg: RunConfig) -> torch.Tensor | None:
    if cfg.off_policy.mode != "decoupled" or batch.logp_behavior is None:
        return None
    return policy_loss.truncated_is_weights(batch.logp_old, batch.logp_behavior, cfg.off_policy.is_cap)


def _summary(stats: TokenStats, r, batch: PolicyBatch) -> dict[str, float]:
    valid = batch.mask.bool()
    out = {"ratio_mean": _mean(r, valid)}
    if stats.entropy is not None:
        out["entropy"] = _mean(stats.entropy.detach(), valid)
    if batch.logp_behavior is not None:
        w = policy_loss.ratio(batch.logp_old, batch.logp_behavior)
        out["is_weight_mean"] = _mean(w, valid)
        out["is_weight_max"] = float(w[valid].max()) if valid.any() else 1.0
        out["kl_behavior_proximal"] = _mean(w - 1.0 - torch.log(w), valid)
    return out


def _mean(x: torch.Tensor, valid: torch.Tensor) -> float:
    return float(x[valid].float().mean()) if valid.any() else 0.0
