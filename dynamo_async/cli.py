"""``dynamo-async`` command line.

Parses arguments and the config before importing anything heavy (torch, transformers,
vLLM): ``dynamo-async --help`` and ``dynamo-async config`` return at once.

Subcommands:
  config    validate a YAML config with key=value overrides; print or write the resolved
            config, or describe every field with its default.
  learner   the learner: buffer, weight sync and training (workers connect to it).
  run       learner and workers on one machine under one launcher.
  ray       learner and workers placed and watched by Ray (an optional extra, ray_launch.py).
  buffer    run the buffer service alone (ZeroMQ work, completions and status endpoints).
  workers   start rollout worker processes that connect to a learner (or a lone buffer).
  replay    summarise a recorded run, export rows as JSONL (``replay RUN_DIR --help``).
  eval      pass@k of a model on benchmarks (the paper's Table 1 layout), resumable.
  table     put several eval results side by side, one line per model.
  plot      PNG figures of a run directory (accuracy, entropy, grad norm, allocation, ...), or
            several runs overlaid, optionally smoothed (--smooth K).
  status    live view of a running learner (queues, staleness, workers, throughput).
  keys      write CURVE keys for the learner and its workers (buffer/curve.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from dynamo_async.cli_parser import build_parser
from dynamo_async.errors import UsageError


def cmd_config(args: argparse.Namespace) -> int:
    from dynamo_async.config import config_to_yaml, describe_fields, dump_config, load_config

    if args.describe:
        for key, default, doc in describe_fields():
            print(f"{key} = {default}\n    {doc}")
        return 0
    cfg = load_config(args.config, args.overrides)
    if args.out:
        print(f"wrote {dump_config(cfg, args.out)}")
    else:
        sys.stdout.write(config_to_yaml(cfg))
    return 0


def cmd_buffer(args: argparse.Namespace) -> int:
    from dynamo_async.config import dump_config, load_config

    cfg = load_config(args.config, args.overrides)
    from dynamo_async.learner.main import check_bindable, check_writable

    run_dir = Path(args.run_dir)
    check_bindable(args.host, args.port)
    check_writable(run_dir)
    from buffer.curve import server_keys

    keys = server_keys(args.keys, args.host, args.insecure)
    dump_config(cfg, run_dir / "config.yaml")
    from buffer.standalone import serve

    return serve(cfg, run_dir, args.host, args.port, keys)


def cmd_learner(args: argparse.Namespace) -> int:
    from dynamo_async.config import load_config

    cfg = load_config(args.config, args.overrides)
    from dynamo_async.learner.main import learner_main

    return learner_main(
        cfg,
        Path(args.run_dir),
        args.host,
        args.port,
        args.advertise,
        args.resume,
        args.device,
        args.ready_file,
        args.threads,
        args.keys,
        args.insecure,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from dynamo_async.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.num_workers < 1 or args.capacity < 1:
        raise UsageError(f"got --num-workers {args.num_workers}, --capacity {args.capacity}, expected both >= 1")
    from dynamo_async.launch import plan_run, run_local

    placement = plan_run(cfg, args.device, args.num_workers)  # no CUDA, a vLLM share that cannot fit: one line
    from dynamo_async.learner.main import check_run_dir, check_writable

    run_dir = Path(args.run_dir)
    check_run_dir(run_dir, args.resume)
    check_writable(run_dir)
    return run_local(
        cfg, run_dir, args.num_workers, args.capacity, args.device, args.port, args.resume, placement=placement
    )


def cmd_ray(args: argparse.Namespace) -> int:
    from dynamo_async.config import load_config

    cfg = load_config(args.config, args.overrides)
    from dynamo_async.ray_launch import RayOptions, check_options, ray_main

    names = [f.name for f in dataclasses.fields(RayOptions) if hasattr(args, f.name)]  # all but grace_s
    opts = RayOptions(**{name: getattr(args, name) for name in names})
    check_options(opts)
    return ray_main(cfg, Path(args.run_dir), opts)  # imports Ray (or says how to install it)


def cmd_workers(args: argparse.Namespace) -> int:
    from workers.worker import parse_connect

    parse_connect(args.connect)
    if args.capacity < 1:
        raise UsageError(f"--capacity: got {args.capacity}, expected at least 1")
    from buffer.curve import client_keys

    client_keys(args.key, args.server_key)  # checked here, loaded again by each worker
    from workers.launcher import launch_workers

    return launch_workers(
        args.connect,
        args.num_workers,
        args.device,
        args.capacity,
        threads=args.threads,
        keys=(args.key, args.server_key),
    )


def cmd_keys(args: argparse.Namespace) -> int:
    from buffer.curve import write_keys

    root = Path(args.out)
    write_keys(root, args.clients)
    print(
        f"wrote CURVE keys to {root}: the learner takes --keys {root} (it reads server.key_secret and "
        f"authorized/); copy {root}/clients/client-N.key_secret and {root}/server.key to worker node N "
        f"and pass them as --key and --server-key; delete authorized/client-N.key to revoke a node"
    )
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from buffer.replay import replay_main

    return replay_main(args.rest)


def cmd_eval(args: argparse.Namespace) -> int:
    from dynamo_async.evaluation.pass_at_k import parse_ks
    from dynamo_async.evaluation.runner import EvalRequest, eval_main

    req = EvalRequest(
        model=args.model,
        data=args.data,
        out=Path(args.out),
        n=args.n,
        ks=parse_ks(args.k),
        engine=args.engine,
        config=args.config,
        overrides=args.overrides,
        device=args.device,
        batch_size=args.batch_size,
        limit=args.limit,
        seed=args.seed,
        label=args.label,
        save_responses=args.save_responses,
    )
    return eval_main(req)  # checks the request before loading anything


def cmd_table(args: argparse.Namespace) -> int:
    from dynamo_async.evaluation.table import format_table, read_results

    results = [read_results(Path(p)) for p in args.results]
    ks = {tuple(r["k"]) for r in results}
    if len(ks) != 1:
        raise UsageError(f"table: got results with k values {sorted(ks)}, expected the same k in every file")
    sys.stdout.write(format_table(results))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from dynamo_async.report.plots import plot_main

    return plot_main([Path(d) for d in args.run_dirs], Path(args.out) if args.out else None, args.smooth)


def cmd_status(args: argparse.Namespace) -> int:
    from buffer.client import parse_address
    from dynamo_async.report.status import status_main

    host, port = parse_address(args.address)
    if port + 2 > 65535:
        raise UsageError(f"HOST:PORT: got work port {port}, expected at most 65533 (the status port is PORT + 2)")
    if args.interval <= 0 or args.timeout <= 0:
        raise UsageError(f"got --interval {args.interval}, --timeout {args.timeout}, expected both > 0")
    from buffer.curve import client_keys

    return status_main(host, port, args.interval, args.once, args.timeout, client_keys(args.key, args.server_key))


COMMANDS = {
    "config": cmd_config,
    "learner": cmd_learner,
    "run": cmd_run,
    "ray": cmd_ray,
    "buffer": cmd_buffer,
    "workers": cmd_workers,
    "replay": cmd_replay,
    "eval": cmd_eval,
    "table": cmd_table,
    "plot": cmd_plot,
    "status": cmd_status,
    "keys": cmd_keys,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UsageError as err:  # a user's mistake: one line; anything else keeps its traceback
        print(f"dynamo-async {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
