"""Run by tests/test_fsdp.py under torchrun: a sharded trainer that checkpoints and resumes.

``full OUT CKPT_ROOT``: 4 steps on fixed batches, a checkpoint after step 2 (written by
``checkpoint.save_checkpoint`` on every rank, as the learner does: DCP shards and the HF
model), then the float32 masters and AdamW moments after step 4 to OUT. ``resume OUT CKPT``: a trainer built
from that checkpoint runs steps 3 and 4 on the same batches and writes the same to OUT.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from fsdp_ranks import config, fixed_batch

from dynamo_async.learner import checkpoint
from dynamo_async.learner.distributed import DistInfo, leave
from dynamo_async.learner.step import learner_step


def batches(vocab: int) -> list:
    return [fixed_batch(vocab, 4 + step % 2) for step in range(4)]


def main(mode: str, out: str, where: str) -> None:
    from safetensors.torch import save_file

    from dynamo_async.learner.trainer import Trainer
    from dynamo_async.models import resolve_model

    cfg = config("dynamo", "optim.mini_batch_prompts=2", "trainer.checkpoint_every=0", "trainer.checkpoint_every_s=0")
    resolve_model(cfg.model.name)
    dist.init_process_group("gloo")
    info = DistInfo(dist.get_rank(), dist.get_world_size(), fsdp=True)
    torch.manual_seed(0)
    trainer = Trainer(cfg, "cpu", Path(where) if mode == "resume" else None, dist_info=info)
    for batch in batches(trainer.model.config.vocab_size)[trainer.step :]:
        learner_step(trainer, batch, by_time=False)
        if mode == "full" and trainer.step == 2:
            checkpoint.save_checkpoint(Path(where), trainer)  # every rank writes its shards
    state = trainer.full_state()  # a collective: every rank
    if info.rank == 0:
        save_file({k: v.contiguous() for k, v in state.items()}, out)
    leave(info, 0)


if __name__ == "__main__":
    main(*sys.argv[1:4])
