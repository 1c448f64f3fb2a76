"""``dynamo-async ray``: the learner and N workers placed and watched by Ray.

Ray only places and watches processes. The learner runs as a Ray actor with ``--learner-cpus``/
``--learner-gpus`` (``ray_actors.RoleProcess``), which starts ``dynamo-async learner`` on its node
and reports where it listens. The ``--num-workers`` worker actors, each with ``--worker-cpus``/
``--worker-gpus``, are placed at the same time (their start-up overlaps the learner's) and each
starts ``dynamo-async workers --num-workers 1`` connecting to it once it listens. Prompts,
completions and weights go over ZeroMQ and torch.distributed as under ``dynamo-async run``
(docs/design.md). On a local cluster (``--address local``, the default: started here, shut down at
the end) the learner binds loopback; on an existing cluster it binds its node's address and the
run uses CURVE keys (``--keys``, else new ones in RUN_DIR/keys) unless ``--insecure``.

Watching, as ``dynamo-async run`` (launch.py): when the learner ends, the workers are stopped and
the exit code is the learner's. A worker actor whose process or node dies is restarted by Ray up
to ``--max-restarts`` times (a new worker connects; the learner re-issues the work the dead one
held, buffer leases); past that, or when a worker process fails by itself, the run stops with 1.
SIGTERM, SIGINT or SIGHUP stop the learner first (it checkpoints), then the workers, then the actors.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from dynamo_async.config import config_to_yaml
from dynamo_async.config.schema import RunConfig
from dynamo_async.errors import UsageError
from dynamo_async.signals import stop_on_signals

LOCAL = "local"  # ray.init(address="local"): a new cluster on this machine
# Calls that fail in a row before an actor counts as dead for good: the one in flight when it
# died fails; while Ray restarts it, later calls wait for it; a dead actor fails every call.
DEAD_AFTER = 3


@dataclass(frozen=True)
class RayOptions:
    """The command line of ``dynamo-async ray`` (cli.py), besides the config and the run directory."""

    num_workers: int
    capacity: int = 8
    device: str | None = None  # None: cuda for a role given GPUs, else cpu
    worker_cpus: float = 1.0
    worker_gpus: float = 0.0
    learner_cpus: float = 1.0
    learner_gpus: float = 0.0
    address: str = LOCAL
    num_cpus: int | None = None  # of a local cluster; None: this machine's
    port: int = 0
    keys: str | None = None
    insecure: bool = False
    resume: bool = False
    max_restarts: int = 3
    grace_s: float = 120.0

    @property
    def local(self) -> bool:
        return self.address == LOCAL


def check_options(o: RayOptions) -> None:
    """A user's mistake in the options, before Ray is imported."""
    if o.num_workers < 1 or o.capacity < 1:
        raise UsageError(f"got --num-workers {o.num_workers}, --capacity {o.capacity}, expected both >= 1")
    if min(o.worker_cpus, o.worker_gpus, o.learner_cpus, o.learner_gpus) < 0 or o.max_restarts < 0:
        raise UsageError("got a negative --*-cpus, --*-gpus or --max-restarts, expected all >= 0")
    if o.learner_gpus > 1:
        raise UsageError(f"--learner-gpus: got {o.learner_gpus}, expected at most 1 (one learner process)")
    if o.num_cpus is not None and (not o.local or o.num_cpus < 1):
        raise UsageError(f"--num-cpus: got {o.num_cpus} with --address {o.address}, expected >= 1 and --address local")
    if o.keys and o.insecure:
        raise UsageError("got --keys and --insecure, expected one of them")
    for role, gpus in (("worker", o.worker_gpus), ("learner", o.learner_gpus)):
        if (o.device or "").startswith("cuda") and gpus == 0:
            raise UsageError(
                f"got --device {o.device} with --{role}-gpus 0, expected --{role}-gpus > 0 (Ray hides "
                "the GPUs from an actor that asks for none), or leave --device out"
            )


def import_ray():
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ModuleNotFoundError as err:
        if err.name != "ray":
            raise
        raise UsageError("got no Ray installed, expected it for `dynamo-async ray`: pip install -e '.[ray]'") from None
    return ray


