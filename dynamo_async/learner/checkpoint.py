"""Checkpoints: DCP shards of the training state, the model in Hugging Face format, JSON state.

    RUN_DIR/checkpoints/step-000012/
        state/                 float32 masters and AdamW moments as DCP shards, written by every
                               learner rank in parallel; resumes on any number of ranks (shards.py)
        model/                 save_pretrained (safetensors, the float32 masters) + tokenizer: for
                               users, ``eval``, transformers and vLLM (which cast to their dtype at load)
        torch_rng.safetensors  the torch CPU generator state
        trainer_state.json     step, version, optimizer step counts and hyper-parameters, scheduler
        buffer/                the buffer's statistics and counters (BufferService.save_state)
    RUN_DIR/checkpoints/latest  the name of the newest complete checkpoint

Every learner rank calls ``save_checkpoint``: all write their shards of ``state/`` at once, then
gather the masters one tensor at a time into rank 0's memory (the CPU), which writes ``model/``
and the rest. A resume builds the model from ``model/`` and reads the masters and moments from
``state/``, each rank its own shards. The run directory must be on a file system every learner
rank sees (as for any DCP checkpoint).

The newest ``trainer.keep_checkpoints`` are kept. Checkpoints are written every
``trainer.checkpoint_every`` steps, after the first step ending ``trainer.checkpoint_every_s``
seconds after the last one, at the end, and when the learner is stopped (SIGTERM, SIGINT, SIGHUP).

A checkpoint is written into a temporary folder and renamed when complete. Nothing is pickled by
this project; DCP's index ``state/.metadata`` is a torch pickle (``shards.py``).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import msgspec
import torch
from safetensors.torch import load_file, save_file

from dynamo_async.errors import UsageError
from dynamo_async.learner import shards
from dynamo_async.lines import write_atomic


class TrainerState(msgspec.Struct):
    step: int
    version: int
    scheduler_epoch: int
    param_steps: dict[str, float]
    lrs: list[float]


def save_checkpoint(run_dir: Path, trainer, service=None) -> Path | None:
    """Every learner rank: write a checkpoint of ``trainer`` (``service``: rank 0's buffer, whose
    state goes in too). Returns the checkpoint's folder on rank 0, None on the others. A full,
    read-only or forbidden disk is a ``UsageError`` naming the checkpoint to resume from; the
    temporary folder is removed and the last complete checkpoint is left as it was."""
    rank0, sharded = trainer.dist.rank == 0, trainer.dist.sharded
    root = Path(run_dir) / "checkpoints"
    final, tmp = root / f"step-{trainer.step:06d}", root / f".tmp-step-{trainer.step:06d}"
    try:
        if rank0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        if sharded:
            torch.distributed.barrier()  # the folder is there before any rank writes into it
        shards.save_shards(tmp / "state", trainer.masters.named, trainer.opt, sharded)
        weights = gather_masters(trainer.masters.named, sharded, rank0)
        if not rank0:
            return None
        trainer.model.save_pretrained(tmp / "model", state_dict=weights)
        _record_dtype(tmp / "model", weights)
        trainer.tokenizer.save_pretrained(tmp / "model")
        save_file({"state": torch.get_rng_state()}, str(tmp / "torch_rng.safetensors"))
        opt, sched = trainer.opt, trainer.sched
        steps = shards.step_counts(trainer.masters.named, opt)
        state = TrainerState(
            trainer.step, trainer.version, sched.last_epoch, steps, [g["lr"] for g in opt.param_groups]
        )
        (tmp / "trainer_state.json").write_bytes(msgspec.json.encode(state))
        if service is not None:
            service.save_state(tmp / "buffer")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_atomic(root / "latest", final.name)  # a full disk cannot leave it empty
    except (OSError, _dcp_error()) as err:  # evaluated only when something was raised
        no_room = _no_room(err)
        if no_room is None:
            raise
        if rank0:
            shutil.rmtree(tmp, ignore_errors=True)  # the last complete checkpoint stays the newest
        raise _cannot_write(run_dir, final, no_room) from None
    return final


_NO_ROOM = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT)


def _dcp_error() -> type[BaseException]:
    """DCP's exception around what failed on a rank while writing shards."""
    from torch.distributed.checkpoint.api import CheckpointException

    return CheckpointException


def _no_room(err: BaseException) -> OSError | None:
    """The OSError of a full, read-only or forbidden disk in ``err`` (itself, or one that DCP
    wrapped), or None: anything else is not the user's to fix."""
    causes = [err] if isinstance(err, OSError) else [exc for exc, _ in err.failures.values()]
    return next((c for c in causes if isinstance(c, OSError) and c.errno in _NO_ROOM), None)


