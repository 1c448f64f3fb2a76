"""What ``dynamo-async plot`` reads from a run directory: steps from metrics.jsonl (the last row
of a step wins after a resume) and per-step arrays from the Arrow store."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sample_records import sample_record

from buffer.batch import LearnerBatch, ReadyGroup
from buffer.store import RunStore
from dynamo_async.report.rundata import load_run


def _batch(step: int, sizes: list[int], first_group: int = 0) -> LearnerBatch:
    groups = []
    for g, size in enumerate(sizes, start=first_group):
        samples = tuple(
            sample_record(g, f"p{g}", i, np.array([1, 2], np.int32), np.zeros(2), np.zeros(2), acc=i % 2)
            for i in range(size)
        )
        groups.append(
            ReadyGroup(
                group_id=g, prompt_id=f"p{g}", prompt_token_ids=np.array([7], np.int32), answer="1", samples=samples
            )
        )
    return LearnerBatch(
        step=step,
        policy_version=step,
        groups=tuple(groups),
        dropped_stale=1,
        dropped_zero_variance=step,
        staleness=tuple(range(len(groups))),
    )


def test_a_resumed_run_counts_each_step_once(tmp_path):
    rows = [
        {"step": 1, "accuracy": 0.1},
        {"step": 2, "accuracy": 0.2},
        {"eval": True, "step": 2, "eval/x": 0.5},
        {"step": 2, "accuracy": 0.3},
    ]  # step 2 trained again after a resume from step 1
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + '\n{"step": 3, "accu')
    with RunStore(tmp_path, segment_bytes=1 << 20, flush_rows=4, max_delay_s=None) as store:
        store.append_batch(_batch(0, [4, 6]))
        store.append_batch(_batch(1, [4, 4, 8], first_group=2))
        store.append_batch(_batch(1, [2, 6], first_group=2))  # the same group ids, after the resume
    run = load_run(tmp_path)
    assert [r["step"] for r in run.steps] == [1, 2] and run.series("accuracy")[1].tolist() == [0.1, 0.3]
    assert run.evals == [rows[2]]
    assert sorted(run.group_sizes[1].tolist()) == [4, 6] and sorted(run.group_sizes[2].tolist()) == [2, 6]
    assert run.staleness[2].tolist() == [0, 1] and run.dropped[2] == (1, 1)


def test_a_torn_line_inside_metrics_is_an_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 1: got invalid JSON"):
        load_run(tmp_path)
