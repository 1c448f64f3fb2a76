"""``dynamo-async`` command line.

Parses arguments and the config before importing anything heavy (torch, transformers,
vLLM): ``dynamo-async --help`` and ``dynamo-async config`` return at once.

Subcommands:
  config    validate a YAML config with key=value overrides; print or write the resolved
            config, or describe every field with its default.
"""

from __future__ import annotations

import argparse
import sys


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


COMMANDS = {"config": cmd_config}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ValueError as err:
        print(f"dynamo-async {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
