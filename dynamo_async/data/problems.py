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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from dynamo_async.data import templates
from dynamo_async.data.layouts import FieldMap, lookup, problem_text
from dynamo_async.errors import UsageError


class Problem(msgspec.Struct, frozen=True):
    """One prompt of the task and its gold answer (without ``\\boxed{}``)."""

    id: str
    problem: str
    answer: str
    source: str
    level: int = 0
    fields: bytes = b""
    """The row as read, msgpack-encoded, for user reward functions (``rewards.functions``)."""


class ReadOptions(msgspec.Struct, frozen=True):
    """How a file's rows become problems: field mapping and template stripping."""

    fields: FieldMap = FieldMap()
    strip_template: str = ""


Located = tuple[str, Problem]
"""A problem and where it was read ("FILE, line 3")."""

_DUPLICATE_HINT = "repeated copies of a prompt merge with data.dedup: true; or name another id field with data.id_field"


def load_problems(path: str | os.PathLike[str], opts: ReadOptions = ReadOptions()) -> list[Problem]:
    """Read problems from a ``.jsonl`` or ``.parquet`` file; ids must be unique."""
    return with_unique_ids(iter_problems(path, opts))


def iter_problems(path: str | os.PathLike[str], opts: ReadOptions = ReadOptions()) -> Iterator[Located]:
    """The problems of a ``.jsonl`` or ``.parquet`` file one at a time (a file of millions of
    repeated rows is never held whole), ids unchecked."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"problems file: got {str(path)!r}, expected an existing file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows = _read_jsonl(path)
    elif suffix == ".parquet":
        rows = _read_parquet(path)
    else:
        raise UsageError(f"problems file {str(path)!r}: got suffix {suffix!r}, expected '.jsonl' or '.parquet'")
    return convert_rows(rows, path.stem, str(path), opts)


def convert_rows(rows: Iterable[tuple[str, int, Any]], stem: str, name: str, opts: ReadOptions) -> Iterator[Located]:
    """(where, index, row) triples as located problems, in order; the first row fixes the layout."""
    paths = None
    for where, index, row in rows:
        here = f"{name}, {where}"
        if paths is None:
            paths = opts.fields.resolve(row, here)
        yield here, _to_problem(row, index, paths, stem, here, opts.strip_template)


def with_unique_ids(located: Iterable[Located], hint: str = _DUPLICATE_HINT) -> list[Problem]:
    """All problems of ``located``, their ids checked unique."""
    located = list(located)
    check_unique_ids(located, hint)
    return [p for _, p in located]


def check_unique_ids(located: list[Located], hint: str = _DUPLICATE_HINT) -> None:
    seen: dict[str, str] = {}
    for where, p in located:
        if p.id in seen:
            raise UsageError(
                f"{where}: got duplicate id {p.id!r} (first at {seen[p.id]}), expected unique ids ({hint})"
            )
        seen[p.id] = where


def _read_jsonl(path: Path) -> Iterator[tuple[str, int, Any]]:
    index = 0
    with path.open("rb") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = msgspec.json.decode(line)
            except msgspec.DecodeError as e:
                raise UsageError(
                    f"{path}, line {line_no}: got invalid JSON ({e}), expected one JSON object per line"
                ) from e
            yield f"line {line_no}", index, row
            index += 1


def _read_parquet(path: Path) -> Iterator[tuple[str, int, Any]]:
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=8192):
        for row in batch.to_pylist():
            yield f"row {index}", index, row
            index += 1


def _to_problem(row: Any, index: int, paths: dict[str, str], stem: str, where: str, strip: str) -> Problem:
    if not isinstance(row, dict):
        raise UsageError(f"{where}: got {type(row).__name__}, expected a JSON object")
    text = problem_text(_required(row, paths["problem"], where), paths["problem"], where)
    if strip:
        text = templates.strip(strip, text)
    answer = _scalar(_required(row, paths["answer"], where), paths["answer"], where)
    for name, value in ((paths["problem"], text), (paths["answer"], answer)):
        if not value.strip():
            raise UsageError(f"{where}: field {name!r} got an empty string, expected text")
    ident, source = lookup(row, paths["id"]), lookup(row, paths["source"])
    return Problem(
        id=_scalar(ident, paths["id"], where) if ident is not None else str(index),
        problem=text,
        answer=answer.strip(),
        source=_scalar(source, paths["source"], where) if source is not None else stem,
        level=_level(row),
        fields=msgspec.msgpack.encode(row),
    )


def _required(row: dict[str, Any], path: str, where: str) -> Any:
    value = lookup(row, path)
    if value is None:
        raise UsageError(
            f"{where}: missing field {path!r}, expected fields 'problem' and 'answer' (or verl's "
            "'prompt' and 'reward_model.ground_truth'; other layouts: data.problem_field and "
            f"data.answer_field); the row has fields {sorted(row)}"
        )
    return value


def _scalar(value: Any, name: str, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UsageError(f"{where}: field {name!r} got {type(value).__name__}, expected a string or a number")
    return value if isinstance(value, str) else str(value)


def _level(row: dict[str, Any]) -> int:
    meta = row.get("meta")
    for value in (row.get("level"), meta.get("level") if isinstance(meta, dict) else None):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 0


def load_spec(spec: str, field: str, opts: ReadOptions = ReadOptions()) -> list[Problem]:
    """A local JSONL/Parquet file, or a Hugging Face dataset ``owner/name[:split]``; ids unique."""
    return with_unique_ids(iter_spec(spec, field, opts))


def iter_spec(spec: str, field: str, opts: ReadOptions = ReadOptions()) -> Iterator[Located]:
    """The problems of ``spec`` one at a time, ids unchecked (see ``load_spec``)."""
    if Path(spec).exists():
        return iter_problems(spec, opts)
    if spec.endswith((".jsonl", ".ndjson", ".parquet")):
        raise UsageError(f"{field}: got {spec!r}, expected an existing file (it does not exist)")
    from dynamo_async.data.hub import iter_hub_problems

    return iter_hub_problems(spec, field, opts)
