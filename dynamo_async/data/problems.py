"""Math problems with verifiable gold answers, loaded from JSONL or Parquet (docs/data.md).

Rows are read in the layout they are published in (``layouts.py``): ``problem`` and ``answer``
(the evaluation benchmarks), verl's RL layout (``prompt`` chat messages,
``reward_model.ground_truth``; DAPO-Math-17k on the hub), or fields named in the config. ``id``
defaults to the row number (from 0), ``source`` to the file stem, and ``level`` is taken from
``level`` or ``meta.level`` when that is an integer (MATH-500), else 0. A known prompt template
around the problem can be stripped at load (``templates.py``). Errors are ``ValueError`` naming
the file, the line (JSONL) or row (Parquet) and the field.

``load_spec`` also accepts a Hugging Face dataset name, ``owner/name[:split]`` (needs the
optional ``datasets`` package and a reachable hub or a local ``datasets`` cache).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec

from dynamo_async.data import templates
from dynamo_async.data.layouts import FieldMap, lookup, problem_text


class Problem(msgspec.Struct, frozen=True):
    """One prompt of the task and its gold answer (without ``\\boxed{}``)."""

    id: str
    problem: str
    answer: str
    source: str
    level: int = 0


class ReadOptions(msgspec.Struct, frozen=True):
    """How a file's rows become problems: field mapping, template stripping, id check."""

    fields: FieldMap = FieldMap()
    strip_template: str = ""
    unique_ids: bool = True


def load_problems(path: str | os.PathLike[str], opts: ReadOptions = ReadOptions()) -> list[Problem]:
    """Read problems from a ``.jsonl`` or ``.parquet`` file (ids unique unless told otherwise)."""
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
    return convert_rows(rows, path.stem, str(path), opts)


def convert_rows(rows: list[tuple[str, int, Any]], stem: str, name: str, opts: ReadOptions) -> list[Problem]:
    """(where, index, row) triples as problems, in order."""
    if not rows:
        return []
    paths = opts.fields.resolve(rows[0][2], f"{name}, {rows[0][0]}")
    problems = [_to_problem(row, index, paths, stem, f"{name}, {where}", opts.strip_template)
                for where, index, row in rows]
    if opts.unique_ids:
        check_unique_ids(problems, [f"{name}, {where}" for where, _, _ in rows])
    return problems


def check_unique_ids(problems: list[Problem], wheres: list[str] | None = None) -> None:
    seen: dict[str, int] = {}
    for i, p in enumerate(problems):
        if p.id in seen:
            first, here = (wheres[seen[p.id]], wheres[i]) if wheres else (f"problem {seen[p.id]}", f"problem {i}")
            raise ValueError(f"{here}: got duplicate id {p.id!r} (first at {first}), expected unique ids "
                             "(repeated copies of a prompt merge with data.dedup: true; or name another id "
                             "field with data.id_field)")
        seen[p.id] = i


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


def _to_problem(row: Any, index: int, paths: dict[str, str], stem: str, where: str, strip: str) -> Problem:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: got {type(row).__name__}, expected a JSON object")
    text = problem_text(_required(row, paths["problem"], where), paths["problem"], where)
    if strip:
        text = templates.strip(strip, text)
    answer = _scalar(_required(row, paths["answer"], where), paths["answer"], where)
    for name, value in ((paths["problem"], text), (paths["answer"], answer)):
        if not value.strip():
            raise ValueError(f"{where}: field {name!r} got an empty string, expected text")
    ident, source = lookup(row, paths["id"]), lookup(row, paths["source"])
    return Problem(id=_scalar(ident, paths["id"], where) if ident is not None else str(index), problem=text,
                   answer=answer.strip(), source=_scalar(source, paths["source"], where) if source is not None else stem,
                   level=_level(row))


def _required(row: dict[str, Any], path: str, where: str) -> Any:
    value = lookup(row, path)
    if value is None:
        raise ValueError(f"{where}: missing field {path!r}, expected fields 'problem' and 'answer' (or verl's "
                         "'prompt' and 'reward_model.ground_truth'; other layouts: data.problem_field and "
                         f"data.answer_field); the row has fields {sorted(row)}")
    return value


def _scalar(value: Any, name: str, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{where}: field {name!r} got {type(value).__name__}, "
                         "expected a string or a number")
    return value if isinstance(value, str) else str(value)


def _level(row: dict[str, Any]) -> int:
    meta = row.get("meta")
    for value in (row.get("level"), meta.get("level") if isinstance(meta, dict) else None):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 0


def load_spec(spec: str, field: str, opts: ReadOptions = ReadOptions()) -> list[Problem]:
    """A local JSONL/Parquet file, or a Hugging Face dataset ``owner/name[:split]``."""
    if Path(spec).exists():
        return load_problems(spec, opts)
    if spec.endswith((".jsonl", ".ndjson", ".parquet")):
        raise ValueError(f"{field}: got {spec!r}, expected an existing file (it does not exist)")
    from dynamo_async.data.hub import load_hub_problems

    return load_hub_problems(spec, field, opts)
