"""GRPO's group-relative advantage (Shao et al. 2024, arXiv 2402.03300; Dr. GRPO without the std).

    R_i = 2 acc_i - 1 (advantage.reward pm1) or acc_i (acc)
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

    def advantages(self, acc, group_ids):
        from dynamo_async.algo.advantage import group_advantages, training_rewards

        a = self.cfg.advantage
        return group_advantages(training_rewards(acc, a.reward), group_ids, a.eps, a.scale_by_std)
