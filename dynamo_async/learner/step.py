"""The learner step that every rank runs, in one place (docs/design.md section 8).

    train on the batch (prepare -> proximal pass -> mini-batch updates)
        -> version += 1, step += 1
        -> full weights in the compute dtype, in a fixed order (for the broadcast)
        -> the checkpoint's full state, when due

With several ranks every line that gathers is a collective, so each rank must run the same
sequence: rank 0 (``loop.py``) pulls the batch, decides whether the step ends with a
checkpoint by time, sends both to the other ranks (``distributed.send_batch``) and runs this
step; the other ranks (``follow_steps``) receive and run the very same function. Rank 0 then wraps
the result: broadcast to the workers, the gate's new version, metrics, checkpoint files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from buffer.batch import LearnerBatch
from dynamo_async.learner.checkpoint import FullState
from dynamo_async.learner.distributed import checkpoint_due, receive_batch
from dynamo_async.learner.trainer import Trainer


@dataclass
class StepResult:
    metrics: dict  # the trainer's figures (loss, lr, entropy, layout, ...)
    weights: dict[str, torch.Tensor]  # full weights in the compute dtype, as workers receive them
    checkpoint: FullState | None  # the full state to save, when this step ends with a checkpoint


def learner_step(trainer: Trainer, batch: LearnerBatch, by_time: bool) -> StepResult:
    """One step on this rank's share of ``batch``; ``by_time``: rank 0's time-based checkpoint
    decision (``trainer.checkpoint_every_s``), the same on every rank."""
    metrics = trainer.train_on(batch)
    trainer.version += 1
    trainer.step += 1
    weights = trainer.named_weights()
    due = checkpoint_due(trainer.cfg, trainer.step, by_time)
    return StepResult(metrics, weights, trainer.full_state() if due else None)


def follow_steps(trainer: Trainer) -> None:
    """A rank other than 0: run each step rank 0 sends until it says stop, then join the final
    checkpoint's gather (rank 0 writes the files)."""
    while (received := receive_batch()) is not None:
        learner_step(trainer, *received)
    trainer.full_state()
