"""One history after a resume: what a killed run wrote after its last checkpoint is superseded.

A learner killed between checkpoints has already written rows for the steps after the
checkpoint it will resume from: completions, learner batches and step rows in the Arrow store,
lines in ``metrics.jsonl``. The resumed learner trains those steps again, so without care every
table would hold two histories (steps counted twice, samples doubled, ``iter_batches`` failing).

- Each checkpoint records how many rows each store table had when it was written
  (``store_rows`` in the buffer's state; ``RunStore.checkpoint_rows``).
- At resume, rows beyond those counts are marked superseded in ``RUN_DIR/store/superseded.json``
  as ``[start, end)`` ranges of raw row numbers per table, with the step resumed from; nothing
  is deleted, and ``read_table`` leaves them out (``read_table(..., superseded=True)`` reads
  everything, for debugging).
- ``metrics.jsonl`` keeps the rows of steps up to the checkpoint; the cut rows move to
  ``metrics.superseded.jsonl``.
- Group ids continue after the largest id in the store, superseded rows included, so an id
  never names two groups (docs/design.md section 6, "Resume").
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from dynamo_async.lines import write_atomic

SUPERSEDED = "superseded.json"


def _path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "store" / SUPERSEDED


def superseded_ranges(run_dir: str | Path, table: str) -> list[tuple[int, int]]:
    """``[start, end)`` raw row ranges of ``table`` that resumes superseded, in order."""
    path = _path(run_dir)
    if not path.is_file():
        return []
    return [tuple(entry["ranges"][table]) for entry in json.loads(path.read_text()) if table in entry["ranges"]]


def drop_superseded(table: pa.Table, ranges: list[tuple[int, int]]) -> pa.Table:
    """``table`` (raw rows in write order) without the rows in ``ranges``."""
    if not ranges:
        return table
    pieces, start = [], 0
    for lo, hi in sorted(ranges):
        lo, hi = min(lo, table.num_rows), min(hi, table.num_rows)
        if lo > start:
            pieces.append(table.slice(start, lo - start))
        start = max(start, hi)
    if start < table.num_rows:
        pieces.append(table.slice(start))
    return pa.concat_tables(pieces) if pieces else table.slice(0, 0)


def supersede(run_dir: str | Path, step: int, kept: dict[str, int], present: dict[str, int]) -> dict:
    """Mark the rows past ``kept`` (the counts at the checkpoint of ``step``) up to ``present``
    (the raw counts now) as superseded; returns the new ranges by table (empty: nothing to do)."""
    ranges = {t: (kept[t], n) for t, n in present.items() if t in kept and n > kept[t]}
    assert all(kept[t] <= n for t, n in present.items() if t in kept), (kept, present)
    if ranges:
        path = _path(run_dir)
        entries = json.loads(path.read_text()) if path.is_file() else []
        entries.append({"resumed_from_step": step, "ranges": {t: list(r) for t, r in ranges.items()}})
        write_atomic(path, json.dumps(entries, indent=1) + "\n")
    return ranges


def cut_metrics(run_dir: str | Path, step: int) -> int:
    """Keep the lines of ``metrics.jsonl`` for steps up to ``step``; move the others (the killed
    run's steps after its checkpoint, and their evaluations) to ``metrics.superseded.jsonl``.
    Returns the number of lines moved."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return 0
    keep, cut = [], []
    for line in path.read_text().splitlines(keepends=True):
        if not line.endswith("\n"):
            continue  # a line torn by the kill
        (keep if json.loads(line).get("step", 0) <= step else cut).append(line)
    if cut:
        with (Path(run_dir) / "metrics.superseded.jsonl").open("a") as f:
            f.writelines(cut)
        write_atomic(path, "".join(keep))
    return len(cut)


def last_superseded_step(run_dir: str | Path) -> int:
    """The highest step in ``metrics.superseded.jsonl`` (0 if none): a metrics sink that saw
    rows up to it (W&B) must rewind to a resumed run's step below it."""
    path = Path(run_dir) / "metrics.superseded.jsonl"
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return max((int(json.loads(line).get("step", 0)) for line in lines), default=0)


def rewinds(run_dir: str | Path, step: int) -> bool:
    """Whether a run resumed at ``step`` must rewind sinks that keep every row they were sent
    (W&B): an earlier, killed run logged steps after ``step``, now superseded."""
    return step > 0 and last_superseded_step(run_dir) > step
