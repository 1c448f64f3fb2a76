"""Time to write and to load a sharded learner checkpoint, against ``save_pretrained``.

SmolLM2-135M-Instruct (``configs/demo.yaml``'s model) as the learner holds it on 2 gloo ranks
on the CPU: FSDP2-sharded float32 masters with AdamW moments (one optimizer step taken, so
every moment exists). Measured side by side in one run, ``--rounds`` times each (medians):

- ``dcp_write_s`` / ``dcp_load_s``: the DCP shards of masters and moments (``state/``), every
  rank writing and reading its own shards at once (``learner/shards.py``);
- ``checkpoint_s``: the whole checkpoint the learner writes (``checkpoint.save_checkpoint``:
  the shards, the masters gathered to rank 0 and written as the HF model, trainer state);
- ``save_pretrained_s`` / ``from_pretrained_s``: rank 0 alone writing and loading the same
  model's float32 weights with transformers (a third of the shards' bytes: no moments).

The slowest rank's time counts. Last line: ``checkpoint_io dcp_write_s=<float> ... ranks=2``.
Run: ``.venv/bin/python bench/checkpoint_io.py`` (it starts torchrun on itself).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "configs" / "demo.yaml"


def _timed(fn, *args) -> float:
    """Seconds of ``fn(*args)`` on the slowest rank (barriers on both sides)."""
    import torch
    import torch.distributed as dist

    dist.barrier()
    t0 = time.perf_counter()
    fn(*args)
    t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _rank_main(work: Path, rounds: int) -> None:
    import torch
    import torch.distributed as dist

    from dynamo_async.config import load_config
    from dynamo_async.learner import checkpoint, shards
    from dynamo_async.learner.distributed import DistInfo
    from dynamo_async.learner.trainer import Trainer
    from dynamo_async.models import load_model

    dist.init_process_group("gloo")
    info = DistInfo(dist.get_rank(), dist.get_world_size())
    trainer = Trainer(load_config(DEMO, []), "cpu", dist_info=info)
    named, opt = trainer.masters.named, trainer.opt
    for p in trainer.masters.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # every AdamW moment exists, as after a first learner step
    steps = shards.step_counts(named, opt)
    full = checkpoint.gather_masters(named, True, info.rank == 0)
    times: dict[str, list[float]] = {k: [] for k in ("dcp_write_s", "dcp_load_s", "checkpoint_s")}
    times.update(save_pretrained_s=[], from_pretrained_s=[])
    for r in range(rounds):
        state = work / f"state-{r}"
        times["dcp_write_s"].append(_timed(shards.save_shards, state, named, opt, True))
        times["dcp_load_s"].append(_timed(shards.load_shards, state, named, opt, steps, True))
        times["checkpoint_s"].append(_timed(checkpoint.save_checkpoint, work / f"run-{r}", trainer))
        hf = work / f"hf-{r}"
        if info.rank == 0:
            t0 = time.perf_counter()
            trainer.model.save_pretrained(hf, state_dict=full)
            times["save_pretrained_s"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            load_model(str(hf), "float32", "cpu")
            times["from_pretrained_s"].append(time.perf_counter() - t0)
        dist.barrier()
    if info.rank == 0:
        med = {k: statistics.median(v) for k, v in times.items()}
        dcp_bytes, hf_bytes = _size(work / "state-0"), _size(work / "hf-0")
        figures = " ".join(f"{k}={v:.3f}" for k, v in med.items())
        print(
            f"checkpoint_io {figures} write_ratio={med['dcp_write_s'] / med['save_pretrained_s']:.3f} "
            f"load_ratio={med['dcp_load_s'] / med['from_pretrained_s']:.3f} dcp_mb={dcp_bytes / 2**20:.1f} "
            f"hf_mb={hf_bytes / 2**20:.1f} rounds={rounds} ranks={info.world}",
            flush=True,
        )
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # see distributed.leave


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--rank-main", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_main:
        _rank_main(args.work, args.rounds)
        return
    from dynamo_async.models import resolve_model

    resolve_model("builtin:smollm2-135m-instruct")  # converted once, before the ranks start
    work = Path(tempfile.mkdtemp(prefix="ckpt-io-", dir=args.work))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.ranks)]
    cmd += ["--master-addr", "127.0.0.1", "--master-port", str(port), __file__, "--rank-main"]
    cmd += ["--work", str(work), "--rounds", str(args.rounds)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("checkpoint_io ")]
        if proc.returncode != 0 or not lines:
            sys.exit(f"checkpoint_io: the ranks failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        print(lines[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
