"""``--data`` specs of ``dynamo-async eval`` -> named benchmarks.

A spec is a JSONL/Parquet file with fields ``problem`` and ``answer``, or in verl's layout
(named after the file,
e.g. ``aime24.jsonl`` -> ``AIME24``), a Hugging Face dataset ``owner/name[:split]``, or either
prefixed with an explicit column label, ``LABEL=SPEC``. The six benchmarks of the paper get
the paper's column names (AIME24, AIME25, AMC23, MATH500, Minerva, Olympiad). ``synthetic`` is
the held-out split of the run config's synthetic task (what the learner's own evaluations use).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dynamo_async.data.problems import Problem, ReadOptions, load_spec
from dynamo_async.errors import UsageError

PAPER_NAMES = {
    "aime24": "AIME24",
    "aime25": "AIME25",
    "amc23": "AMC23",
    "math500": "MATH500",
    "math-500": "MATH500",
    "minerva": "Minerva",
    "minerva_math": "Minerva",
    "olympiadbench": "Olympiad",
    "olympiad": "Olympiad",
}


@dataclass(frozen=True)
class Benchmark:
    name: str
    spec: str
    problems: tuple[Problem, ...]


def load_benchmarks(
    specs: list[str], limit: int | None = None, synthetic=None, opts: ReadOptions = ReadOptions()
) -> list[Benchmark]:
    """Load every ``--data`` spec; ``limit`` keeps the first problems of each; ``synthetic``
    (a ``SyntheticConfig``) defines the ``synthetic`` spec; ``opts`` how rows are read (the
    run's ``data.strip_template``)."""
    if not specs:
        raise UsageError("--data: got nothing, expected at least one file or dataset")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit: got {limit}, expected at least 1")
    out: list[Benchmark] = []
    for spec in specs:
        label, path = _split_label(spec)
        problems = _synthetic(synthetic) if path == "synthetic" else load_spec(path, "--data", opts)
        if not problems:
            raise UsageError(f"--data {spec!r}: got no problems, expected at least one row")
        out.append(Benchmark(label or default_name(path), path, tuple(problems[:limit])))
    names = [b.name for b in out]
    if "Avg." in names:
        raise UsageError("--data: got a benchmark labelled 'Avg.', expected another label (the average's column)")
    if len(set(names)) != len(names):
        raise UsageError(f"--data: got benchmark names {names}, expected distinct names (label them as NAME=FILE)")
    return out


def _synthetic(cfg) -> list[Problem]:
    from dynamo_async.config.schema import SyntheticConfig
    from dynamo_async.data.synthetic import train_eval_split

    return train_eval_split(cfg if cfg is not None else SyntheticConfig())[1]


def default_name(spec: str) -> str:
    """Column name of a file or dataset: the paper's name for the six benchmarks, else its stem."""
    stem = Path(spec if Path(spec).exists() else spec.partition(":")[0]).stem  # owner/name:split -> name
    return PAPER_NAMES.get(stem.lower(), stem)


def _split_label(spec: str) -> tuple[str, str]:
    label, sep, rest = spec.partition("=")
    if sep and label and "/" not in label and not Path(spec).exists():
        return label, rest
    return "", spec
