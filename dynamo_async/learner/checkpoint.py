"""Checkpoints: model in Hugging Face format, optimizer as safetensors, state as JSON.

    RUN_DIR/checkpoints/step-000012/
        model/                 save_pretrained (safetensors, the float32 masters) + tokenizer: loadable by
                               transformers and vLLM (which cast to their dtype at load)
        optimizer.safetensors  AdamW moments per parameter name ("<name>/exp_avg", "<name>/exp_avg_sq")
        torch_rng.safetensors  the torch CPU generator state
        trainer_state.json     step, version, optimizer step counts and hyper-parameters, scheduler
        buffer/                the buffer's statistics and counters (BufferService.save_state)
    RUN_DIR/checkpoints/latest  the name of the newest complete checkpoint

The newest ``trainer.keep_checkpoints`` are kept. Checkpoints are written every
``trainer.checkpoint_every`` steps, after the first step ending ``trainer.checkpoint_every_s``
seconds after the last one, at the end, and when the learner is stopped (SIGTERM, SIGINT, SIGHUP).

Nothing is pickled. A checkpoint is written into a temporary folder and renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import msgspec
import torch
from safetensors.torch import load_file, save_file


class TrainerState(msgspec.Struct):
    step: int
    version: int
    scheduler_epoch: int
    param_steps: dict[str, float]
    lrs: list[float]


def save_checkpoint(
    run_dir: Path, step: int, version: int, model, tokenizer, opt, sched, service, full: FullState
) -> Path:
    """Write a checkpoint; ``full`` holds the float32 master weights and the optimizer moments
    (``Trainer.full_state``, gathered from every rank when sharded): the model is saved from it."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp / "model", state_dict=full.weights)
    _record_dtype(tmp / "model", full.weights)
    tokenizer.save_pretrained(tmp / "model")
    save_file(full.moments, str(tmp / "optimizer.safetensors"))
    save_file({"state": torch.get_rng_state()}, str(tmp / "torch_rng.safetensors"))
    state = TrainerState(step, version, sched.last_epoch, full.steps, [g["lr"] for g in opt.param_groups])
    (tmp / "trainer_state.json").write_bytes(msgspec.json.encode(state))
    service.save_state(tmp / "buffer")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    (root / "latest").write_text(final.name)
    return final


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


class FullState(msgspec.Struct):
    """Full (unsharded) weights and AdamW moments, gathered on every learner rank."""

    weights: dict
    moments: dict
    steps: dict


def optimizer_moments(named: dict, opt, gather=lambda t: t) -> tuple[dict, dict]:
    """AdamW moments by "<param name>/exp_avg" / "/exp_avg_sq", and steps by name (fixed order);
    ``named`` maps names to the tensors the optimizer updates (the float32 masters)."""
    moments, steps = {}, {}
    for name, p in named.items():
        st = opt.state.get(p)
        if not st:
            continue
        moments[f"{name}/exp_avg"] = gather(st["exp_avg"]).contiguous()
        moments[f"{name}/exp_avg_sq"] = gather(st["exp_avg_sq"]).contiguous()
        steps[name] = float(st["step"])
    return moments, steps


def latest_checkpoint(run_dir: Path) -> Path | None:
    marker = Path(run_dir) / "checkpoints" / "latest"
    if not marker.exists():
        return None
    path = marker.parent / marker.read_text().strip()
    return path if path.is_dir() else None


def load_trainer_state(ckpt: Path, named: dict, opt, sched) -> TrainerState:
    """Restore optimizer moments, scheduler and RNG into objects built from ``ckpt/model``;
    ``named`` maps names to the masters the optimizer updates (a sharded parameter gets its
    shard of each full moment)."""
    state = msgspec.json.decode((ckpt / "trainer_state.json").read_bytes(), type=TrainerState)
    moments = load_file(str(ckpt / "optimizer.safetensors"))
    for name, p in named.items():
        if name in state.param_steps:
            opt.state[p] = {
                "step": torch.tensor(state.param_steps[name]),
                "exp_avg": _like(p, moments[f"{name}/exp_avg"]),
                "exp_avg_sq": _like(p, moments[f"{name}/exp_avg_sq"]),
            }
    sched.last_epoch = state.scheduler_epoch
    for group, lr in zip(opt.param_groups, state.lrs):
        group["lr"] = lr
    torch.set_rng_state(load_file(str(ckpt / "torch_rng.safetensors"))["state"])
    return state


def _like(param, full: torch.Tensor) -> torch.Tensor:
    """``full`` laid out like ``param``: sharded the same way for an FSDP2 (DTensor) parameter."""
    if hasattr(param, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(param.dtype), param.device_mesh, param.placements)
    return full.to(device=param.device, dtype=param.dtype)  # e.g. bf16 moments of an older run
