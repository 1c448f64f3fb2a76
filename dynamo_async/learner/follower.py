"""A learner rank other than 0 (several ranks under torchrun): it trains its share of each batch
that rank 0 sends and joins every collective rank 0 runs (the weight gather of each broadcast,
the gathers of each checkpoint), in the same order (``learner/distributed.py``)."""

from __future__ import annotations

from pathlib import Path

from dynamo_async.config.schema import RunConfig
from dynamo_async.learner.checkpoint import latest_checkpoint
from dynamo_async.learner.distributed import DistInfo, checkpoint_due, receive_batch
from dynamo_async.learner.trainer import Trainer


def follow(cfg: RunConfig, device: str, info: DistInfo, run_dir: Path, resume: bool) -> int:
    """Train on the batches rank 0 sends until it says stop; returns the exit status."""
    trainer = Trainer(cfg, device, latest_checkpoint(run_dir) if resume else None, dist_info=info)
    while (received := receive_batch()) is not None:
        batch, by_time = received
        trainer.train_on(batch)
        trainer.step += 1
        trainer.named_weights()  # rank 0 gathers the full weights to broadcast them
        if checkpoint_due(cfg, trainer.step, by_time):
            trainer.full_state()
    trainer.full_state()  # the final checkpoint
    return 0
