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
        store.append_batch(_batch(1, [4, 6]))
        store.append_batch(_batch(2, [4, 4, 8], first_group=2))
        store.append_batch(_batch(2, [2, 6], first_group=2))  # the same group ids, after the resume
    run = load_run(tmp_path)
    assert [r["step"] for r in run.steps] == [1, 2] and run.series("accuracy")[1].tolist() == [0.1, 0.3]
    assert run.evals == [rows[2]]
    assert sorted(run.group_sizes[1].tolist()) == [4, 6] and sorted(run.group_sizes[2].tolist()) == [2, 6]
    assert run.staleness[2].tolist() == [0, 1] and run.dropped[2] == (1, 2)


def test_a_torn_line_inside_metrics_is_an_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 1: got invalid JSON"):
        load_run(tmp_path)


def test_allocation_points_pair_each_group_with_its_prompts_earlier_success_rate():
    import numpy as np

    from dynamo_async.report.rundata import _allocation_points

    seen: dict = {}
    # step 1: prompt a, group 0 (4 rollouts, 1 correct); prompt b, group 1 (2 rollouts, 2 correct)
    groups = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
    prompts = ["a"] * 4 + ["b"] * 2 + ["a"] * 3
    accs = np.array([1, 0, 0, 0, 1, 1, 1, 1, 0])
    rows = np.arange(6)
    ids, first, sizes = np.unique(groups[rows], return_index=True, return_counts=True)
    first_step = _allocation_points(rows, ids, first, sizes, groups, prompts, accs, seen)
    assert np.isnan(first_step[:, 0]).all() and first_step[:, 1].tolist() == [4, 2]
    rows = np.arange(6, 9)  # step 2: prompt a again, group 2 with 3 rollouts
    ids, first, sizes = np.unique(groups[rows], return_index=True, return_counts=True)
    second_step = _allocation_points(rows, ids, first, sizes, groups, prompts, accs, seen)
    assert second_step.tolist() == [[0.25, 3.0]]
    assert seen["a"] == [3, 7]
