"""``dynamo-async learner``: one learner process (rank 0 hosts the buffer and the weight sync).

Prints where workers connect, writes the same as JSON to ``--ready-file`` (for launchers;
written to a temporary name and renamed, so a reader never sees half of it), trains, evaluates,
checkpoints. SIGTERM, SIGINT or SIGHUP finishes the current step, saves a checkpoint and stops
the workers; ``--resume`` continues from the newest checkpoint.
"""

from __future__ import annotations

import errno
import json
import os
import socket
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


def check_bindable(host: str, port: int) -> None:
    """``--host`` must be an address of this machine (or a wildcard) and ``--port`` (work, +1, +2)
    free on it: tried here with plain sockets, at once and before anything is written, rather
    than found by the weight sync's store, which waits minutes on an address it cannot bind."""
    if not host:
        return
    fix = "use --host 0.0.0.0 --advertise NAME (NAME: how workers reach this machine) or a local address"
    try:
        family, _, _, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise UsageError(f"--host: got {host!r}, which does not resolve ({err.strerror}); {fix}") from None
    for offset in range(3) if port else range(1):  # port 0: any free one, so only the host is tried
        code = _bind_error(family, address, port + offset)
        if code == errno.EADDRNOTAVAIL:
            raise UsageError(f"--host: got {host!r}, expected an address of this machine; {fix}")
        if code == errno.EADDRINUSE:
            what = f"{port}, which is" if not offset else f"{port}, whose PORT + {offset} ({port + offset}) is"
            raise UsageError(
                f"--port: got {what} in use on {host} (another learner?); pick another port or stop that process"
            )


def _bind_error(family: int, address: tuple, port: int) -> int | None:
    """The errno of binding a TCP socket to ``address`` at ``port`` (with SO_REUSEADDR, as ZeroMQ
    binds), or None when it binds; only "in use" and "not available" are expected."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address[0], port, *address[2:]))
        except OSError as err:
            if err.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                raise
            return err.errno
    return None


def check_writable(run_dir: Path) -> None:
    """Create ``run_dir`` and write and remove a probe file in it: a read-only or full disk is
    found at the start, not at the first checkpoint."""
    probe = run_dir / f".write-probe-{os.getpid()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as err:
        raise UsageError(
            f"--run-dir: got {run_dir}, which cannot be written ({err.strerror}), expected a writable "
            "directory; pick another --run-dir, make it writable or free space"
        ) from None


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
    keys_dir: str | None = None,
    insecure: bool = False,
) -> int:
    keys = None
    if os.environ.get("RANK", "0") == "0":  # rank 0 binds the host (torchrun sets RANK)
        check_bindable(host, port)
        from buffer.curve import server_keys

        keys = server_keys(keys_dir, host, insecure)  # off loopback: keys, or an explicit --insecure
    check_writable(run_dir)
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
        cfg, LearnerContext(run_dir, host, port, advertise, device, keys=keys), resume=resume, dist_info=info
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
