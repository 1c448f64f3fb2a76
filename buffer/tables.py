"""The Arrow store's tables: schemas, rows as columns by name, records back (docs/design.md section 6).

The per-sample columns of the store's ``completions`` and ``batches`` tables are the fields of
``SampleRecord`` (``dynamo_async/sample.py``), derived from the Struct: ``RECORD_COLUMNS`` maps each
field name to its Arrow type (int -> int64, float -> float64, str and literals -> string, unless
the field's type declares a narrower ``dtype``; a packed bytes field -> a list of its element
dtype). Columns are always built and read by name, never by position: ``record_columns`` turns
records into ``{name: array}``, ``record_batch`` orders such a dict by a schema's names, and
``records_from`` rebuilds records from any rows that hold every record column. Beside them, a
``completions`` row has the lease and its receipt (``COMPLETION_COLUMNS``), a ``batches`` row the
step and the group's prompt (``BATCH_COLUMNS``); ``steps`` has one row per learner batch.
The optional ``samples`` table keeps a few decoded samples per step (``SAMPLES_SCHEMA``).
"""

from __future__ import annotations

import typing
from collections.abc import Sequence

import msgspec
import numpy as np
import pyarrow as pa

from buffer.batch import LearnerBatch
from dynamo_async.protocol import Completion
from dynamo_async.sample import SampleRecord

_NATURAL = {int: pa.int64(), float: pa.float64(), str: pa.string()}


def _arrow_type(annotation) -> tuple[pa.DataType, str | None]:
    """(Arrow type, numpy dtype of a packed array or None) of one field's type annotation."""
    base, dtype = annotation, None
    if typing.get_origin(annotation) is typing.Annotated:
        base, *metas = typing.get_args(annotation)
        dtype = next((m.extra["dtype"] for m in metas if isinstance(m, msgspec.Meta) and m.extra), None)
    if typing.get_origin(base) is typing.Literal:
        (base,) = {type(v) for v in typing.get_args(base)}
    if base is bytes:
        assert dtype is not None, "a bytes field of SampleRecord declares the dtype of its packed elements"
        return pa.list_(pa.from_numpy_dtype(np.dtype(dtype))), dtype
    assert base in _NATURAL, f"no Arrow column type for a SampleRecord field of type {base!r}"
    return (_NATURAL[base] if dtype is None else pa.from_numpy_dtype(np.dtype(dtype))), None


def arrow_fields(record_type: type[msgspec.Struct]) -> dict[str, tuple[pa.DataType, str | None]]:
    """Field name -> (Arrow type, numpy dtype of a packed array or None), in the Struct's field order."""
    return {f.name: _arrow_type(f.type) for f in msgspec.structs.fields(record_type)}


_FIELDS = arrow_fields(SampleRecord)
RECORD_COLUMNS: dict[str, pa.DataType] = {name: type_ for name, (type_, _) in _FIELDS.items()}
PACKED: dict[str, str] = {name: dtype for name, (_, dtype) in _FIELDS.items() if dtype is not None}
_DEFAULTS = {f.name: f.default for f in msgspec.structs.fields(SampleRecord) if f.default is not msgspec.NODEFAULT}


_I32_LIST = pa.list_(pa.int32())

# Store-only columns beside the record's.
COMPLETION_COLUMNS = {
    "lease_id": pa.int64(),
    "received_at": pa.float64(),  # unix time
    "policy_version": pa.int32(),  # learner version when the completion arrived
}
BATCH_COLUMNS = {
    "step": pa.int64(),
    "policy_version": pa.int32(),  # the version the batch was handed out at
    "prompt_token_ids": _I32_LIST,
    "answer": pa.string(),
}
assert not (set(RECORD_COLUMNS) & (set(COMPLETION_COLUMNS) | set(BATCH_COLUMNS))), "store columns shadow a record field"


def _schema(*fields: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema([pa.field(name, type_, nullable=False) for name, type_ in fields])


COMPLETIONS_SCHEMA = _schema(*RECORD_COLUMNS.items(), *COMPLETION_COLUMNS.items())
BATCHES_SCHEMA = _schema(*BATCH_COLUMNS.items(), *RECORD_COLUMNS.items())

STEPS_SCHEMA = _schema(
    ("step", pa.int64()),
    ("policy_version", pa.int32()),
    ("num_groups", pa.int32()),
    ("num_samples", pa.int32()),
    ("dropped_stale", pa.int32()),
    ("dropped_zero_variance", pa.int32()),
    ("written_at", pa.float64()),  # unix time
    ("staleness", _I32_LIST),  # LearnerBatch.staleness, kept so replay rebuilds it exactly
)

SCHEMAS: dict[str, pa.Schema] = {"completions": COMPLETIONS_SCHEMA, "batches": BATCHES_SCHEMA, "steps": STEPS_SCHEMA}

# A few decoded samples per learner step (``metrics.log_samples``; ``dynamo_async/learner/samples.py``),
# for people to read. Optional: a run with log_samples=0, or one recorded before it existed, has none.
SAMPLES_SCHEMA = _schema(
    ("step", pa.int64()),
    ("policy_version", pa.int32()),  # the version the batch was handed out at
    ("prompt_id", pa.string()),
    ("group_id", pa.int64()),
    ("sample_index", pa.int32()),
    ("rollouts", pa.int32()),  # the group's rollout budget: samples trained for its prompt this step
    ("reward", pa.float64()),
    ("acc", pa.int8()),
    ("finish_reason", pa.string()),
    ("num_tokens", pa.int32()),
    ("prompt", pa.string()),  # decoded prompt tokens (special tokens left out)
    ("response", pa.string()),  # decoded response tokens (special tokens left out)
    ("answer", pa.string()),  # the gold answer
)
OPTIONAL_SCHEMAS: dict[str, pa.Schema] = {"samples": SAMPLES_SCHEMA}
TABLES: dict[str, pa.Schema] = {**SCHEMAS, **OPTIONAL_SCHEMAS}  # every table ``read_table`` reads


def _offsets(lengths: np.ndarray, dtype=np.int32) -> np.ndarray:
    """``[0, l0, l0 + l1, ...]``: where each row's values start in the flat array, and the end."""
    offsets = np.zeros(len(lengths) + 1, dtype=dtype)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def _list_array(values: list, type_: pa.ListType) -> pa.Array:
    """A list column from per-row numpy arrays (or sequences), via offsets + one flat array."""
    offsets = _offsets(np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values)))
    dtype = type_.value_type.to_pandas_dtype()
    flat = np.concatenate(values).astype(dtype, copy=False) if values else np.empty(0, dtype)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=type_.value_type))


