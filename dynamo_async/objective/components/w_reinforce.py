"""W-REINFORCE (Zhu et al. 2025, arXiv 2506.01347, "The surprising effectiveness of negative
reinforcement in LLM reasoning").

    A_i = lambda  if response i is correct,   A_i = -1  otherwise      (no group baseline)

Formula module: ``dynamo_async/algo/baselines/w_reinforce.py``.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from dynamo_async.config.section import Section
from dynamo_async.objective.registry import SequenceAdvantage, register


class WReinforceSettings(Section):
    positive: Annotated[float, Meta(ge=0.0, description="Advantage lambda of a correct response (paper: 0.1).")] = 0.1


@register
class WReinforce(SequenceAdvantage):
    """W-REINFORCE: lambda for a correct response, -1 for a wrong one."""

    name = "w_reinforce"
    settings_type = WReinforceSettings

    def advantages(self, acc, group_ids, rewards=None):  # from success alone: rewards unused
        from dynamo_async.algo.baselines.w_reinforce import w_reinforce_advantages

        return w_reinforce_advantages(acc, self.settings.positive)
