"""Run by tests/test_fsdp.py under torchrun: one sharded learner step on a fixed batch.

Each rank trains its share of the batch with FSDP2 over gloo; then every rank gathers the
float32 master weights and rank 0 writes them (safetensors) to the path given on the command
line. Further arguments are config overrides (e.g. ``model.compute_dtype=bfloat16``);
``FSDP_DEVICE=cuda`` runs it on GPUs with NCCL (FSDP2 even with a single rank).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from sample_records import sample_record

from buffer.batch import LearnerBatch, ReadyGroup
from dynamo_async.config import load_config

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def fixed_batch(vocab: int, groups: int = 4) -> LearnerBatch:
    """Groups of 3-4 responses of unequal lengths; group 2's rewards are all equal, so rank 0
    (groups 0 and 2) trains on fewer samples than rank 1 and pads its micro-batch list."""
    rng = np.random.default_rng(7)
    out = []
    for g in range(groups):
        prompt = rng.integers(5, vocab, 12 + g).astype(np.int32)
        samples = tuple(
            sample_record(
                g,
                f"p{g}",
                i,
                rng.integers(5, vocab, 5 + 2 * i + g).astype(np.int32),
                (-0.5 - rng.random(5 + 2 * i + g)).astype(np.float32),
                np.zeros(5 + 2 * i + g, np.int32),
                acc=1 if g == 2 else (i + g) % 2,  # group 2: all correct, left out of the update
                finish_reason="stop",
                worker_id="w",
            )
            for i in range(3 + g % 2)
        )
        out.append(ReadyGroup(g, f"p{g}", prompt, "1", samples))
    return LearnerBatch(step=0, policy_version=0, groups=tuple(out), staleness=(0,) * groups)


def config(method: str, *extra: str):
    return load_config(
        TINY,
        [
            f"method={method}",
            "model.name=builtin:tiny",
            "optim.mini_batch_prompts=4",
            "optim.micro_batch_tokens=64",
            "trainer.seed=3",
            *extra,
        ],
    )


def torchrun_command(script: str, *args: str, nproc: int = 2) -> list[str]:
    """``python -m torch.distributed.run`` of ``script`` with ``nproc`` local ranks on a free port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    head = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr"]
    return [*head, "127.0.0.1", "--master-port", str(port), str(script), *args]


def run_ranks(
    out: Path, method: str, *extra: str, nproc: int = 2, device: str = "cpu", timeout_s: float = 240, groups: int = 4
):
    """Run ``main`` under torchrun with ``nproc`` ranks; returns the float32 masters rank 0 wrote."""
    import subprocess

    from safetensors.torch import load_file

    cmd = torchrun_command(__file__, str(out), method, *extra, nproc=nproc)
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "FSDP_DEVICE": device, "FSDP_GROUPS": str(groups)},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return load_file(str(out))


def main(out: str, method: str, *extra: str) -> None:
    from safetensors.torch import save_file

    from dynamo_async.learner.distributed import DistInfo, leave
    from dynamo_async.learner.trainer import Trainer
    from dynamo_async.models import resolve_model

    cfg = config(method, *extra)
    resolve_model(cfg.model.name)  # build builtins before torch.distributed exists
    device = os.environ.get("FSDP_DEVICE", "cpu")  # "cuda": NCCL, one GPU per rank
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    info = DistInfo(dist.get_rank(), dist.get_world_size(), fsdp=True)  # sharded with one rank too
    torch.manual_seed(0)
    trainer = Trainer(cfg, device, dist_info=info)
    groups = int(os.environ.get("FSDP_GROUPS", "4"))
    metrics = trainer.train_on(fixed_batch(trainer.model.config.vocab_size, groups))
    weights = {k[2:]: t for k, t in trainer.full_state().items() if k.startswith("w/")}  # collective
    trainer.named_weights()  # the broadcast's gather in the compute dtype runs on every rank too
    assert np.isfinite(metrics["loss"])
    if info.rank == 0:
        save_file({n: t.contiguous().cpu() for n, t in weights.items()}, out)
    leave(info, 0)  # ends the process (see leave)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *sys.argv[3:])
