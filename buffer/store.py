"""The run's Arrow store: every completion received and every batch handed to the learner.

Layout (docs/design.md section 6, "Arrow store")::

    RUN_DIR/store/completions/completions-000000.arrows, -000001, ...   one row per completion
    RUN_DIR/store/batches/batches-000000.arrows, ...                    one row per learner sample
    RUN_DIR/store/steps/steps-000000.arrows, ...                        one row per learner batch
    RUN_DIR/store/samples/samples-000000.arrows, ...                    a few decoded samples per step

Each file is an Arrow IPC *stream* with the table's explicit schema (``buffer/tables.py``).
A ``SegmentWriter`` buffers rows column by column and writes one record batch when ``flush_rows``
rows are pending, when the oldest pending row is ``max_delay_s`` old (checked on append), or on
``flush()``; it starts a new segment once the current file exceeds ``segment_bytes``. List columns
are built straight from numpy arrays (one ``np.concatenate`` per column per flush), never from
Python lists of ints, so ingest stays cheap. A reopened store continues the segment numbering.

``RunStore`` holds the writers behind one lock: the buffer's network thread appends
completions while the learner thread appends batches. ``append_batch`` flushes at once, so a
batch is on disk as soon as it was handed out; ``append_samples`` (the optional ``samples`` table,
``metrics.log_samples``: decoded texts for people to read) too, and its folder exists only once
a run wrote some. ``read_table`` reads the segments back in order,
every column by name (so a segment of an older layout reads too: columns in another order, or a
column it predates as zeros / empty); a segment cut short by a crash yields every complete record
batch before the damage (with a warning).
"""

from __future__ import annotations

import queue
import re
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from buffer.batch import LearnerBatch
from buffer.history import drop_superseded, superseded_ranges
from buffer.tables import (
    BATCHES_SCHEMA,
    COMPLETIONS_SCHEMA,
    OPTIONAL_SCHEMAS,
    SAMPLES_SCHEMA,
    SCHEMAS,
    STEPS_SCHEMA,
    TABLES,
    batch_rows,
    completions_batch,
    conform,
    to_column,
)
from dynamo_async.errors import UsageError
from dynamo_async.protocol import Completion

_MAX_LIST_VALUES = 2**31 - 1  # int32 offsets of pa.list_
_SEGMENT_RE = re.compile(r"-(\d+)\.arrows$")


def store_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "store"


def segment_paths(run_dir: str | Path, table: str) -> list[Path]:
    """The segment files of ``table``, in write order."""
    folder = store_dir(run_dir) / table
    paths = [p for p in folder.glob(f"{table}-*.arrows") if _SEGMENT_RE.search(p.name)]
    return sorted(paths, key=lambda p: int(_SEGMENT_RE.search(p.name).group(1)))


