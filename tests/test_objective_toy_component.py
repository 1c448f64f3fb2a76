"""A new loss is one file: this test-only component registers itself and runs through the
config and the objective with no edit anywhere else (docs/design.md section 4.6)."""

from __future__ import annotations

from typing import Annotated

import pytest
import torch
from msgspec import Meta

from dynamo_async.algo.objective import PolicyBatch, assemble, policy_objective
from dynamo_async.config import load_config
from dynamo_async.config.section import Section
from dynamo_async.objective.registry import TokenLoss, register


class ToyReinforceSettings(Section):
    scale: Annotated[float, Meta(gt=0.0, description="Multiplies the loss.")] = 1.0


@register
class ToyReinforce(TokenLoss):
    """REINFORCE without a ratio: l_t = -scale * A_t * logp_t."""

    name = "toy_reinforce"
    settings_type = ToyReinforceSettings  # no config section: built from the defaults below

    def per_token(self, s):
        return -self.settings.scale * s.adv * s.stats.logp


def test_a_registered_test_only_loss_runs_from_the_config_by_its_name():
    cfg = load_config(None, ["model.name=x", "method=grpo", "objective.token_loss=toy_reinforce"])
    assert type(assemble(cfg).token_loss) is ToyReinforce
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, generator=g, requires_grad=True)
    tokens = torch.randint(0, 4, (2, 3), generator=g)
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    adv = torch.tensor([0.5, -1.0])
    batch = PolicyBatch(tokens, mask, adv, logp_old=torch.zeros(2, 3))
    loss, _ = policy_objective(logits, batch, cfg)
    logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    assert loss.item() == pytest.approx(float((-(adv[:, None] * logp) * mask).sum() / mask.sum()), rel=1e-6)
