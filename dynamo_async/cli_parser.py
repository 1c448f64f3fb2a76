"""The ``dynamo-async`` argument parser: every subcommand's options with their defaults shown in
``--help`` (``cli.py`` runs the commands). Imports nothing heavy: ``--help`` returns at once."""

from __future__ import annotations

import argparse
from importlib.metadata import version


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to help, except where X is None or False or the help already explains it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        """The help of ``action``, with its default unless that would say nothing new."""
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class ReplayHelp(argparse.Action):
    """``replay --help``: print replay's own help (buffer/replay.py, imported only then) and exit 0."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        """Print the help of ``buffer.replay.build_parser()`` and exit."""
        from buffer.replay import build_parser as replay_parser

        replay_parser().print_help()
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynamo-async",
        description=("Asynchronous off-policy RLVR with DynaMO (dynamic rollout allocation and advantage modulation)."),
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dynamo-async {version('dynamo-async')}")
    sub = parser.add_subparsers(dest="command", required=True)
    cfg = sub.add_parser("config", help="validate a config and print or write the resolved YAML")
    cfg.add_argument("--config", help="YAML run config (e.g. configs/tiny.yaml)")
    cfg.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. loss.eps_high=0.28")
    cfg.add_argument("--out", help="write the resolved config here instead of printing it")
    cfg.add_argument("--describe", action="store_true", help="list every field, its default and meaning")
    _run_parser(sub, "buffer", "run the buffer service alone, without a learner", serve=True)
    lrn = _run_parser(sub, "learner", "run the learner (hosts the buffer and the weight sync)", serve=True)
    lrn.add_argument(
        "--advertise",
        help="address workers use to reach this node (default: --host, or this host's address when binding 0.0.0.0)",
    )
    lrn.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    lrn.add_argument("--resume", action="store_true", help="continue from RUN_DIR's newest checkpoint")
    lrn.add_argument("--threads", type=int, help="torch CPU threads of the learner (default: torch's)")
    lrn.add_argument("--ready-file", help=argparse.SUPPRESS)
    run = _run_parser(sub, "run", "learner and workers on this machine, under one launcher", serve=False)
    run.add_argument("--num-workers", type=int, default=1, help="worker processes")
    run.add_argument("--capacity", type=int, default=8, help="samples a worker generates at once")
    run.add_argument(
        "--device",
        default="cpu",
        help="cpu; cuda (one GPU: learner and workers share cuda:0; several: learner on cuda:0, workers on "
        "the others); cuda:N (all on GPU N)",
    )
    run.add_argument("--port", type=work_port, default=0, help="learner work port (0: a free one)")
    run.add_argument("--resume", action="store_true", help="continue from RUN_DIR's newest checkpoint")
    wrk = sub.add_parser("workers", help="start rollout workers that connect to a learner")
    wrk.add_argument("--connect", required=True, metavar="HOST:PORT", help="the learner's (or buffer's) work port")
    wrk.add_argument("--num-workers", type=int, default=1, help="worker processes on this node")
    wrk.add_argument("--device", default="cpu", help="cpu, cuda (one GPU per worker, round robin) or cuda:N")
    wrk.add_argument("--capacity", type=int, default=8, help="samples a worker generates at once")
    wrk.add_argument("--threads", type=int, help="torch CPU threads per worker (default: torch's)")
    _client_keys(wrk)
    _ray_parser(sub)
    keys = sub.add_parser("keys", help="write CURVE keys: a server pair and client pairs (ZeroMQ certificates)")
    keys.add_argument("--out", required=True, metavar="DIR", help="a new folder for the keys")
    keys.add_argument("--clients", type=int, default=1, help="client key pairs (one per worker node)")
    rep = sub.add_parser("replay", add_help=False, help="summarise or export a recorded run (RUN_DIR --help)")
    rep.add_argument("-h", "--help", action=ReplayHelp, help="show replay's help and exit")
    rep.add_argument("rest", nargs=argparse.REMAINDER)
    _eval_parser(sub)
    tab = sub.add_parser("table", help="print several eval results.json side by side (Table 1 layout)")
    tab.add_argument("results", nargs="+", help="results.json files written by dynamo-async eval")
    plot = sub.add_parser("plot", help="PNG figures of a run directory, or several runs overlaid")
    plot.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="directory of a run (metrics.jsonl, Arrow store); several: one figure per metric, one colour per run",
    )
    plot.add_argument("--out", help="where to write the PNGs (default: RUN_DIR/plots; several runs: ./plots-compare)")
    plot.add_argument(
        "--smooth",
        type=int,
        default=1,
        metavar="K",
        help="centred moving average over K steps, drawn over the faint raw points (default: 1, raw only)",
    )
    st = sub.add_parser("status", help="live view of a running learner")
    st.add_argument("address", metavar="HOST:PORT", help="the learner's work port, as given to workers --connect")
    st.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    st.add_argument("--once", action="store_true", help="print one snapshot and exit")
    st.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each answer")
    _client_keys(st)
    for subparser in sub.choices.values():
        subparser.formatter_class = DefaultsHelpFormatter
    return parser


def _ray_parser(sub) -> None:
    ray = _run_parser(sub, "ray", "learner and workers placed and watched by Ray (needs '.[ray]')", serve=False)
    ray.add_argument("--num-workers", type=int, required=True, help="worker actors, one worker process each")
    ray.add_argument("--capacity", type=int, default=8, help="samples a worker generates at once")
    ray.add_argument("--device", help="device of the learner and the workers (default: cuda for a role given GPUs)")
    ray.add_argument("--worker-cpus", type=float, default=1.0, help="Ray CPUs per worker actor (its torch threads)")
    ray.add_argument("--worker-gpus", type=float, default=0.0, help="Ray GPUs per worker actor (fractions share one)")
    ray.add_argument("--learner-cpus", type=float, default=1.0, help="Ray CPUs of the learner actor (its threads)")
    ray.add_argument("--learner-gpus", type=float, default=0.0, help="Ray GPUs of the learner actor (at most 1)")
    ray.add_argument(
        "--address",
        default="local",
        help="Ray cluster to join (auto, HOST:PORT, ray://...); local starts one here and stops it at the end",
    )
    ray.add_argument("--num-cpus", type=int, help="CPUs of the local cluster (default: this machine's)")
    ray.add_argument("--port", type=work_port, default=0, help="learner work port (0: a free one)")
    ray.add_argument("--keys", metavar="DIR", help="CURVE keys (default off a local cluster: new ones in RUN_DIR/keys)")
    ray.add_argument("--insecure", action="store_true", help="on an existing cluster, serve workers without keys")
    ray.add_argument("--max-restarts", type=int, default=3, help="Ray restarts of a worker actor that dies")
    ray.add_argument("--resume", action="store_true", help="continue from RUN_DIR's newest checkpoint")


def _eval_parser(sub) -> None:
    ev = sub.add_parser("eval", help="pass@k of a model on benchmarks, laid out like the paper's Table 1")
    ev.add_argument(
        "--model",
        required=True,
        metavar="NAME_OR_PATH",
        help="Hugging Face name, model folder, builtin, or a run directory (its newest "
        "checkpoint) or checkpoint directory (RUN_DIR/checkpoints/step-N)",
    )
    ev.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="[LABEL=]FILE_OR_DATASET",
        help="JSONL/Parquet with fields problem and answer, a Hugging Face dataset "
        "owner/name[:split], or 'synthetic' (the config's held-out sums); repeat for "
        "several benchmarks",
    )
    ev.add_argument("--n", type=int, default=1, help="samples per problem")
    ev.add_argument("--k", default="1", help="pass@k values, comma-separated, each <= --n (e.g. 1,32)")
    ev.add_argument("--engine", choices=("hf", "vllm"), help="generation engine (default: the config's)")
    ev.add_argument("--out", required=True, help="results .json; per-problem records go beside it (resumable)")
    ev.add_argument("--config", help="run config whose prompt format and sampling settings to use")
    ev.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. rollout.max_new_tokens=4096")
    ev.add_argument("--device", default="cpu", help="cpu or cuda[:N] (hf engine)")
    ev.add_argument("--batch-size", type=int, default=32, help="samples generated at once")
    ev.add_argument("--limit", type=int, help="only the first N problems of each benchmark")
    ev.add_argument("--seed", type=int, default=0, help="base of the per-sample seeds")
    ev.add_argument("--label", help="name of the model in the table (default: --model)")
    ev.add_argument("--save-responses", action="store_true", help="keep the response texts in the records")


def _run_parser(sub, name: str, help_text: str, serve: bool) -> argparse.ArgumentParser:
    """A subcommand that runs a config into a run directory (and, with ``serve``, binds ports)."""
    p = sub.add_parser(name, help=help_text)
    p.add_argument("--config", required=True, help="YAML run config")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. loss.eps_high=0.28")
    p.add_argument("--run-dir", required=True, help="metrics, Arrow store, checkpoints, resolved config")
    if serve:
        p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 to serve other nodes)")
        p.add_argument("--port", type=work_port, default=5555, help="work port for workers; completions +1, status +2")
        p.add_argument("--keys", metavar="DIR", help="CURVE keys from `dynamo-async keys` (required off loopback)")
        p.add_argument("--insecure", action="store_true", help="serve other nodes without keys (anyone can join)")
    return p


def _client_keys(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", metavar="FILE", help="this client's key pair (KEYS/clients/client-N.key_secret)")
    p.add_argument("--server-key", metavar="FILE", help="the learner's public key (KEYS/server.key)")


def work_port(text: str) -> int:
    """``--port``: a work port that leaves room for the completions (+1) and status (+2) ports."""
    if not text.isdigit() or int(text) > 65533:
        raise argparse.ArgumentTypeError(
            f"got {text!r}, expected 0..65533 (the learner binds PORT, PORT + 1 and PORT + 2; 0 picks free ones)"
        )
    return int(text)
