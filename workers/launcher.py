"""``dynamo-async workers --connect HOST:PORT --num-workers N``: start N worker processes.

The launcher only supervises: each child connects to the learner on its own, gets the run
config and the weight-sync rendezvous from it, and works until told to stop. SIGTERM or
SIGINT to the launcher stops every child (SIGTERM, then SIGKILL after a grace period); a
child that dies is reported and the others keep working. Children watch their parent and
stop if the launcher disappears, so no process is orphaned: on Linux the kernel sends them SIGTERM
when the launcher dies, even by SIGKILL (``dynamo_async.launch.die_with_parent``). A user's
mistake found in a child (e.g. a learner of another protocol version) is one line on stderr and
exit status 2, as the CLI prints it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
from multiprocessing.connection import wait

from dynamo_async.errors import UsageError
from dynamo_async.launch import die_with_parent
from dynamo_async.signals import stop_on_signals


def _child(connect: str, index: int, device: str, capacity: int, threads: int | None, parent: int, keys: tuple) -> None:
    """One worker process; ends with the launcher (pid ``parent``) even when it is SIGKILLed."""
    die_with_parent(parent)
    if threads:
        import torch

        torch.set_num_threads(threads)
    from buffer.curve import client_keys
    from workers.engine import EngineFailure
    from workers.worker import run_worker

    try:
        run_worker(connect, index, device, capacity, keys=client_keys(*keys))
    except ConnectionRefusedError as err:  # the learner refused this worker's key: one line
        print(f"dynamo-async workers: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except UsageError as err:  # one line, as the CLI prints it; anything else keeps its traceback
        print(f"dynamo-async workers: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except EngineFailure as err:  # the engine failed more often than rollout.engine_restarts allows
        print(f"dynamo-async workers: error: {err}", file=sys.stderr, flush=True)
        sys.exit(1)


def launch_workers(
    connect: str,
    num_workers: int,
    device: str = "cpu",
    capacity: int = 8,
    grace_s: float = 30.0,
    threads: int | None = None,
    keys: tuple[str | None, str | None] = (None, None),
) -> int:
    """Run the workers until they finish or the launcher is told to stop; returns an exit code.
    ``keys``: the ``--key`` and ``--server-key`` files (CURVE), read by each worker."""
    if num_workers < 1:
        raise UsageError(f"--num-workers: got {num_workers}, expected at least 1")
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(
            target=_child,
            args=(connect, i, _device(device, i), capacity, threads, os.getpid(), keys),
            name=f"worker-{i}",
        )
        for i in range(num_workers)
    ]
    stop = stop_on_signals()
    for p in procs:
        p.start()
    print(f"started {num_workers} worker(s) -> {connect}: pids {[p.pid for p in procs]}", flush=True)
    live = list(procs)
    while live and not stop.is_set():
        for sentinel in wait([p.sentinel for p in live], timeout=0.5):
            p = next(q for q in live if q.sentinel == sentinel)
            p.join()
            live.remove(p)
            if p.exitcode != 0:
                print(f"{p.name} (pid {p.pid}) exited with code {p.exitcode}", file=sys.stderr, flush=True)
    stopped = {p.pid for p in live}
    _stop_all(live, grace_s)
    # children we terminated ourselves (-SIGTERM before their handler was installed) stopped cleanly
    return 1 if any(p.exitcode and not (p.pid in stopped and p.exitcode == -signal.SIGTERM) for p in procs) else 0


def _stop_all(procs, grace_s: float) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(grace_s)
        if p.is_alive():
            p.kill()
            p.join()


def _device(device: str, index: int) -> str:
    """``cuda`` spreads workers over the visible GPUs; anything else is used as given."""
    if device != "cuda":
        return device
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        raise UsageError("--device cuda: got no visible CUDA device, expected at least one")
    return f"cuda:{index % count}"