def ray_main(cfg: RunConfig, run_dir: Path, o: RayOptions) -> int:
    """Connect to (or start) the cluster, run the learner and the workers on it, return the learner's code."""
    ray = import_ray()
    from dynamo_async.ray_actors import RoleProcess

    run_dir = run_dir.resolve()
    keys = _keys(run_dir, o)  # before Ray starts: a missing folder is a user's mistake
    extra = {"include_dashboard": False, "num_cpus": o.num_cpus} if o.local else {}
    ray.init(address=o.address, **extra)
    stop = stop_on_signals()  # after ray.init, which installs its own SIGTERM handler
    actor = ray.remote(RoleProcess)
    learner, workers, code = None, [], None
    try:
        _check_fits(ray.cluster_resources(), o)
        learner = actor.options(num_cpus=o.learner_cpus, num_gpus=o.learner_gpus, max_restarts=0).remote(
            "learner", _learner_argv(run_dir, o, keys), _learner_files(cfg, keys), _env()
        )
        for i in range(o.num_workers):  # placed now, started once the learner listens
            opts = actor.options(num_cpus=o.worker_cpus, num_gpus=o.worker_gpus, max_restarts=o.max_restarts)
            workers.append(opts.remote(f"worker-{i}", _worker_argv(o, keys), _worker_files(keys, i), _env()))
        where = _wait_ready(ray, learner, stop)
        if where is not None:
            address = f"{where['host']}:{where['work']}"
            print(f"dynamo-async ray: learner ready at {address}", flush=True)
            code = _watch(ray, learner, workers, stop, o, address)
    finally:
        last = _stop_all(ray, learner, workers, o.grace_s)
        ray.shutdown()  # a local cluster started here stops with it; an existing one keeps running
    return last if code is None else code  # None: stopped by a signal, or the learner never got ready


def _keys(run_dir: Path, o: RayOptions) -> Path | None:
    """The CURVE key folder of the run: ``--keys``; on an existing cluster without ``--insecure``,
    RUN_DIR/keys (written now, one client pair per worker, unless it already holds keys)."""
    if o.keys:
        if not (Path(o.keys) / "server.key_secret").exists():
            raise UsageError(f"--keys: got {o.keys}, expected a folder written by `dynamo-async keys`")
        return Path(o.keys)
    if o.local or o.insecure:
        return None
    root = run_dir / "keys"
    if not (root / "server.key_secret").exists():
        from buffer.curve import write_keys

        write_keys(root, o.num_workers)
        print(f"dynamo-async ray: wrote CURVE keys for this run to {root}", flush=True)
    return root


def _check_fits(total: dict, o: RayOptions) -> None:
    """On a local cluster, the CPUs and GPUs asked for must exist (else the actors would wait
    forever); an existing cluster may grow (autoscaler), so there it is only a warning."""
    need = {
        "CPU": o.learner_cpus + o.num_workers * o.worker_cpus,
        "GPU": o.learner_gpus + o.num_workers * o.worker_gpus,
    }
    short = {k: (v, total.get(k, 0.0)) for k, v in need.items() if v > total.get(k, 0.0) + 1e-9}
    if not short:
        return
    text = ", ".join(f"{need:g} {k} (the cluster has {have:g})" for k, (need, have) in short.items())
    if o.local:
        raise UsageError(
            f"got a learner and {o.num_workers} workers needing {text}, expected them to fit; pass fewer "
            "--num-workers or smaller --worker-cpus/--worker-gpus (fractions are fine, e.g. 0.5)"
        )
    print(f"dynamo-async ray: the run needs {text}; its actors wait for the cluster to grow", file=sys.stderr)


def _threads(cpus: float) -> str:
    return str(max(1, int(cpus)))


def _device(o: RayOptions, gpus: float) -> str:
    return o.device or ("cuda" if gpus > 0 else "cpu")


def _learner_argv(run_dir: Path, o: RayOptions, keys: Path | None) -> list[str]:
    argv = ["learner", "--config", "{dir}/config.yaml", "--run-dir", str(run_dir)]
    argv += ["--host", "127.0.0.1" if o.local else "{node_ip}", "--port", str(o.port)]
    argv += ["--device", _device(o, o.learner_gpus), "--threads", _threads(o.learner_cpus)]
    argv += ["--ready-file", "{dir}/learner.json"]
    argv += ["--keys", "{dir}/keys"] if keys else (["--insecure"] if o.insecure and not o.local else [])
    return argv + (["--resume"] if o.resume else [])


def _worker_argv(o: RayOptions, keys: Path | None) -> list[str]:
    argv = ["workers", "--connect", "{learner}", "--num-workers", "1"]
    argv += ["--capacity", str(o.capacity), "--device", _device(o, o.worker_gpus)]
    argv += ["--threads", _threads(o.worker_cpus)]
    return argv + (["--key", "{dir}/client.key_secret", "--server-key", "{dir}/server.key"] if keys else [])


