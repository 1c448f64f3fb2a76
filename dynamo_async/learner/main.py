"""``dynamo-async learner``: one learner process (rank 0 hosts the buffer and the weight sync).

Prints where workers connect, writes the same as JSON to ``--ready-file`` (for launchers;
written to a temporary name and renamed, so a reader never sees half of it), trains, evaluates,
checkpoints. SIGTERM, SIGINT or SIGHUP finishes the current step, saves a checkpoint and stops
the workers; ``--resume`` continues from the newest checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from dynamo_async.config import dump_config
from dynamo_async.config.schema import RunConfig
from dynamo_async.errors import UsageError
from dynamo_async.lines import write_atomic
from dynamo_async.signals import stop_on_signals


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """A new run needs a fresh directory; an earlier run's directory needs ``--resume``, which
    needs a checkpoint. Each refusal says what to do with the directory."""
    from dynamo_async.learner.checkpoint import latest_checkpoint

    earlier = any((run_dir / name).exists() for name in ("metrics.jsonl", "checkpoints", "store"))
    ckpt = latest_checkpoint(run_dir) if earlier else None
    if earlier and not resume:
        what = (
            f"add --resume to continue it from {ckpt.name}, or delete it (rm -r {run_dir}) to start over"
            if ckpt is not None
            else f"it has no checkpoint to resume from (a start that failed or stopped early): delete it "
            f"(rm -r {run_dir}) or pick another --run-dir"
        )
        raise UsageError(f"--run-dir: got {run_dir}, which holds an earlier run, expected a new directory; {what}")
    if resume and ckpt is None:
        raise UsageError(
            f"--resume: got run directory {run_dir} without a checkpoint (RUN_DIR/checkpoints/latest), "
            f"expected one written by an earlier run; a run that stopped before its first checkpoint "
            f"cannot resume: delete it (rm -r {run_dir}) and start again without --resume"
        )


def write_ready_file(path: Path, where: dict) -> None:
    """``where`` as JSON at ``path``, atomically (``lines.write_atomic``)."""
    write_atomic(path, json.dumps(where))


def learner_main(
    cfg: RunConfig,
    run_dir: Path,
    host: str,
    port: int,
    advertise: str | None,
    resume: bool,
    device: str,
    ready_file: str | None,
    threads: int | None = None,
) -> int:
    import torch

    from dynamo_async.learner.loop import Learner, LearnerContext

    if threads:
        torch.set_num_threads(threads)
    from dynamo_async.learner.distributed import init_from_env, leave
    from dynamo_async.learner.follower import follow
    from dynamo_async.models import resolve_model

    # Builtin models are built before the process group exists: transformers writes checkpoint
    # files only on rank 0 once torch.distributed is initialised.
    resolve_model(cfg.model.name)
    info = init_from_env(device)  # several learner ranks under torchrun: FSDP2
    stop = stop_on_signals()
    if info.rank > 0:
        return leave(info, follow(cfg, device, info, run_dir, resume))
    check_run_dir(run_dir, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run_dir / "config.yaml")
    learner = Learner(
        cfg, LearnerContext(run_dir, host, port, advertise, device), resume=resume, dist_info=info
    ).start()
    if learner.data_report is not None:
        print(f"training data {cfg.data.train}: {learner.data_report.line()} (RUN_DIR/data.json)", flush=True)
    e = learner.endpoints
    where = {
        "host": learner._advertised(),
        "work": e.work,
        "completions": e.completions,
        "status": e.status,
        "sync": learner.sender.port,
        "step": learner.step,
        "version": learner.version,
    }
    print(
        f"learner ready at step {learner.step}: workers connect with "
        f"--connect {where['host']}:{e.work} (status port {e.status}; watch with "
        f"`dynamo-async status {where['host']}:{e.work}`)",
        flush=True,
    )
    if ready_file:
        write_ready_file(Path(ready_file), where)
    try:
        learner.run(stop=stop)
    finally:
        learner.close()
    print(
        f"learner stopped at step {learner.step}, version {learner.version}; checkpoint in "
        f"{run_dir / 'checkpoints'}; figures: `dynamo-async plot {run_dir}`",
        flush=True,
    )
    return leave(info, 0)
