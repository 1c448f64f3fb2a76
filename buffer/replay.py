"""Inspect and replay a recorded run (``dynamo-async replay RUN_DIR ...``, docs/design.md section 6 "Replay").

Reads the Arrow store written by ``buffer.store.RunStore``:

- ``summarize`` / ``format_summary``: completions, groups and learner steps; per-prompt accuracy;
  the allocation histogram (group size -> groups); the staleness of every trained sample
  (``policy_version - min(versions)``); the zero-variance fraction of trained groups; what batch
  assembly dropped. A completion received twice (same group and sample index, e.g. after a lease
  was handed out again) counts once, at its first arrival.
- ``export_rows``: selected rows as JSONL (lists as JSON arrays).
- ``format_samples``: the decoded samples the learner kept per step (table ``samples``,
  ``metrics.log_samples``), as text (``replay RUN_DIR --samples [--step N] [--prompt ID]``).
- ``iter_batches``: the exact recorded ``LearnerBatch`` es in step order, for trainer-only replay (each
  sample the ``SampleRecord`` it was, rebuilt from its row by column name).
- ``replay_main``: the command line; ``add_arguments`` / ``run`` let the CLI wire it as a subcommand.

Version filters select on the ``policy_version`` column: the learner version when a completion
arrived, or the version a batch was handed to.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from buffer.batch import LearnerBatch, ReadyGroup
from buffer.store import read_table
from buffer.tables import records_from
from dynamo_async.errors import UsageError

TOP_PROMPTS = 10
FILTERS = {
    "completions": ("prompt_id", "min_version", "max_version"),
    "batches": ("prompt_id", "min_version", "max_version", "step"),
    "steps": ("min_version", "max_version", "step"),
    "samples": ("prompt_id", "min_version", "max_version", "step"),
}


def _histogram(values: np.ndarray) -> dict[int, int]:
    keys, counts = np.unique(values, return_counts=True)
    return {int(k): int(c) for k, c in zip(keys, counts)}


def _first_arrivals(completions: pa.Table) -> pa.Table:
    """Completions without repeats of a (group_id, sample_index), keeping the first arrival."""
    keys = np.stack(
        [completions["group_id"].to_numpy(), completions["sample_index"].to_numpy().astype(np.int64)], axis=1
    )
    if len(keys) == 0:
        return completions
    _, first = np.unique(keys, axis=0, return_index=True)
    return completions.take(np.sort(first))


def _prompt_accuracy(completions: pa.Table) -> dict[str, tuple[int, int, float]]:
    agg = completions.group_by("prompt_id", use_threads=False).aggregate([("acc", "sum"), ("acc", "count")])
    rows = zip(agg["prompt_id"].to_pylist(), agg["acc_sum"].to_pylist(), agg["acc_count"].to_pylist())
    return {p: (int(k), int(n), k / n) for p, k, n in rows}


def _row_min(lists: pa.ChunkedArray, num_rows: int) -> np.ndarray:
    """Minimum of every row's list (int64 max for an empty list)."""
    out = np.full(num_rows, np.iinfo(np.int64).max, dtype=np.int64)
    start = 0
    for chunk in lists.chunks:
        values = chunk.flatten().to_numpy()
        parents = pc.list_parent_indices(chunk).to_numpy()
        np.minimum.at(out, parents + start, values)
        start += len(chunk)
    return out


def _zero_variance(batches: pa.Table) -> tuple[int, int]:
    """(groups whose samples' acc are all equal, all groups) over the learner batches."""
    agg = batches.group_by(["step", "group_id"], use_threads=False).aggregate([("acc", "min"), ("acc", "max")])
    same = pc.equal(agg["acc_min"], agg["acc_max"])
    return int(pc.sum(same).as_py() or 0), agg.num_rows