class SegmentWriter:
    """Appends rows of one table to size-rotated Arrow IPC stream segments."""

    def __init__(
        self,
        run_dir: str | Path,
        table: str,
        schema: pa.Schema,
        segment_bytes: int,
        flush_rows: int,
        max_delay_s: float | None = 1.0,
    ) -> None:
        if segment_bytes < 1 or flush_rows < 1:
            raise UsageError(f"got segment_bytes={segment_bytes}, flush_rows={flush_rows}, expected both >= 1")
        self.table, self.schema = table, schema
        self.segment_bytes, self.flush_rows, self.max_delay_s = segment_bytes, flush_rows, max_delay_s
        self.folder = store_dir(run_dir) / table
        self.folder.mkdir(parents=True, exist_ok=True)
        existing = segment_paths(run_dir, table)
        self._next_index = int(_SEGMENT_RE.search(existing[-1].name).group(1)) + 1 if existing else 0
        self._list_columns = [i for i, f in enumerate(schema) if isinstance(f.type, pa.ListType)]
        self._columns: list[list[Any]] = [[] for _ in schema]
        self._pending_values = 0  # longest list column's pending element count
        self._first_pending_at = 0.0
        self._sink: pa.NativeFile | None = None
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._closed = False
        self.rows_written = 0

    @property
    def pending(self) -> int:
        return len(self._columns[0])

    def append(self, row: dict[str, Any]) -> None:
        """Buffer one row (every schema column; list columns as numpy arrays); flush when due."""
        assert not self._closed, f"append to closed {self.table} writer"
        assert len(row) == len(self.schema), f"got columns {sorted(row)}, expected {self.schema.names}"
        size = max((len(row[self.schema.names[i]]) for i in self._list_columns), default=0)
        if self._pending_values + size > _MAX_LIST_VALUES:
            self.flush()
        if not self.pending:
            self._first_pending_at = time.monotonic()
        for name, column in zip(self.schema.names, self._columns):
            column.append(row[name])
        self._pending_values += size
        if self.pending >= self.flush_rows or self._overdue():
            self.flush()

    def _overdue(self) -> bool:
        return self.max_delay_s is not None and time.monotonic() - self._first_pending_at >= self.max_delay_s

    def flush(self) -> None:
        """Write the pending rows as one record batch; rotate the segment if it grew too large."""
        if not self.pending:
            return
        arrays = [to_column(values, f.type) for values, f in zip(self._columns, self.schema)]
        batch = pa.RecordBatch.from_arrays(arrays, schema=self.schema)
        self._columns = [[] for _ in self.schema]
        self._pending_values = 0
        self.write_batch(batch)

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Write a ready record batch of this table's schema; rotate the segment if it grew too large."""
        assert not self._closed, f"write to closed {self.table} writer"
        assert batch.schema.equals(self.schema), f"{self.table}: record batch schema differs"
        if self._writer is None:
            self._open_segment()
        self._writer.write_batch(batch)
        self.rows_written += batch.num_rows
        if self._sink.tell() >= self.segment_bytes:
            self._close_segment()

    def _open_segment(self) -> None:
        path = self.folder / f"{self.table}-{self._next_index:06d}.arrows"
        assert not path.exists(), f"segment {path} already exists"
        self._next_index += 1
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, self.schema)

    def _close_segment(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
        self._writer = self._sink = None

    def close(self) -> None:
        """Flush and close the current segment; idempotent."""
        if self._closed:
            return
        self.flush()
        self._close_segment()
        self._closed = True


class RunStore:
    """The tables of one run behind one lock (network and learner threads both append)."""

    def __init__(
        self, run_dir: str | Path, segment_bytes: int, flush_rows: int, max_delay_s: float | None = 1.0
    ) -> None:
        self.run_dir = Path(run_dir)
        self._lock = threading.Lock()
        self.flush_rows, self.max_delay_s = flush_rows, max_delay_s
        self._received: list[tuple[Completion, float, int]] = []
        self._first_received = 0.0
        # Completions are turned into record batches and written by a thread of their own, so
        # the network thread that ingests them never waits on the disk.
        self._queue: queue.Queue[list | None] = queue.Queue(maxsize=64)
        self._writer_thread = threading.Thread(target=self._write_completions, name="store-writer", daemon=True)
        self._writer_thread.start()
        self._completions = SegmentWriter(
            run_dir, "completions", COMPLETIONS_SCHEMA, segment_bytes, flush_rows, max_delay_s
        )
        self._batches = SegmentWriter(run_dir, "batches", BATCHES_SCHEMA, segment_bytes, flush_rows, max_delay_s)
        self._steps = SegmentWriter(run_dir, "steps", STEPS_SCHEMA, segment_bytes, flush_rows, max_delay_s)
        self.segment_bytes = segment_bytes
        self._samples: SegmentWriter | None = None  # opened by the first append_samples
        self.base_rows, self.next_group_id = _existing(run_dir)

    def checkpoint_rows(self) -> dict[str, int]:
        """Flush, then the raw row count of each table: what a checkpoint records, so that a
        resume can supersede what was written after it (``buffer/history.py``)."""
        self.flush()
        with self._lock:
            writers = {"completions": self._completions, "batches": self._batches, "steps": self._steps}
            rows = {t: self.base_rows[t] + w.rows_written for t, w in writers.items()}
            samples = self.base_rows.get("samples", 0) + (self._samples.rows_written if self._samples else 0)
            if samples:  # an optional table counts once it has rows
                rows["samples"] = samples
            return rows

    def append_completion(self, c: Completion, received_at: float, policy_version: int) -> None:
        self.append_completions([c], received_at, policy_version)

    def append_completions(self, cs: list[Completion], received_at: float, policy_version: int) -> None:
        """Keep the decoded messages; columns are built once per record batch by the writer
        thread (the ingest hot path does no per-field work)."""
        if not cs:
            return
        with self._lock:
            if not self._received:
                self._first_received = time.monotonic()
            self._received.extend((c, received_at, policy_version) for c in cs)
            overdue = self.max_delay_s is not None and time.monotonic() - self._first_received >= self.max_delay_s
            while len(self._received) >= self.flush_rows:
                rows, self._received = self._received[: self.flush_rows], self._received[self.flush_rows :]
                self._queue.put(rows)
            if overdue:
                self._flush_completions()

    def _flush_completions(self) -> None:
        """Hand the pending completions to the writer thread (called under the lock)."""
        if self._received:
            rows, self._received = self._received, []
            self._queue.put(rows)

    def _write_completions(self) -> None:
        while (rows := self._queue.get()) is not None:
            self._completions.write_batch(completions_batch(rows))
            self._queue.task_done()
        self._queue.task_done()

    def append_batch(self, batch: LearnerBatch) -> None:
        """One row per sample plus the step's row; both written now, so the batch is on disk."""
        step_row = dict(
            step=batch.step,
            policy_version=batch.policy_version,
            num_groups=len(batch.groups),
            num_samples=batch.num_samples,
            dropped_stale=batch.dropped_stale,
            dropped_zero_variance=batch.dropped_zero_variance,
            written_at=time.time(),
            staleness=np.asarray(batch.staleness, dtype=np.int32),
        )
        samples = batch_rows(batch)
        with self._lock:
            if samples is not None:
                self._batches.write_batch(samples)
            self._steps.append(step_row)
            self._steps.flush()

    def append_samples(self, rows: list[dict[str, Any]]) -> None:
        """Rows of the ``samples`` table (``buffer/tables.py`` SAMPLES_SCHEMA), written now."""
        if not rows:
            return
        with self._lock:
            if self._samples is None:
                self._samples = SegmentWriter(
                    self.run_dir, "samples", SAMPLES_SCHEMA, self.segment_bytes, self.flush_rows, self.max_delay_s
                )
            for row in rows:
                self._samples.append(row)
            self._samples.flush()

    def written(self) -> None:
        """Wait until the writer thread has written every record batch already handed to it
        (rows still below ``flush_rows`` stay pending; ``flush`` writes those too)."""
        self._queue.join()

    def flush(self) -> None:
        """Everything appended so far is written when this returns."""
        with self._lock:
            self._flush_completions()
            for writer in (self._batches, self._steps, self._samples):
                if writer is not None:
                    writer.flush()
        self._queue.join()

    def close(self) -> None:
        with self._lock:
            if not self._writer_thread.is_alive():
                return
            self._flush_completions()
            self._queue.put(None)
        self._writer_thread.join()
        with self._lock:
            for writer in (self._completions, self._batches, self._steps, self._samples):
                if writer is not None:
                    writer.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _existing(run_dir: Path) -> tuple[dict[str, int], int]:
    """Raw row counts of the tables already on disk (a reopened store), and the first group id
    no row of them uses."""
    if not store_dir(run_dir).is_dir():
        return {t: 0 for t in SCHEMAS}, 0
    ids = read_table(run_dir, "completions", ["group_id"], superseded=True)["group_id"]
    counts = {
        t: read_table(run_dir, t, [SCHEMAS[t].names[0]], superseded=True).num_rows
        for t in SCHEMAS
        if t != "completions"
    }
    counts["completions"] = len(ids)
    for t in OPTIONAL_SCHEMAS:  # counted only where the run wrote some
        if segment_paths(run_dir, t):
            counts[t] = read_table(run_dir, t, [TABLES[t].names[0]], superseded=True).num_rows
    top = pc.max(ids).as_py() if len(ids) else None
    return counts, 0 if top is None else top + 1


def _read_segment(path: Path, schema: pa.Schema) -> list[pa.RecordBatch]:
    """Every complete record batch of one segment, as ``schema`` (by name); a truncated tail is
    warned about and skipped."""
    batches: list[pa.RecordBatch] = []
    source = pa.memory_map(str(path))  # a missing or unreadable file is an error, not damage
    try:
        for batch in pa.ipc.open_stream(source):
            batches.append(batch)
    except (OSError, pa.ArrowInvalid) as err:  # a crash mid-write cuts the file short
        warnings.warn(
            f"{path}: damaged after {len(batches)} record batches ({err}); reading what came before",
            RuntimeWarning,
            stacklevel=3,
        )
    return [conform(batch, schema) for batch in batches]


def read_table(run_dir: str | Path, table: str, columns: list[str] | None = None, superseded: bool = False) -> pa.Table:
    """All segments of ``table`` concatenated in write order (empty with the schema if none),
    without the rows a resume superseded (``buffer/history.py``) unless ``superseded``."""
    if table not in TABLES:
        raise UsageError(f"got table {table!r}, expected one of {sorted(TABLES)}")
    if not store_dir(run_dir).is_dir():
        raise UsageError(
            f"got run directory {str(run_dir)!r} without a store, expected a run "
            f"directory written by the buffer (one containing {store_dir(run_dir)})"
        )
    schema = TABLES[table]
    if columns is not None:
        unknown = sorted(set(columns) - set(schema.names))
        if unknown:
            raise UsageError(f"got columns {unknown}, expected columns of {table}: {schema.names}")
        schema = pa.schema([schema.field(name) for name in columns])
    batches = [b for path in segment_paths(run_dir, table) for b in _read_segment(path, schema)]
    rows = pa.Table.from_batches(batches, schema=schema)
    return rows if superseded else drop_superseded(rows, superseded_ranges(run_dir, table))
