"""The learner step that every rank runs, in one place (docs/design.md section 8).

    train on the batch (prepare -> proximal pass -> mini-batch updates)
        -> version += 1, step += 1
        -> full weights in the compute dtype, in a fixed order (for the broadcast)
        -> whether the step ends with a checkpoint

With several ranks every line that gathers is a collective, so each rank must run the same
sequence: rank 0 (``loop.py``) pulls the batch, decides whether the step ends with a
checkpoint by time, sends both to the other ranks (``orders.send_order``) and runs this
step; the other ranks (``follow_orders``) receive and run the very same function. Rank 0 then
wraps the result: broadcast to the workers, the gate's new version, metrics. A checkpoint and a
held-out evaluation are collectives too: every rank runs ``checkpoint.save_checkpoint`` and
``heldout.evaluate`` (rank 0 adds the buffer's state and the log).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from buffer.batch import LearnerBatch
from dynamo_async.learner import heldout
from dynamo_async.learner.checkpoint import save_checkpoint
from dynamo_async.learner.distributed import checkpoint_due
from dynamo_async.learner.orders import Evaluate, Step, receive_order
from dynamo_async.learner.trainer import Trainer


@dataclass
class StepResult:
    metrics: dict  # the trainer's figures (loss, lr, entropy, layout, ...)
    weights: dict[str, torch.Tensor]  # full weights in the compute dtype, as workers receive them
    checkpoint: bool  # this step ends with a checkpoint (every rank writes its shards)


def learner_step(trainer: Trainer, batch: LearnerBatch, by_time: bool) -> StepResult:
    """One step on this rank's share of ``batch``; ``by_time``: rank 0's time-based checkpoint
    decision (``trainer.checkpoint_every_s``), the same on every rank."""
    metrics = trainer.train_on(batch)
    trainer.version += 1
    trainer.step += 1
    weights = trainer.named_weights()
    return StepResult(metrics, weights, checkpoint_due(trainer.cfg, trainer.step, by_time))


def follow_orders(trainer: Trainer, run_dir: Path) -> None:
    """A rank other than 0: run each step and evaluation rank 0 orders until it says stop, then
    write its part of the final checkpoint."""
    while (order := receive_order()) is not None:
        if isinstance(order, Evaluate):
            heldout.evaluate(trainer)
            continue
        assert isinstance(order, Step)
        if learner_step(trainer, order.batch, order.checkpoint).checkpoint:
            save_checkpoint(run_dir, trainer)
    save_checkpoint(run_dir, trainer)