def summarize(run_dir: str | Path) -> dict[str, Any]:
    """Counts and histograms of a recorded run (see the module docstring)."""
    received = read_table(run_dir, "completions", ["group_id", "prompt_id", "sample_index", "acc"])
    completions = _first_arrivals(received)
    batches = read_table(run_dir, "batches", ["step", "group_id", "policy_version", "versions", "acc"])
    steps = read_table(run_dir, "steps", ["dropped_stale", "dropped_zero_variance"])
    group_sizes = pc.value_counts(completions["group_id"]).field("counts").to_numpy()
    has_tokens = pc.list_value_length(batches["versions"]).to_numpy() > 0
    oldest = _row_min(batches["versions"], batches.num_rows)[has_tokens]
    staleness = batches["policy_version"].to_numpy()[has_tokens] - oldest
    zero_var, batch_groups = _zero_variance(batches)
    return {
        "completions": completions.num_rows,
        "duplicate_completions": received.num_rows - completions.num_rows,
        "groups": len(group_sizes),
        "steps": steps.num_rows,
        "prompt_accuracy": _prompt_accuracy(completions),
        "allocation": _histogram(group_sizes),
        "staleness": _histogram(staleness),
        "batch_groups": batch_groups,
        "zero_variance_groups": zero_var,
        "zero_variance_fraction": zero_var / batch_groups if batch_groups else None,
        "dropped_stale": int(pc.sum(steps["dropped_stale"]).as_py() or 0),
        "dropped_zero_variance": int(pc.sum(steps["dropped_zero_variance"]).as_py() or 0),
    }


def _format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """Plain-text table: first column left-aligned, the others right-aligned."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _accuracy_section(accuracy: dict[str, tuple[int, int, float]]) -> str:
    ranked = sorted(accuracy.items(), key=lambda kv: (-kv[1][2], -kv[1][1], kv[0]))
    rows = [[p, k, n, f"{acc:.3f}"] for p, (k, n, acc) in ranked]
    headers = ["prompt", "correct", "attempts", "accuracy"]
    if len(rows) <= 2 * TOP_PROMPTS:
        return f"per-prompt accuracy ({len(rows)} prompts)\n" + _format_table(headers, rows)
    return (
        f"per-prompt accuracy ({len(rows)} prompts): top {TOP_PROMPTS}\n"
        + _format_table(headers, rows[:TOP_PROMPTS])
        + f"\n... {len(rows) - 2 * TOP_PROMPTS} more ...\nbottom {TOP_PROMPTS}\n"
        + _format_table(headers, rows[-TOP_PROMPTS:])
    )


def format_summary(summary: dict[str, Any]) -> str:
    """A readable plain-text report of ``summarize``'s dict."""
    s = summary
    fraction = "n/a" if s["zero_variance_fraction"] is None else f"{s['zero_variance_fraction']:.3f}"
    overview = _format_table(
        ["", "value"],
        [
            ["completions", s["completions"]],
            ["duplicate completions", s["duplicate_completions"]],
            ["groups", s["groups"]],
            ["learner steps", s["steps"]],
            ["groups trained", s["batch_groups"]],
            ["zero-variance groups", f"{s['zero_variance_groups']} ({fraction})"],
            ["dropped stale", s["dropped_stale"]],
            ["dropped zero-variance", s["dropped_zero_variance"]],
        ],
    )
    allocation = _format_table(["group size", "groups"], [[n, c] for n, c in s["allocation"].items()])
    staleness = _format_table(["staleness", "samples"], [[d, c] for d, c in s["staleness"].items()])
    return (
        "\n\n".join(
            [
                "run summary\n" + overview,
                _accuracy_section(s["prompt_accuracy"]),
                "allocation (samples received per group)\n" + allocation,
                "staleness of trained samples (policy_version - oldest token version)\n" + staleness,
            ]
        )
        + "\n"
    )


