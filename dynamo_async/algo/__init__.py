"""DynaMO's algorithms and the Table 1 baselines, one small module each (docs/design.md section 4)."""

from dynamo_async.algo.advantage import group_advantages, training_rewards
from dynamo_async.algo.aggregation import aggregate
from dynamo_async.algo.allocation import allocation_priority, bernoulli_variance, water_fill
from dynamo_async.algo.entropy_change import entropy_change
from dynamo_async.algo.logprobs import TokenStats, token_logprobs, token_stats
from dynamo_async.algo.modulation import compensation, stabilization
from dynamo_async.algo.policy_loss import clipped_token_loss, truncated_is_weights

__all__ = [
    "TokenStats",
    "aggregate",
    "allocation_priority",
    "bernoulli_variance",
    "clipped_token_loss",
    "compensation",
    "entropy_change",
    "group_advantages",
    "stabilization",
    "token_logprobs",
    "token_stats",
    "training_rewards",
    "truncated_is_weights",
    "water_fill",
]
