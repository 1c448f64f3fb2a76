"""Per-benchmark pass@k with the average, laid out like the paper's Table 1:

    Model          AIME24        AIME25        ...  Avg.
                   P@1   P@32    P@1   P@32         P@1   P@32
    my-run/step-400 17.2  37.2    9.8   32.5         32.7  55.6

Values are percentages. ``Avg.`` is the unweighted mean over the benchmarks (as in the
paper: each benchmark counts once, whatever its size).
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from dynamo_async.errors import UsageError
from dynamo_async.evaluation.pass_at_k import mean_pass_at_k
from dynamo_async.evaluation.records import EvalSettings, ProblemRecord


def summarize(
    label: str, settings: EvalSettings, ks: tuple[int, ...], benchmarks: list[tuple[str, str, list[ProblemRecord]]]
) -> dict:
    """The results.json object: per benchmark (name, spec, its records) and the average."""
    rows = []
    for name, spec, records in benchmarks:
        assert records, f"benchmark {name} has no records"
        counts = [(r.n, r.correct) for r in records]
        tokens = [t for r in records for t in r.tokens]
        finishes = [f for r in records for f in r.finish]
        row = {
            "name": name,
            "data": spec,
            "problems": len(records),
            "samples_per_problem": settings.n,
            **{f"pass@{k}": 100.0 * mean_pass_at_k(counts, k) for k in ks},
            "mean_response_tokens": sum(tokens) / len(tokens),
            "truncated_frac": finishes.count("length") / len(finishes),
        }
        rows.append(row)
    average = {f"pass@{k}": sum(r[f"pass@{k}"] for r in rows) / len(rows) for k in ks}
    return {
        "model": label,
        "settings": msgspec.to_builtins(settings),
        "k": list(ks),
        "benchmarks": rows,
        "average": average,
    }


def format_table(results: list[dict]) -> str:
    """One line per result (model), columns per benchmark and k, then ``Avg.``."""
    ks = results[0]["k"]
    names = list(dict.fromkeys(b["name"] for r in results for b in r["benchmarks"]))
    cell = max(6, *(len(f"P@{k}") + 1 for k in ks))
    group = [max(len(n), cell * len(ks)) for n in names + ["Avg."]]
    first = max(5, *(len(r["model"]) for r in results)) + 2
    head1 = "Model".ljust(first) + "  ".join(n.ljust(w) for n, w in zip(names + ["Avg."], group))
    sub = "".join(f"P@{k}".rjust(cell) for k in ks)
    head2 = " " * first + "  ".join(sub.ljust(w) for w in group)
    lines = [head1.rstrip(), head2.rstrip()]
    for r in results:
        by_name = {b["name"]: b for b in r["benchmarks"]}
        cells = []
        for name, w in zip(names + ["Avg."], group):
            src = r["average"] if name == "Avg." else by_name.get(name)
            vals = "".join((f"{src[f'pass@{k}']:.1f}" if src and f"pass@{k}" in src else "-").rjust(cell) for k in ks)
            cells.append(vals.ljust(w))
        lines.append((r["model"].ljust(first) + "  ".join(cells)).rstrip())
    return "\n".join(lines) + "\n"


def write_results(path: Path, results: dict) -> None:
    """Write results.json atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(path)


def read_results(path: Path) -> dict:
    """A results.json written by ``dynamo-async eval``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"table: got {str(path)!r} ({err}), expected a results.json of dynamo-async eval") from None
    if not isinstance(data, dict) or not {"model", "k", "benchmarks", "average"} <= set(data) or not data["k"]:
        raise UsageError(
            f"table: got {str(path)!r} without model, k, benchmarks and average, "
            "expected a results.json of dynamo-async eval"
        )
    return data