def _filter_expression(table: str, filters: dict[str, Any]) -> pc.Expression | None:
    given = {k: v for k, v in filters.items() if v is not None}
    invalid = sorted(set(given) - set(FILTERS[table]))
    if invalid:
        raise UsageError(f"got filters {invalid} for table {table}, expected only {list(FILTERS[table])}")
    lo, hi = given.get("min_version"), given.get("max_version")
    if lo is not None and hi is not None and lo > hi:
        raise UsageError(f"got min_version={lo} > max_version={hi}, expected min_version <= max_version")
    terms = []
    if "prompt_id" in given:
        terms.append(pc.field("prompt_id") == given["prompt_id"])
    if lo is not None:
        terms.append(pc.field("policy_version") >= lo)
    if hi is not None:
        terms.append(pc.field("policy_version") <= hi)
    if "step" in given:
        terms.append(pc.field("step") == given["step"])
    expr = None
    for term in terms:
        expr = term if expr is None else expr & term
    return expr


def export_rows(
    run_dir: str | Path,
    out_path: str | Path,
    table: str = "completions",
    prompt_id: str | None = None,
    min_version: int | None = None,
    max_version: int | None = None,
    step: int | None = None,
) -> int:
    """Write the selected rows of ``table`` to ``out_path`` as JSONL; return how many."""
    rows = select_rows(run_dir, table, prompt_id=prompt_id, min_version=min_version, max_version=max_version, step=step)
    with open(out_path, "w", encoding="utf-8") as out:
        for batch in rows.to_batches(max_chunksize=1024):
            out.writelines(json.dumps(row) + "\n" for row in batch.to_pylist())
    return rows.num_rows


def select_rows(run_dir: str | Path, table: str, **filters: Any) -> pa.Table:
    """The rows of ``table`` that match ``filters`` (names as in ``FILTERS``)."""
    if table not in FILTERS:
        raise UsageError(f"got table {table!r}, expected one of {list(FILTERS)}")
    expr = _filter_expression(table, filters)
    rows = read_table(run_dir, table)
    return rows if expr is None else rows.filter(expr)


def format_samples(rows: pa.Table) -> str:
    """Rows of the ``samples`` table as text: a heading line per sample, then its prompt and
    response."""
    if rows.num_rows == 0:
        return "no samples (the learner keeps metrics.log_samples per step; 0 or an older run: none)\n"
    out = []
    for r in rows.to_pylist():
        out.append(
            f"=== step {r['step']}  prompt {r['prompt_id']} (group {r['group_id']}, sample {r['sample_index']})  "
            f"rollouts {r['rollouts']}  reward {r['reward']:.3g}  acc {r['acc']}  "
            f"{r['num_tokens']} tokens ({r['finish_reason']})  answer {r['answer']}"
        )
        out += ["--- prompt", r["prompt"], "--- response", r["response"], ""]
    return "\n".join(out)


def _list_rows(column: pa.ChunkedArray) -> list[np.ndarray]:
    """Per-row numpy views of a list column."""
    out: list[np.ndarray] = []
    for chunk in column.chunks:
        values = chunk.flatten().to_numpy()
        offsets = np.concatenate([[0], np.cumsum(chunk.value_lengths().to_numpy())])
        out.extend(values[a:b] for a, b in zip(offsets[:-1], offsets[1:]))
    return out


def _groups(rows: pa.Table) -> tuple[ReadyGroup, ...]:
    """The groups of one step's sample rows, in recorded order, samples by sample_index; every
    sample is the ``SampleRecord`` rebuilt from its row by column name."""
    records = records_from(rows)
    prompts, answers = _list_rows(rows["prompt_token_ids"]), rows["answer"].to_pylist()
    members: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        members.setdefault(r.group_id, []).append(i)
    groups = []
    for group_id, idx in members.items():
        idx.sort(key=lambda i: records[i].sample_index)
        first = records[idx[0]]
        samples = tuple(records[i] for i in idx)
        groups.append(ReadyGroup(group_id, first.prompt_id, prompts[idx[0]], answers[idx[0]], samples))
    return tuple(groups)


