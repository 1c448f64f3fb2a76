"""Math problems with verifiable gold answers, loaded from JSONL or Parquet (DESIGN section 10).

Each row needs ``problem`` and ``answer`` (a string, or a number that is written as a string);
``id`` defaults to the row number (from 0), ``source`` to the file stem, and ``level`` is taken
from ``level`` or ``meta.level`` when that is an integer (MATH-500), else 0. Errors are
``ValueError`` naming the file, the line (JSONL) or row (Parquet) and the field.

``load_spec`` also accepts a Hugging Face dataset name, ``owner/name[:split]`` (needs the
optional ``datasets`` package and a reachable hub or a local ``datasets`` cache).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec


class Problem(msgspec.Struct, frozen=True):
    """One prompt of the task and its gold answer (without ``\\boxed{}``)."""

    id: str
    problem: str
    answer: str
    source: str
    level: int = 0


def load_problems(path: str | os.PathLike[str]) -> list[Problem]:
    """Read problems from a ``.jsonl`` or ``.parquet`` file; ids must be unique."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"problems file: got {str(path)!r}, expected an existing file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows = _read_jsonl(path)
    elif suffix == ".parquet":
        rows = _read_parquet(path)
    else:
        raise ValueError(f"problems file {str(path)!r}: got suffix {suffix!r}, "
                         "expected '.jsonl' or '.parquet'")
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for where, index, row in rows:
        problem = _to_problem(row, index, path, where)
        if problem.id in seen:
            raise ValueError(f"{path}, {where}: got duplicate id {problem.id!r} "
                             f"(first at {seen[problem.id]}), expected unique ids")
        seen[problem.id] = where
        problems.append(problem)
    return problems


def _read_jsonl(path: Path) -> list[tuple[str, int, Any]]:
    rows: list[tuple[str, int, Any]] = []
    with path.open("rb") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = msgspec.json.decode(line)
            except msgspec.DecodeError as e:
                raise ValueError(f"{path}, line {line_no}: got invalid JSON ({e}), "
                                 "expected one JSON object per line") from e
            rows.append((f"line {line_no}", len(rows), row))
    return rows


def _read_parquet(path: Path) -> list[tuple[str, int, Any]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return [(f"row {i}", i, row) for i, row in enumerate(table.to_pylist())]


def _to_problem(row: Any, index: int, path: Path, where: str) -> Problem:
    if not isinstance(row, dict):
        raise ValueError(f"{path}, {where}: got {type(row).__name__}, expected a JSON object")
    fields = {name: _text(row, name, path, where) for name in ("problem", "answer")}
    for name, value in fields.items():
        if not value.strip():
            raise ValueError(f"{path}, {where}: field {name!r} got an empty string, expected text")
    return Problem(
        id=_text(row, "id", path, where) if row.get("id") is not None else str(index),
        problem=fields["problem"],
        answer=fields["answer"].strip(),
        source=_text(row, "source", path, where) if row.get("source") is not None else path.stem,
        level=_level(row),
    )


def _text(row: dict[str, Any], name: str, path: Path, where: str) -> str:
    if name not in row or row[name] is None:
        raise ValueError(f"{path}, {where}: missing field {name!r}, expected fields "
                         "'problem' and 'answer' (and optionally 'id', 'source', 'level')")
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{path}, {where}: field {name!r} got {type(value).__name__}, "
                         "expected a string or a number")
    return value if isinstance(value, str) else str(value)


def _level(row: dict[str, Any]) -> int:
    meta = row.get("meta")
    for value in (row.get("level"), meta.get("level") if isinstance(meta, dict) else None):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 0


def load_spec(spec: str, field: str) -> list[Problem]:
    """A local JSONL/Parquet file, or a Hugging Face dataset ``owner/name[:split]``."""
    if Path(spec).exists():
        return load_problems(spec)
    if spec.endswith((".jsonl", ".ndjson", ".parquet")):
        raise ValueError(f"{field}: got {spec!r}, expected an existing file (it does not exist)")
    return load_hub_problems(spec, field)


def load_hub_problems(spec: str, field: str) -> list[Problem]:
    """Rows of a Hugging Face dataset with fields ``problem`` and ``answer``. The split is the
    one after ``:``, else the dataset's only split, else ``test``."""
    name, _, split = spec.partition(":")
    try:
        import datasets
    except ImportError:
        raise ValueError(f"{field}: got {spec!r}, which is not a local file; loading a Hugging Face "
                         "dataset needs `pip install datasets` (or save it as JSONL/Parquet with "
                         "fields problem and answer and pass the path)") from None
    if not split:
        splits = list(datasets.get_dataset_split_names(name))
        if len(splits) != 1 and "test" not in splits:
            raise ValueError(f"{field}: dataset {name!r} has splits {splits}, expected one of them named "
                             f"as {name}:SPLIT")
        split = splits[0] if len(splits) == 1 else "test"
    rows = datasets.load_dataset(name, split=split)
    missing = {"problem", "answer"} - set(rows.column_names)
    if missing:
        raise ValueError(f"{field}: dataset {name!r} lacks {sorted(missing)}, expected fields problem and answer")
    return [_to_problem(dict(row), i, Path(name), f"split {split!r}, row {i}") for i, row in enumerate(rows)]
