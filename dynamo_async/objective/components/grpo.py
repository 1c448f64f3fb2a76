"""GRPO's group-relative advantage (Shao et al. 2024, arXiv 2402.03300; Dr. GRPO without the std).

    R_i = the response's training reward: the sum of the run's reward functions (docs/rewards.md);
          with math-verify alone 2 acc_i - 1 (advantage.reward pm1) or acc_i (acc)
    A_i = (R_i - mean_g R) / (std_g R + eps)        (std_g: population std of the group;
                                                     advantage.scale_by_std false: no division)
Formula module: ``dynamo_async/algo/advantage.py``.
"""

from __future__ import annotations

from dynamo_async.objective.registry import SequenceAdvantage, register


@register
class GroupRelative(SequenceAdvantage):
    """Group-relative advantages (GRPO)."""

    name = "grpo"
    reads = ("advantage.reward", "advantage.eps", "advantage.scale_by_std")

    def advantages(self, acc, group_ids, rewards=None):
        from dynamo_async.algo.advantage import group_advantages, training_rewards

        a = self.cfg.advantage
        r = training_rewards(acc, a.reward) if rewards is None else rewards
        return group_advantages(r, group_ids, a.eps, a.scale_by_std)
