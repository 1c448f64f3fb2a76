"""One history after a resume: rows written after the checkpoint are superseded, not read twice."""

from __future__ import annotations

import json

import pyarrow as pa
from test_store import make_batch, make_completion

from buffer.history import cut_metrics, drop_superseded, supersede
from buffer.replay import iter_batches, summarize
from buffer.store import RunStore, read_table


def _store(run_dir) -> RunStore:
    return RunStore(run_dir, segment_bytes=1 << 20, flush_rows=2, max_delay_s=None)


def test_drop_superseded_leaves_out_exactly_the_ranges():
    table = pa.table({"x": list(range(10))})
    assert drop_superseded(table, [(2, 4), (7, 20)])["x"].to_pylist() == [0, 1, 4, 5, 6]
    assert drop_superseded(table, [])["x"].to_pylist() == list(range(10))
    assert drop_superseded(table, [(0, 10)]).num_rows == 0


def test_a_resume_supersedes_what_the_killed_run_wrote_after_its_checkpoint(tmp_path):
    with _store(tmp_path) as store:  # steps 1 and 2, checkpoint, then step 3 (and a completion)
        for step, groups in ((1, [0, 1]), (2, [2, 3])):
            store.append_completions([make_completion(g, i) for g in groups for i in range(3)], 0.0, step - 1)
            store.append_batch(make_batch(step, step, groups))
        kept = store.checkpoint_rows()
        store.append_completions([make_completion(4, 0), make_completion(4, 1), make_completion(4, 2)], 0.0, 2)
        store.append_batch(make_batch(3, 3, [4]))
    resumed = _store(tmp_path)  # the resumed learner reopens the store
    assert resumed.base_rows == {"completions": 15, "batches": 15, "steps": 3} and resumed.next_group_id == 5
    ranges = supersede(tmp_path, 2, kept, resumed.base_rows)
    assert ranges == {"completions": (12, 15), "batches": (12, 15), "steps": (2, 3)}
    resumed.append_completions([make_completion(5, i) for i in range(3)], 0.0, 2)  # step 3 again
    resumed.append_batch(make_batch(3, 3, [5]))
    resumed.close()

    assert read_table(tmp_path, "steps")["step"].to_pylist() == [1, 2, 3]
    assert read_table(tmp_path, "steps", superseded=True)["step"].to_pylist() == [1, 2, 3, 3]
    assert sorted(set(read_table(tmp_path, "batches")["group_id"].to_pylist())) == [0, 1, 2, 3, 5]
    s = summarize(tmp_path)
    assert (s["steps"], s["duplicate_completions"], s["groups"]) == (3, 0, 5)
    assert [(b.step, [g.group_id for g in b.groups]) for b in iter_batches(tmp_path)] == [
        (1, [0, 1]),
        (2, [2, 3]),
        (3, [5]),
    ]
    entries = json.loads((tmp_path / "store" / "superseded.json").read_text())
    assert entries == [
        {"resumed_from_step": 2, "ranges": {"completions": [12, 15], "batches": [12, 15], "steps": [2, 3]}}
    ]


def test_a_resume_at_the_checkpoint_supersedes_nothing(tmp_path):
    with _store(tmp_path) as store:
        store.append_batch(make_batch(1, 1, [0]))
        kept = store.checkpoint_rows()
    assert supersede(tmp_path, 1, kept, _store(tmp_path).base_rows) == {}
    assert not (tmp_path / "store" / "superseded.json").exists()


def test_cut_metrics_keeps_steps_up_to_the_checkpoint_and_moves_the_rest(tmp_path):
    rows = [{"step": 1}, {"step": 2}, {"eval": True, "step": 2}, {"step": 3}, {"eval": True, "step": 3}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')
    assert cut_metrics(tmp_path, 2) == 2
    kept = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    moved = [json.loads(line) for line in (tmp_path / "metrics.superseded.jsonl").read_text().splitlines()]
    assert kept == rows[:3] and moved == rows[3:]
