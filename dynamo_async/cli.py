"""``dynamo-async`` command line.

Parses arguments and the config before importing anything heavy (torch, transformers,
vLLM): ``dynamo-async --help`` and ``dynamo-async config`` return at once.

Subcommands:
  config    validate a YAML config with key=value overrides; print or write the resolved
            config, or describe every field with its default.
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
    buf = sub.add_parser("buffer", help="run the buffer service alone, without a learner")
    buf.add_argument("--config", required=True, help="YAML run config")
    buf.add_argument("overrides", nargs="*", metavar="key=value")
    buf.add_argument("--run-dir", required=True, help="where the Arrow store and resolved config go")
    buf.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for other nodes)")
    buf.add_argument("--port", type=int, default=5555, help="work port; completions +1, status +2")
    wrk = sub.add_parser("workers", help="start rollout workers that connect to a learner")
    wrk.add_argument("--connect", required=True, metavar="HOST:PORT", help="the learner's (or buffer's) work port")
    wrk.add_argument("--num-workers", type=int, default=1, help="worker processes on this node")
    wrk.add_argument("--device", default="cpu", help="cpu, cuda (one GPU per worker, round robin) or cuda:N")
    wrk.add_argument("--capacity", type=int, default=8, help="samples a worker generates at once")
    rep = sub.add_parser("replay", add_help=False, help="summarise or export a recorded run (RUN_DIR --help)")
    rep.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


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


def cmd_workers(args: argparse.Namespace) -> int:
    from workers.worker import parse_connect

    parse_connect(args.connect)
    if args.capacity < 1:
        raise ValueError(f"--capacity: got {args.capacity}, expected at least 1")
    from workers.launcher import launch_workers

    return launch_workers(args.connect, args.num_workers, args.device, args.capacity)


def cmd_replay(args: argparse.Namespace) -> int:
    from buffer.replay import replay_main

    return replay_main(args.rest)


COMMANDS = {"config": cmd_config, "buffer": cmd_buffer, "workers": cmd_workers, "replay": cmd_replay}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ValueError as err:
        print(f"dynamo-async {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
