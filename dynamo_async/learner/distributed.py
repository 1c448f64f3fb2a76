"""Several learner ranks: FSDP2 sharding, batch split, equal collective counts, full weights.

Every rank holds a ``fully_shard``-ed copy of the model (each decoder layer, then the root)
in the default process group, which is FSDP's (the weight sync uses a private group). A
mini-batch of groups is split across ranks (rank r takes groups r, r+W, ...), with the loss
normalised by the whole mini-batch's totals; FSDP averages gradients over ranks, so each
rank scales its loss by the world size to get the sum. All ranks must run the same number of
forward passes, so shorter micro-batch lists are padded with fully masked copies. Before a
weight broadcast, all ranks gather the full tensors in the same fixed order
(``DTensor.full_tensor``); rank 0 sends them. Rank 0 tells the other ranks what to do next
(``orders.py``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dynamo_async.errors import UsageError
from dynamo_async.weights.group import collective_backend


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    fsdp: bool | None = None  # None: shard when there are several ranks (True: also with one)

    @property
    def sharded(self) -> bool:
        return self.world > 1 if self.fsdp is None else self.fsdp


def shard_model(model: torch.nn.Module, compute: torch.dtype = torch.float32) -> None:
    """FSDP2 over the default process group: each decoder layer, then the whole model; the
    float32 shards are the masters, compute runs in ``compute`` (``precision.fsdp_policy``)."""
    from torch.distributed.fsdp import fully_shard

    from dynamo_async.learner.precision import fsdp_policy

    policy = fsdp_policy(compute)

    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise UsageError(
            f"FSDP sharding: got a {type(model).__name__} without model.layers, expected a "
            "decoder-only transformers model (Llama, Qwen2, ...)"
        )
    for layer in layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


def full_weights(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Full tensors of every parameter in ``dtype``, gathered on every rank in ``named_parameters``
    order (each shard is cast first, so a bf16 gather moves half of float32's bytes)."""
    out = {}
    for n, p in model.named_parameters():
        local = p.detach().to(dtype)
        out[n] = local.full_tensor() if hasattr(local, "full_tensor") else local
    return out


def equalize(minis: list, info: DistInfo) -> list:
    """Pad each mini-batch's ``update`` and ``stats_only`` lists to the longest across ranks with
    masked copies (every rank runs the same forward and backward passes, FSDP's collectives).
    A rank without a group in some mini-batch (the last one, shorter than the ranks) pads it
    with masked copies of one of its other micro-batches; every rank has one, because each holds
    a group of the first mini-batch (``batching.check_split``)."""
    if not info.sharded:
        return minis
    counts = torch.tensor([n for m in minis for n in (len(m.update), len(m.stats_only))], dtype=torch.int64)
    dist.all_reduce(counts, op=dist.ReduceOp.MAX)
    targets = counts.view(-1, 2).tolist()
    mine = [mb for m in minis for mb in m.all()]
    assert mine, "every rank holds a group of the first mini-batch"
    for mini, (n_update, n_stats) in zip(minis, targets):
        template = mini.all()[-1] if mini.all() else mine[-1]
        mini.update += [_masked_copy(template) for _ in range(n_update - len(mini.update))]
        mini.stats_only += [_masked_copy(template) for _ in range(n_stats - len(mini.stats_only))]
    return minis


def max_over_ranks(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """The max of each value over the learner ranks (every rank holds the same keys)."""
    if not info.sharded or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return dict(zip(keys, t.tolist()))


def _masked_copy(mb):
    """A micro-batch that runs the same collectives but contributes no loss or gradient."""
    return dataclasses.replace(
        mb,
        mask=torch.zeros_like(mb.mask),
        advantages=torch.zeros_like(mb.advantages),
        padded_tokens=mb.computed_tokens,
        extra={**mb.extra, "padding": True},
    )


def init_from_env(device: str) -> DistInfo:
    """Join the learner ranks torchrun started (WORLD_SIZE > 1); a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistInfo()
    if device.startswith("cuda"):  # one GPU per rank; "cuda" then means this rank's own
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # The model's collectives run on the device's backend; orders and statistics are CPU tensors.
    backend = collective_backend(device)
    dist.init_process_group(backend if backend == "gloo" else f"cpu:gloo,cuda:{backend}")
    return DistInfo(dist.get_rank(), dist.get_world_size())


def leave(info: DistInfo, code: int) -> int:
    """Every rank, at the end: wait for the others, take the process group down and, with
    several ranks, end the process now. Interpreter finalization can destroy gloo objects
    whose worker threads still run, which aborts the rank ("terminate called without an
    active exception", seen here about once in ten test runs; pytorch/pytorch#179291 describes
    the mechanism). Everything is written and flushed before this point."""
    if info.world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def checkpoint_due(cfg, step: int, by_time: bool = False) -> bool:
    """A checkpoint after ``step``: every ``trainer.checkpoint_every`` steps, or when rank 0's
    clock says so (``by_time``, sent to the other ranks with the step's batch)."""
    every = cfg.trainer.checkpoint_every
    return by_time or (bool(every) and step % every == 0)
