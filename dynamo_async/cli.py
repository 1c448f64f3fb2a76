"""``dynamo-async`` command line.

Parses arguments and the config before importing anything heavy (torch, transformers,
vLLM): ``dynamo-async --help`` and ``dynamo-async config`` return at once.

Subcommands:
  config    validate a YAML config with key=value overrides; print or write the resolved
            config, or describe every field with its default.
  learner   the learner: buffer, weight sync and training (workers connect to it).
  run       learner and workers on one machine under one launcher.
  buffer    run the buffer service alone (ZeroMQ work, completions and status endpoints).
  workers   start rollout worker processes that connect to a learner (or a lone buffer).
  replay    summarise a recorded run, export rows as JSONL (``replay RUN_DIR --help``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynamo-async", description=(
        "Asynchronous off-policy RLVR with DynaMO (dynamic rollout allocation and "
        "advantage modulation)."))
    sub = parser.add_subparsers(dest="command", required=True)
    cfg = sub.add_parser("config", help="validate a config and print or write the resolved YAML")
    cfg.add_argument("--config", help="YAML run config (e.g. configs/tiny.yaml)")
    cfg.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. loss.eps_high=0.28")
    cfg.add_argument("--out", help="write the resolved config here instead of printing it")
    cfg.add_argument("--describe", action="store_true", help="list every field, its default and meaning")
    _run_parser(sub, "buffer", "run the buffer service alone, without a learner", serve=True)
    lrn = _run_parser(sub, "learner", "run the learner (hosts the buffer and the weight sync)", serve=True)
    lrn.add_argument("--advertise", help="address workers use to reach this node (default: --host, or this "
                                         "host's address when binding 0.0.0.0)")
    lrn.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    lrn.add_argument("--resume", action="store_true", help="continue from RUN_DIR's newest checkpoint")
    lrn.add_argument("--threads", type=int, help="torch CPU threads of the learner (default: torch's)")
    lrn.add_argument("--ready-file", help=argparse.SUPPRESS)
    run = _run_parser(sub, "run", "learner and workers on this machine, under one launcher", serve=False)
    run.add_argument("--num-workers", type=int, default=1, help="worker processes")
    run.add_argument("--capacity", type=int, default=8, help="samples a worker generates at once")
    run.add_argument("--device", default="cpu", help="device of the learner and the workers")
    run.add_argument("--port", type=int, default=0, help="learner work port (0: a free one)")
    run.add_argument("--resume", action="store_true", help="continue from RUN_DIR's newest checkpoint")
    wrk = sub.add_parser("workers", help="start rollout workers that connect to a learner")
    wrk.add_argument("--connect", required=True, metavar="HOST:PORT", help="the learner's (or buffer's) work port")
    wrk.add_argument("--num-workers", type=int, default=1, help="worker processes on this node")
    wrk.add_argument("--device", default="cpu", help="cpu, cuda (one GPU per worker, round robin) or cuda:N")
    wrk.add_argument("--capacity", type=int, default=8, help="samples a worker generates at once")
    wrk.add_argument("--threads", type=int, help="torch CPU threads per worker (default: torch's)")
    rep = sub.add_parser("replay", add_help=False, help="summarise or export a recorded run (RUN_DIR --help)")
    rep.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def _run_parser(sub, name: str, help_text: str, serve: bool) -> argparse.ArgumentParser:
    """A subcommand that runs a config into a run directory (and, with ``serve``, binds ports)."""
    p = sub.add_parser(name, help=help_text)
    p.add_argument("--config", required=True, help="YAML run config")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. loss.eps_high=0.28")
    p.add_argument("--run-dir", required=True, help="metrics, Arrow store, checkpoints, resolved config")
    if serve:
        p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 to serve other nodes)")
        p.add_argument("--port", type=int, default=5555, help="work port for workers; completions +1, status +2")
    return p


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
    run_dir = Path(args.run_dir)
    dump_config(cfg, run_dir / "config.yaml")
    from buffer.standalone import serve

    return serve(cfg, run_dir, args.host, args.port)


def cmd_learner(args: argparse.Namespace) -> int:
    from dynamo_async.config import load_config

    cfg = load_config(args.config, args.overrides)
    from dynamo_async.learner.main import learner_main

    return learner_main(cfg, Path(args.run_dir), args.host, args.port, args.advertise, args.resume,
                        args.device, args.ready_file, args.threads)


def cmd_run(args: argparse.Namespace) -> int:
    from dynamo_async.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.num_workers < 1 or args.capacity < 1:
        raise ValueError(f"got --num-workers {args.num_workers}, --capacity {args.capacity}, expected both >= 1")
    from dynamo_async.learner.main import check_run_dir

    check_run_dir(Path(args.run_dir), args.resume)
    from dynamo_async.launch import run_local

    return run_local(cfg, Path(args.run_dir), args.num_workers, args.capacity, args.device, args.port, args.resume)


def cmd_workers(args: argparse.Namespace) -> int:
    from workers.worker import parse_connect

    parse_connect(args.connect)
    if args.capacity < 1:
        raise ValueError(f"--capacity: got {args.capacity}, expected at least 1")
    from workers.launcher import launch_workers

    return launch_workers(args.connect, args.num_workers, args.device, args.capacity, threads=args.threads)


def cmd_replay(args: argparse.Namespace) -> int:
    from buffer.replay import replay_main

    return replay_main(args.rest)


COMMANDS = {"config": cmd_config, "learner": cmd_learner, "run": cmd_run, "buffer": cmd_buffer,
            "workers": cmd_workers, "replay": cmd_replay}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ValueError as err:
        print(f"dynamo-async {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
