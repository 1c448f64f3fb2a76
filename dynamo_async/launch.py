"""``dynamo-async run``: the learner and the workers on one machine, under one launcher.

The launcher starts the learner process, waits until it reports its endpoints, starts the
workers process (``dynamo-async workers``) against it, and watches both. When the learner
finishes, the workers are stopped; if either fails, the other is stopped and the run exits
non-zero; SIGTERM, SIGINT or SIGHUP (the terminal closed) stop both (the learner saves a
checkpoint first). Each child is stopped by its own process id, SIGTERM first and SIGKILL after a grace period, so no
process is left behind. On Linux each child also gets SIGTERM from the kernel when the launcher
dies, even by SIGKILL (``die_with_parent``), and stops cleanly (``dynamo_async/signals.py``).

Before anything starts, ``plan_run`` decides where the learner and the workers run
(``dynamo_async/gpu_share.py``): on one GPU both share ``cuda:0``, the weight sync runs over
gloo and a vLLM worker's memory share is checked against what the learner needs.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from dynamo_async.config import dump_config
from dynamo_async.config.schema import RunConfig
from dynamo_async.gpu_share import GIB, Placement, check_vllm_share, model_size, place
from dynamo_async.signals import stop_on_signals

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def die_with_parent(parent: int) -> None:
    """In a child process: SIGTERM this process when its parent (pid ``parent``) dies, even by
    SIGKILL, so that no child is orphaned. Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere a
    no-op (workers also poll their parent's pid between requests, workers/worker.py)."""
    if not sys.platform.startswith("linux"):
        return
    if _libc().prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl(PR_SET_PDEATHSIG): {os.strerror(code)}")
    if os.getppid() != parent:  # the parent died before the request: no signal would come
        os.kill(os.getpid(), signal.SIGTERM)


def _child_of(parent: int):
    """``preexec_fn`` of a child that must not outlive ``parent`` (``die_with_parent``); libc is
    loaded here, in the parent, so that the forked child only makes the call."""
    if sys.platform.startswith("linux"):
        _libc()
    return lambda: die_with_parent(parent)


def plan_run(cfg: RunConfig, device: str, num_workers: int) -> Placement:
    """Where the learner and the workers run (``gpu_share.place``); on a shared GPU, a vLLM
    rollout's tensor parallelism and memory share are checked first. Prints the placement."""
    if device == "cpu":
        return place(device, 0)
    import torch  # after the config is parsed; counting GPUs creates no CUDA context

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    placement = place(device, gpus, torch.version.cuda is not None, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if not placement.shared:
        print(f"learner on {placement.learner}; workers on GPUs {placement.worker_env['CUDA_VISIBLE_DEVICES']}")
        return placement
    total = torch.cuda.get_device_properties(placement.gpu).total_memory  # no CUDA context (mem_get_info makes one)
    gpu = f"cuda:{placement.gpu}"
    share = ""
    if cfg.rollout.engine == "vllm":
        params, vocab = model_size(cfg.model.name)
        check_vllm_share(cfg, params, vocab, total, num_workers, gpu)
        share = f"; each vLLM worker may use {cfg.rollout.gpu_memory_utilization:.0%} of it"
    print(
        f"one GPU: the learner and {num_workers} {cfg.rollout.engine} worker(s) share {gpu} "
        f"({total / GIB:.1f} GiB){share}; weights sync through host memory (gloo)",
        flush=True,
    )
    return placement


def run_local(
    cfg: RunConfig,
    run_dir: Path,
    num_workers: int,
    capacity: int,
    device: str,
    port: int,
    resume: bool,
    grace_s: float = 120.0,
    placement: Placement | None = None,
) -> int:
    """Start the learner, then the workers against it (on ``placement``, by default
    ``plan_run(cfg, device, num_workers)``), and watch both; returns the exit code."""
    placement = placement or plan_run(cfg, device, num_workers)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = dump_config(cfg, run_dir / "config.yaml")
    ready = run_dir / "learner.json"
    ready.unlink(missing_ok=True)
    stop = stop_on_signals()
    cli = [sys.executable, "-m", "dynamo_async.cli"]
    learner_threads, worker_threads = _split_cores(num_workers, device)
    learner = subprocess.Popen(
        cli
        + [
            "learner",
            "--config",
            str(config),
            "--run-dir",
            str(run_dir),
            "--port",
            str(port),
            "--device",
            placement.learner,
            "--ready-file",
            str(ready),
            "--threads",
            str(learner_threads),
        ]
        + (["--resume"] if resume else []),
        preexec_fn=_child_of(os.getpid()),
        env=placement.child_env(placement.learner_env),
    )
    workers = None
    try:
        where = _wait_ready(ready, learner, stop)
        if where is None:
            return _stop(learner, workers, grace_s) or 1
        workers = subprocess.Popen(
            cli
            + [
                "workers",
                "--connect",
                f"{where['host']}:{where['work']}",
                "--num-workers",
                str(num_workers),
                "--capacity",
                str(capacity),
                "--device",
                placement.workers,
                "--threads",
                str(worker_threads),
            ],
            preexec_fn=_child_of(os.getpid()),
            env=placement.child_env(placement.worker_env),
        )
        return _watch(learner, workers, stop, grace_s)
    finally:
        _stop(learner, workers, grace_s)


def _split_cores(num_workers: int, device: str, cores: int | None = None) -> tuple[int, int]:
    """CPU threads for the learner and each worker, so that the processes sharing this machine do
    not oversubscribe its cores (oversubscribed OpenMP threads slow everything down many times).

    On GPUs the learner takes half the cores and the workers share the other half (an ``hf``
    worker samples each token on the CPU, workers/hf_engine.py); on the CPU the workers share half
    the cores (one thread each at least) and the learner takes the rest."""
    cores = cores or os.cpu_count() or 1
    if device != "cpu":
        learner = max(1, cores // 2)
        return learner, max(1, (cores - learner) // num_workers)
    # One thread per worker, the rest for the learner: more threads than cores makes the
    # processes' OpenMP threads wait on each other and slows every one of them down.
    worker = max(1, cores // (2 * num_workers))
    return max(1, cores - worker * num_workers), worker


def _watch(learner: subprocess.Popen, workers: subprocess.Popen, stop: threading.Event, grace_s: float) -> int:
    while not stop.is_set():
        if learner.poll() is not None:
            _stop(None, workers, grace_s)
            return learner.returncode
        if workers.poll() is not None and workers.returncode != 0:
            print(f"workers exited with code {workers.returncode}; stopping the learner", file=sys.stderr)
            _stop(learner, None, grace_s)
            return 1
        time.sleep(0.5)
    return _stop(learner, workers, grace_s)


def _wait_ready(ready: Path, learner: subprocess.Popen, stop: threading.Event) -> dict | None:
    while not ready.exists():
        if learner.poll() is not None or stop.is_set():
            return None
        time.sleep(0.2)
    return json.loads(ready.read_text())  # complete: the learner renames it into place


def _stop(learner: subprocess.Popen | None, workers: subprocess.Popen | None, grace_s: float) -> int:
    """SIGTERM the learner first (it checkpoints and tells workers to stop), then the workers."""
    code = 0
    for proc in (learner, workers):
        if proc is None or proc.poll() is not None:
            continue
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # a child ended by the SIGTERM we just sent (before its handler was installed) stopped cleanly
        code = code or (0 if proc.returncode == -signal.SIGTERM else proc.returncode)
    return code