def _cannot_write(run_dir: Path, final: Path, cause: OSError) -> UsageError:
    """The one line for a checkpoint that could not be written, naming the one to resume from."""
    last = latest_checkpoint(run_dir)
    had = f"the last complete checkpoint is {last.name}" if last else "there is no complete checkpoint yet"
    fix = "free space" if cause.errno in (errno.ENOSPC, errno.EDQUOT) else "make it writable"
    return UsageError(
        f"checkpoint: could not write {final} ({os.strerror(cause.errno)}); {had}; "
        f"{fix} and {'restart with --resume' if last else 'start again'}"
    )


def gather_masters(named: dict[str, torch.Tensor], sharded: bool, keep: bool) -> dict[str, torch.Tensor]:
    """Full float32 masters on the CPU, one tensor at a time (a collective on every rank when
    sharded); only a rank with ``keep`` holds them, the others get an empty dict."""
    out = {}
    for name, t in named.items():
        full = t.detach().full_tensor() if sharded else t.detach()
        if keep:
            out[name] = full.cpu()
    return out


def prune_checkpoints(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints (0: keep all) and any temporary
    folder an interrupted save left; never the one ``latest`` names. Returns what was deleted."""
    root = Path(run_dir) / "checkpoints"
    latest = latest_checkpoint(run_dir)
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    gone = [p for p in root.glob(".tmp-step-*") if p.is_dir()]
    if keep:
        gone += [p for p in done[: max(len(done) - keep, 0)] if p != latest]
    for path in gone:
        shutil.rmtree(path)
    return gone


def _record_dtype(model_dir: Path, weights: dict) -> None:
    """config.json names the dtype of the saved weights (the float32 masters), not the compute
    copy's that ``save_pretrained`` read off the model, so that loads with ``dtype="auto"`` keep
    the masters exact."""
    dtypes = {str(t.dtype).removeprefix("torch.") for t in weights.values() if t.is_floating_point()}
    assert len(dtypes) == 1, dtypes
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config["dtype"] = dtypes.pop()
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def latest_checkpoint(run_dir: Path) -> Path | None:
    marker = Path(run_dir) / "checkpoints" / "latest"
    if not marker.exists():
        return None
    path = marker.parent / marker.read_text().strip()
    return path if path.is_dir() else None


def load_trainer_state(ckpt: Path, trainer) -> TrainerState:
    """Restore masters, optimizer moments, scheduler and RNG into ``trainer`` (built from
    ``ckpt/model``), each rank reading its own shards of ``ckpt/state``."""
    state = msgspec.json.decode((ckpt / "trainer_state.json").read_bytes(), type=TrainerState)
    named, opt, sharded = trainer.masters.named, trainer.opt, trainer.dist.sharded
    if (ckpt / "state").is_dir():
        shards.load_shards(ckpt / "state", named, opt, state.param_steps, sharded)
        trainer.masters.push()
    else:
        _load_moments_file(ckpt / "optimizer.safetensors", named, opt, state.param_steps)
    trainer.sched.last_epoch = state.scheduler_epoch
    for group, lr in zip(opt.param_groups, state.lrs):
        group["lr"] = lr
    torch.set_rng_state(load_file(str(ckpt / "torch_rng.safetensors"))["state"])
    return state


def _load_moments_file(path: Path, named: dict, opt, steps: dict[str, float]) -> None:
    """Moments of a checkpoint written before DCP shards (one full ``optimizer.safetensors``;
    its masters are those of ``model/``)."""
    if not path.exists():
        raise UsageError(
            f"checkpoint: got {path.parent} without state/ or optimizer.safetensors, expected a complete "
            f"checkpoint; resume from an earlier one (write its name into {path.parent.parent / 'latest'})"
        )
    moments = load_file(str(path))
    for name, p in named.items():
        if name in steps:
            opt.state[p] = {
                "step": torch.tensor(steps[name]),
                "exp_avg": _like(p, moments[f"{name}/exp_avg"]),
                "exp_avg_sq": _like(p, moments[f"{name}/exp_avg_sq"]),
            }


def _like(param, full: torch.Tensor) -> torch.Tensor:
    """``full`` laid out like ``param``: sharded the same way for an FSDP2 (DTensor) parameter."""
    if hasattr(param, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(param.dtype), param.device_mesh, param.placements)
    return full.to(device=param.device, dtype=param.dtype)  # e.g. bf16 moments of an older run
