"""The learner's training state as ``torch.distributed.checkpoint`` (DCP) shards.

One state dict, the same on every rank::

    {"model": {name: float32 master},
     "optim": {"<name>/exp_avg": AdamW first moment, "<name>/exp_avg_sq": second moment}}

With several ranks the masters and moments are FSDP2 ``DTensor`` s: ``dcp.save`` has every rank
write its own shards in parallel (one file per rank, ``__<rank>_0.distcp``) and rank 0 the
index (``.metadata``); nothing is gathered. ``dcp.load`` fills a state dict laid out for the
ranks that read it, so a checkpoint resumes on any number of ranks: each rank reads only the
byte ranges of its own shards, and one process reads full tensors. The optimizer's step counts
live in ``trainer_state.json`` (``checkpoint.py``).

The tensor files are read back with ``torch.load(weights_only=True)``; DCP's ``.metadata`` index
is a pickle written by torch, so load only checkpoints you trust (as with any torch checkpoint).
"""

from __future__ import annotations

from pathlib import Path

import torch

_MOMENTS = ("exp_avg", "exp_avg_sq")


def save_shards(path: Path, named: dict[str, torch.Tensor], opt, sharded: bool) -> None:
    """Every learner rank: write its shards of the masters ``named`` and their moments."""
    import torch.distributed.checkpoint as dcp

    writer = dcp.FileSystemWriter(str(path), thread_count=2)
    dcp.save(_state_dict(named, opt), storage_writer=writer, no_dist=not sharded)


@torch.no_grad()
def load_shards(path: Path, named: dict[str, torch.Tensor], opt, steps: dict[str, float], sharded: bool) -> None:
    """Every learner rank: read the masters ``named`` in place and rebuild the AdamW state of
    each parameter with a step count in ``steps``, laid out like its master (this rank's shard
    when sharded)."""
    import torch.distributed.checkpoint as dcp

    moments = {n: {m: torch.zeros_like(p) for m in _MOMENTS} for n, p in named.items() if n in steps}
    state = {
        "model": {n: p.detach() for n, p in named.items()},
        "optim": {f"{n}/{m}": t for n, ms in moments.items() for m, t in ms.items()},
    }
    dcp.load(state, storage_reader=dcp.FileSystemReader(str(path)), no_dist=not sharded)
    for name, ms in moments.items():
        opt.state[named[name]] = {"step": torch.tensor(steps[name]), **ms}


def step_counts(named: dict[str, torch.Tensor], opt) -> dict[str, float]:
    """The AdamW step count of each parameter the optimizer has stepped, by name."""
    return {n: float(opt.state[p]["step"]) for n, p in named.items() if opt.state.get(p)}


def _state_dict(named: dict[str, torch.Tensor], opt) -> dict:
    optim = {}
    for name, p in named.items():
        st = opt.state.get(p)
        for m in _MOMENTS if st else ():
            optim[f"{name}/{m}"] = st[m]
    return {"model": {n: p.detach() for n, p in named.items()}, "optim": optim}