def iter_batches(run_dir: str | Path) -> Iterator[LearnerBatch]:
    """The recorded learner batches in step order, rebuilt exactly (trainer-only replay)."""
    steps = read_table(run_dir, "steps").to_pylist()
    batches = read_table(run_dir, "batches")
    batch_steps = batches["step"].to_numpy()
    order = np.argsort(batch_steps, kind="stable")
    sorted_steps = batch_steps[order]
    for row in sorted(steps, key=lambda r: r["step"]):
        lo, hi = np.searchsorted(sorted_steps, [row["step"], row["step"] + 1])
        groups = _groups(batches.take(order[lo:hi]))
        if sum(len(g.samples) for g in groups) != row["num_samples"]:
            raise ValueError(
                f"got {hi - lo} sample rows for step {row['step']}, expected "
                f"{row['num_samples']}: the store's batches table is damaged"
            )
        yield LearnerBatch(
            step=row["step"],
            policy_version=row["policy_version"],
            groups=groups,
            dropped_stale=row["dropped_stale"],
            dropped_zero_variance=row["dropped_zero_variance"],
            staleness=tuple(row["staleness"]),
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory (holds store/)")
    parser.add_argument("--export", metavar="FILE", help="write the selected rows as JSONL")
    parser.add_argument(
        "--samples",
        action="store_true",
        help="print the decoded samples the learner kept per step (metrics.log_samples), "
        "optionally of one --step / --prompt / version",
    )
    parser.add_argument(
        "--table", choices=list(FILTERS), default="completions", help="table to export (default: completions)"
    )
    parser.add_argument("--prompt", help="only rows of this prompt id")
    parser.add_argument("--version", type=int, help="only rows with this policy_version")
    parser.add_argument("--min-version", type=int, help="only rows with policy_version >= V")
    parser.add_argument("--max-version", type=int, help="only rows with policy_version <= V")
    parser.add_argument("--step", type=int, help="only rows of this learner step (batches, steps, samples)")


def run(args: argparse.Namespace) -> int:
    """Print the summary, or export the selected rows with --export."""
    lo, hi = args.min_version, args.max_version
    if args.version is not None:
        if lo is not None or hi is not None:
            raise UsageError("got --version with --min-version/--max-version, expected one or the other")
        lo = hi = args.version
    filters = dict(prompt_id=args.prompt, min_version=lo, max_version=hi, step=args.step)
    if args.samples:
        if args.export is not None or args.table != "completions":
            raise UsageError("got --samples with --export/--table, expected one: --export FILE --table samples")
        sys.stdout.write(format_samples(select_rows(args.run_dir, "samples", **filters)))
        return 0
    if args.export is None:
        given = sorted(k for k, v in filters.items() if v is not None)
        if given or args.table != "completions":
            raise UsageError(
                f"got {given or ['--table']} without --export, expected --export FILE "
                "to select rows, or --samples (without either the run is summarized)"
            )
        sys.stdout.write(format_summary(summarize(args.run_dir)))
        return 0
    count = export_rows(args.run_dir, args.export, table=args.table, **filters)
    print(f"wrote {count} {args.table} rows to {args.export}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``dynamo-async replay`` (also what ``dynamo-async replay --help`` prints)."""
    parser = argparse.ArgumentParser(
        prog="dynamo-async replay",
        description=(
            "Summarize a recorded run, print the decoded samples the learner kept (--samples), "
            "or export selected rows of its Arrow store as JSONL."
        ),
    )
    add_arguments(parser)
    return parser


def replay_main(argv: list[str] | None = None) -> int:
    """``dynamo-async replay RUN_DIR [--samples | --export FILE [--table T]] [--prompt ID] [--step N]
    [--version V | ...]``."""
    return run(build_parser().parse_args(argv))