def _learner_files(cfg: RunConfig, keys: Path | None) -> dict[str, bytes]:
    """The resolved config and the learner's keys (server pair, authorized/ client keys)."""
    files = {"config.yaml": config_to_yaml(cfg).encode()}
    if keys:
        for path in [keys / "server.key", keys / "server.key_secret", *sorted((keys / "authorized").iterdir())]:
            files[f"keys/{path.relative_to(keys)}"] = path.read_bytes()
    return files


def _worker_files(keys: Path | None, index: int) -> dict[str, bytes]:
    """Worker ``index``'s client pair (client-N, N = index modulo the pairs) and the server's public key."""
    if keys is None:
        return {}
    pairs = sorted((keys / "clients").glob("client-*.key_secret"), key=lambda p: int(p.stem.split("-")[1]))
    return {
        "client.key_secret": pairs[index % len(pairs)].read_bytes(),
        "server.key": (keys / "server.key").read_bytes(),
    }


def _env() -> dict[str, str]:
    """The launcher's DYNAMO_ASYNC_* variables (e.g. the model cache), for processes on other nodes."""
    return {k: v for k, v in os.environ.items() if k.startswith("DYNAMO_ASYNC_")}


def _wait_ready(ray, learner, stop: threading.Event) -> dict | None:
    """The learner's ready JSON, or None if it ended first (or a stop signal came)."""
    while not stop.is_set():
        try:
            code, ready, _, _ = ray.get(learner.state.remote())
        except ray.exceptions.RayActorError as err:
            _say(f"the learner's actor died before it was ready: {err}")
            return None
        if ready is not None:
            return json.loads(ready)  # complete: the learner renames it into place
        if code is not None:
            return None
        stop.wait(0.2)
    return None


def _watch(ray, learner, workers: list, stop: threading.Event, o: RayOptions, address: str) -> int | None:
    """Poll every actor without blocking on any (one being restarted answers once it is back) and
    start each worker actor's process against ``address`` (again after Ray restarted it); the
    learner's exit code, 1 when a worker fails for good, None when a stop signal came."""
    actors = [learner, *workers]
    pending: dict[int, object] = {}  # actor index (0: learner) -> its outstanding state() call
    pids: dict[int, int] = {}  # actor index -> the process id it last answered from
    errors = [0] * len(actors)  # failed calls since the actor last answered
    while not stop.is_set():
        for i, a in enumerate(actors):
            pending.setdefault(i, a.state.remote())
        done, _ = ray.wait(list(pending.values()), num_returns=len(pending), timeout=0.5)
        for i in [i for i, ref in pending.items() if ref in done]:
            try:
                code, _, pid, started = ray.get(pending.pop(i))
            except ray.exceptions.ActorUnavailableError:
                continue  # not answering for now (a network blip): ask again
            except ray.exceptions.RayActorError:
                errors[i] += 1
                if i == 0 or errors[i] >= DEAD_AFTER:
                    name = (
                        "the learner's actor" if i == 0 else f"worker-{i - 1}'s actor (--max-restarts {o.max_restarts})"
                    )
                    _say(f"{name} is dead for good; stopping the run")
                    return 1
                if errors[i] == 1:
                    _say(f"worker-{i - 1}'s actor died; Ray restarts it if it has restarts left")
                continue
            errors[i] = 0
            if not started:
                actors[i].start.remote(address)  # runs before the next state() call of this actor
            if pids.setdefault(i, pid) != pid:
                pids[i] = pid
                _say(f"worker-{i - 1} was restarted by Ray (actor pid {pid}); its worker connects again")
            if i == 0 and code is not None:
                return code
            if code is not None and code != 0:
                _say(f"worker-{i - 1} exited with {code}; stopping the run")
                return 1
        stop.wait(0.5)
    return None


def _say(text: str) -> None:
    print(f"dynamo-async ray: {text}", file=sys.stderr, flush=True)


def _stop_all(ray, learner, workers: list, grace_s: float) -> int:
    """SIGTERM the learner first (it checkpoints and tells the workers to stop), then the workers;
    then end every actor. The learner's exit code (1 if its actor is gone)."""
    code = 0
    if learner is not None:
        try:
            code = ray.get(learner.stop.remote(grace_s), timeout=grace_s + 60)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            code = 1
    refs = [w.stop.remote(grace_s) for w in workers]
    ray.wait(refs, num_returns=len(refs), timeout=grace_s + 60)
    for a in ([learner] if learner is not None else []) + workers:
        ray.kill(a, no_restart=True)
    return code
