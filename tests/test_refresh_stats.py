"""Later mini-batches are trained with the statistics of the weights they are trained from."""

from pathlib import Path

import pytest
import torch
from objective_reference import fixed_batch

from dynamo_async.config import load_config

TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"


def _trainer(refresh: bool):
    from dynamo_async.learner.trainer import Trainer

    cfg = load_config(
        TINY,
        [
            "model.name=builtin:tiny",
            "method=dynamo",
            "optim.mini_batch_prompts=1",  # one group per mini-batch: several optimizer steps
            "optim.lr=1e-3",
            f"optim.refresh_stats={str(refresh).lower()}",
        ],
    )
    torch.manual_seed(0)
    return Trainer(cfg, "cpu")


def _used_and_current(trainer, monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Train one step; for each micro-batch the objective sees: the entropy it was given, the
    entropy of the weights at that moment, and the mask."""
    seen = []
    call = type(trainer.objective).__call__

    def spy(self, logits, batch, generator=None, entropy_metric=True):
        with torch.no_grad():
            now = self.proximal_stats(logits.detach(), batch.tokens, mask=batch.mask).entropy
        seen.append((batch.entropy.clone(), now, batch.mask))
        return call(self, logits, batch, generator, entropy_metric)

    monkeypatch.setattr(type(trainer.objective), "__call__", spy)
    trainer.train_on(fixed_batch(trainer.model.config.vocab_size))
    return seen


@pytest.mark.parametrize("refresh", [True, False])
def test_each_mini_batch_uses_the_entropy_of_the_weights_it_is_trained_from(refresh, monkeypatch):
    seen = _used_and_current(_trainer(refresh), monkeypatch)
    assert len(seen) >= 3, "several mini-batches, each with an optimizer step"
    first, later = seen[0], seen[1:]
    torch.testing.assert_close(first[0] * first[2], first[1] * first[2])  # the proximal pass's weights
    gaps = [float(((used - now).abs() * m).max()) for used, now, m in later]
    if refresh:
        assert max(gaps) < 1e-5, gaps
    else:  # the proximal pass's entropy, from weights that have moved since
        assert min(gaps) > 1e-4, gaps