def to_column(values: list, type_: pa.DataType) -> pa.Array:
    """One non-nullable column of ``type_`` from per-row values (numpy arrays for a list type)."""
    if isinstance(type_, pa.ListType):
        return _list_array(values, type_)
    array = pa.array(values, type=type_)
    assert array.null_count == 0, "store columns are not nullable"
    return array


def _packed_column(records: Sequence[SampleRecord], name: str) -> pa.Array:
    """A list column from one packed bytes field: the bytes are joined once, no per-element Python step."""
    dtype = np.dtype(PACKED[name])
    values = [getattr(r, name) for r in records]
    offsets = _offsets(np.fromiter((len(v) // dtype.itemsize for v in values), dtype=np.int64, count=len(values)))
    flat = np.frombuffer(b"".join(values), dtype=dtype)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=RECORD_COLUMNS[name].value_type))


def record_columns(records: Sequence[SampleRecord]) -> dict[str, pa.Array]:
    """Every record field as one Arrow column, by name."""
    return {
        name: _packed_column(records, name) if name in PACKED else to_column([getattr(r, name) for r in records], type_)
        for name, type_ in RECORD_COLUMNS.items()
    }


def record_batch(schema: pa.Schema, columns: dict[str, pa.Array]) -> pa.RecordBatch:
    """A record batch of ``schema`` from columns given by name (every schema column, no other)."""
    assert sorted(columns) == sorted(schema.names), f"got columns {sorted(columns)}, expected {schema.names}"
    return pa.RecordBatch.from_arrays([columns[name] for name in schema.names], schema=schema)


def completions_batch(rows: list[tuple[Completion, float, int]]) -> pa.RecordBatch:
    """A ``completions`` record batch from decoded messages, column by column and by name: the
    sample records' columns (packed arrays joined once), then the lease and receipt columns."""
    columns = record_columns([c.sample for c, _, _ in rows])
    given = {
        "lease_id": [c.lease_id for c, _, _ in rows],
        "received_at": [received_at for _, received_at, _ in rows],
        "policy_version": [version for _, _, version in rows],
    }
    columns.update({name: to_column(given[name], type_) for name, type_ in COMPLETION_COLUMNS.items()})
    return record_batch(COMPLETIONS_SCHEMA, columns)


def batch_rows(batch: LearnerBatch) -> pa.RecordBatch | None:
    """The ``batches`` rows of one learner batch (one per sample, by name); None without samples."""
    groups = [g for g in batch.groups for _ in g.samples]
    if not groups:
        return None
    columns = record_columns([s for g in batch.groups for s in g.samples])
    given = {
        "step": [batch.step] * len(groups),
        "policy_version": [batch.policy_version] * len(groups),
        "prompt_token_ids": [g.prompt_token_ids for g in groups],
        "answer": [g.answer for g in groups],
    }
    columns.update({name: to_column(given[name], type_) for name, type_ in BATCH_COLUMNS.items()})
    return record_batch(BATCHES_SCHEMA, columns)


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` with the columns of ``schema``, picked by name; a column the segment predates
    (written before the column existed) reads as the record field's default, else as zeros /
    empty strings / empty lists."""
    present = set(batch.schema.names)
    arrays = [batch.column(f.name) if f.name in present else _filled(f, batch.num_rows) for f in schema]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _filled(field: pa.Field, n: int) -> pa.Array:
    zero = "" if pa.types.is_string(field.type) else [] if pa.types.is_list(field.type) else 0
    return pa.repeat(pa.scalar(_DEFAULTS.get(field.name, zero), field.type), n)


def _packed_rows(lists: pa.ListArray, dtype: str) -> list[bytes]:
    """Per-row packed bytes of a list column (the flat values are converted once)."""
    flat = np.ascontiguousarray(lists.flatten().to_numpy(), dtype=dtype).tobytes()
    bounds = _offsets(lists.value_lengths().to_numpy(), np.int64) * np.dtype(dtype).itemsize
    return [flat[a:b] for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())]


def records_from(rows: pa.Table | pa.RecordBatch) -> list[SampleRecord]:
    """The records of rows holding every record column (by name), in row order."""
    out: list[SampleRecord] = []
    for batch in rows.to_batches() if isinstance(rows, pa.Table) else [rows]:
        cols = {
            name: _packed_rows(batch.column(name), PACKED[name]) if name in PACKED else batch.column(name).to_pylist()
            for name in RECORD_COLUMNS
        }
        out.extend(SampleRecord(**{name: cols[name][i] for name in cols}) for i in range(batch.num_rows))
    return out
