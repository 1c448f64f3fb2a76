"""A learner rank other than 0 (several ranks under torchrun): it builds its trainer (from the
newest checkpoint with ``--resume``) and runs the same step as rank 0 on each batch rank 0 sends
(``learner/step.py``), so the collectives of every step match by construction."""

from __future__ import annotations

from pathlib import Path

from dynamo_async.config.schema import RunConfig
from dynamo_async.learner.checkpoint import latest_checkpoint
from dynamo_async.learner.distributed import DistInfo
from dynamo_async.learner.step import follow_orders
from dynamo_async.learner.trainer import Trainer


def follow(cfg: RunConfig, device: str, info: DistInfo, run_dir: Path, resume: bool) -> int:
    """Train on the batches (and evaluate when) rank 0 says until it says stop; returns the exit status."""
    trainer = Trainer(cfg, device, latest_checkpoint(run_dir) if resume else None, dist_info=info)
    trainer.named_weights()  # rank 0 gathers the starting weights for the workers: a collective
    follow_orders(trainer, run_dir)
    return 0
