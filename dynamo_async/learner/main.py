"""``dynamo-async learner``: one learner process (rank 0 hosts the buffer and the weight sync).

Prints where workers connect, writes the same as JSON to ``--ready-file`` (for launchers),
trains, evaluates, checkpoints. SIGTERM or SIGINT finishes the current step, saves a
checkpoint and stops the workers; ``--resume`` continues from the newest checkpoint.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

from dynamo_async.config import dump_config
from dynamo_async.config.schema import RunConfig
from dynamo_async.errors import UsageError


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """A new run needs a fresh directory; an earlier run's directory needs ``--resume``."""
    earlier = (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists()
    if earlier and not resume:
        raise UsageError(
            f"--run-dir: got {run_dir}, which holds an earlier run, expected a new directory "
            "(or --resume to continue that run)"
        )


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
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
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
        Path(ready_file).write_text(json.dumps(where))
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
