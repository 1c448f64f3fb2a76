"""Checkpoints: model in Hugging Face format, optimizer as safetensors, state as JSON.

    RUN_DIR/checkpoints/step-000012/
        model/                 save_pretrained (safetensors) + tokenizer: loadable by transformers and vLLM
        optimizer.safetensors  AdamW moments per parameter name ("<name>/exp_avg", "<name>/exp_avg_sq")
        torch_rng.safetensors  the torch CPU generator state
        trainer_state.json     step, version, optimizer step counts and hyper-parameters, scheduler
        buffer/                the buffer's statistics and counters (BufferService.save_state)
    RUN_DIR/checkpoints/latest  the name of the newest complete checkpoint

Nothing is pickled. A checkpoint is written into a temporary folder and renamed when complete.
"""

from __future__ import annotations

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


def save_checkpoint(run_dir: Path, step: int, version: int, model, tokenizer, opt, sched, service,
                    full_weights: dict | None = None) -> Path:
    """Write a checkpoint; ``full_weights`` (several learner ranks) are the gathered weights: the
    model is saved from them and the sharded optimizer moments are not saved (no resume yet)."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp / "model", state_dict=full_weights)
    tokenizer.save_pretrained(tmp / "model")
    names = {id(p): n for n, p in model.named_parameters()}
    moments, steps = {}, {}
    for p, st in ([] if full_weights is not None else opt.state.items()):
        name = names[id(p)]
        moments[f"{name}/exp_avg"] = st["exp_avg"].contiguous()
        moments[f"{name}/exp_avg_sq"] = st["exp_avg_sq"].contiguous()
        steps[name] = float(st["step"])
    save_file(moments, str(tmp / "optimizer.safetensors"))
    save_file({"state": torch.get_rng_state()}, str(tmp / "torch_rng.safetensors"))
    state = TrainerState(step, version, sched.last_epoch, steps, [g["lr"] for g in opt.param_groups])
    (tmp / "trainer_state.json").write_bytes(msgspec.json.encode(state))
    service.save_state(tmp / "buffer")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    (root / "latest").write_text(final.name)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    marker = Path(run_dir) / "checkpoints" / "latest"
    if not marker.exists():
        return None
    path = marker.parent / marker.read_text().strip()
    return path if path.is_dir() else None


def load_trainer_state(ckpt: Path, model, opt, sched) -> TrainerState:
    """Restore optimizer moments, scheduler and RNG into objects built from ``ckpt/model``."""
    state = msgspec.json.decode((ckpt / "trainer_state.json").read_bytes(), type=TrainerState)
    moments = load_file(str(ckpt / "optimizer.safetensors"))
    for name, p in model.named_parameters():
        if name in state.param_steps:
            opt.state[p] = {"step": torch.tensor(state.param_steps[name]),
                            "exp_avg": moments[f"{name}/exp_avg"], "exp_avg_sq": moments[f"{name}/exp_avg_sq"]}
    sched.last_epoch = state.scheduler_epoch
    for group, lr in zip(opt.param_groups, state.lrs):
        group["lr"] = lr
    torch.set_rng_state(load_file(str(ckpt / "torch_rng.safetensors"))["state"])
    return state
