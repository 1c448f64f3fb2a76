"""Replay of a recorded run: summary numbers by hand, exports per filter, exact batches, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sample_records import sample_record

from buffer.batch import LearnerBatch, ReadyGroup
from buffer.replay import export_rows, format_summary, iter_batches, replay_main, summarize
from buffer.store import RunStore
from dynamo_async.protocol import Completion

# group_id -> (prompt_id, policy version on arrival, [(acc, token versions), ...])
GROUPS = {
    1: ("p1", 0, [(1, [0, 0, 1]), (0, [0, 1]), (1, [0]), (1, [0, 0, 0, 1])]),
    2: ("p2", 1, [(0, [1, 1]), (0, [1, 1, 1])]),
    3: ("p1", 1, [(0, [0, 1]), (0, [1, 1]), (1, [1, 2])]),
    4: ("p3", 2, [(1, [2]), (1, [2, 2]), (1, [2, 3])]),
}


def tokens(group_id: int, i: int, n: int) -> np.ndarray:
    return (np.arange(n, dtype=np.int32) + 10 * group_id + 100 * i).astype(np.int32)


def completion(group_id: int, i: int, acc: int, versions: list[int]) -> Completion:
    n = len(versions)
    sample = sample_record(
        group_id,
        GROUPS[group_id][0],
        i,
        tokens(group_id, i, n),
        -0.25 * np.arange(n),
        versions,
        worker_id=f"w{i % 2}",
        acc=acc,
        reward=1.0 if acc else -1.0,
        gen_seconds=1.5,
        score_seconds=0.5,
    )
    return Completion(lease_id=group_id, sample=sample)


def ready_group(group_id: int) -> ReadyGroup:
    prompt_id, _, samples = GROUPS[group_id]
    return ReadyGroup(
        group_id=group_id,
        prompt_id=prompt_id,
        prompt_token_ids=np.array([1, 2, group_id], np.int32),
        answer=str(group_id),
        samples=tuple(
            sample_record(
                group_id,
                prompt_id,
                i,
                tokens(group_id, i, len(v)),
                -0.25 * np.arange(len(v)),
                v,
                acc=acc,
                reward=1.0 if acc else -1.0,
                worker_id=f"w{i % 2}",
                gen_seconds=1.5,
                score_seconds=0.5,
            )
            for i, (acc, v) in enumerate(samples)
        ),
    )


BATCHES = [
    LearnerBatch(step=0, policy_version=1, groups=(ready_group(2), ready_group(1)), staleness=(0, 1)),
    LearnerBatch(
        step=1, policy_version=2, groups=(ready_group(3),), dropped_stale=1, dropped_zero_variance=2, staleness=(2,)
    ),
]


@pytest.fixture
def run_dir(tmp_path):
    with RunStore(tmp_path, segment_bytes=2048, flush_rows=3) as store:
        for group_id, (_, version, samples) in GROUPS.items():
            for i, (acc, versions) in reversed(list(enumerate(samples))):  # arrival order != index
                store.append_completion(completion(group_id, i, acc, versions), 1.7e9, version)
            if group_id == 1:  # sample 0 of group 1 arrives twice (lease handed out again)
                store.append_completion(completion(1, 0, 0, [0, 0, 1]), 1.7e9 + 1, 0)
        for batch in BATCHES:
            store.append_batch(batch)
    return tmp_path


def test_summary_numbers_by_hand(run_dir):
    s = summarize(run_dir)
    assert (s["completions"], s["duplicate_completions"], s["groups"], s["steps"]) == (12, 1, 4, 2)
    assert s["prompt_accuracy"] == {"p1": (4, 7, 4 / 7), "p2": (0, 2, 0.0), "p3": (3, 3, 1.0)}
    assert s["allocation"] == {2: 1, 3: 2, 4: 1}
    # step 0 (v1): group 2 -> 0, 0; group 1 -> 1 x4. step 1 (v2): group 3 -> 2, 1, 1
    assert s["staleness"] == {0: 2, 1: 6, 2: 1}
    assert (s["zero_variance_groups"], s["batch_groups"]) == (1, 3)
    assert s["zero_variance_fraction"] == pytest.approx(1 / 3)
    assert (s["dropped_stale"], s["dropped_zero_variance"]) == (1, 2)


def test_summary_of_an_empty_store(tmp_path):
    RunStore(tmp_path, segment_bytes=1024, flush_rows=4).close()
    s = summarize(tmp_path)
    assert (s["completions"], s["groups"], s["steps"], s["zero_variance_fraction"]) == (0, 0, 0, None)
    assert s["allocation"] == {} and s["staleness"] == {}
    assert "n/a" in format_summary(s)


def test_format_summary_is_aligned_and_shows_top_and_bottom(run_dir):
    text = format_summary(summarize(run_dir))
    assert "p1            4         7     0.571" in text
    assert "zero-variance groups   1 (0.333)" in text
    s = summarize(run_dir)
    s["prompt_accuracy"] = {f"q{i:02d}": (i, 25, i / 25) for i in range(25)}
    text = format_summary(s)
    assert "q24" in text and "q00" in text and "q12" not in text and "5 more" in text


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    "table, filters, expected",
    [
        ("completions", {}, 13),
        ("completions", {"prompt_id": "p1"}, 8),
        ("completions", {"min_version": 1}, 8),
        ("completions", {"max_version": 0}, 5),
        ("completions", {"min_version": 1, "max_version": 1}, 5),
        ("batches", {"step": 1}, 3),
        ("batches", {"prompt_id": "p1"}, 7),
        ("batches", {"min_version": 2}, 3),
        ("batches", {"prompt_id": "p2", "step": 0}, 2),
        ("steps", {"step": 0}, 1),
    ],
)
def test_export_writes_exactly_the_matching_rows(run_dir, tmp_path, table, filters, expected):
    out = tmp_path / "rows.jsonl"
    assert export_rows(run_dir, out, table=table, **filters) == expected
    rows = read_jsonl(out)
    assert len(rows) == expected
    for row in rows:
        if "prompt_id" in filters:
            assert row["prompt_id"] == filters["prompt_id"]
        if "step" in filters:
            assert row["step"] == filters["step"]
        assert filters.get("min_version", -1) <= row["policy_version"] <= filters.get("max_version", 99)
        if table != "steps":  # lists come back as JSON arrays
            assert row["token_ids"] == tokens(row["group_id"], row["sample_index"], len(row["versions"])).tolist()


def test_export_rejects_filters_that_do_not_apply(run_dir, tmp_path):
    with pytest.raises(ValueError, match=r"\['step'\] for table completions.*prompt_id"):
        export_rows(run_dir, tmp_path / "x.jsonl", table="completions", step=0)
    with pytest.raises(ValueError, match="prompt_id"):
        export_rows(run_dir, tmp_path / "x.jsonl", table="steps", prompt_id="p1")
    with pytest.raises(ValueError, match="min_version <= max_version"):
        export_rows(run_dir, tmp_path / "x.jsonl", min_version=2, max_version=1)
    with pytest.raises(ValueError, match="expected one of"):
        export_rows(run_dir, tmp_path / "x.jsonl", table="groups")


def assert_same_batch(got: LearnerBatch, want: LearnerBatch) -> None:
    for name in ("step", "policy_version", "dropped_stale", "dropped_zero_variance", "staleness"):
        assert getattr(got, name) == getattr(want, name), name
    assert [g.group_id for g in got.groups] == [g.group_id for g in want.groups]
    for g, w in zip(got.groups, want.groups):
        assert (g.prompt_id, g.answer) == (w.prompt_id, w.answer)
        assert g.prompt_token_ids.dtype == np.int32
        np.testing.assert_array_equal(g.prompt_token_ids, w.prompt_token_ids)
        assert [s.sample_index for s in g.samples] == [s.sample_index for s in w.samples]
        for s, ws in zip(g.samples, w.samples):
            for name in ("acc", "reward", "finish_reason", "worker_id"):
                assert getattr(s, name) == getattr(ws, name), name
            assert [a.dtype for a in s.arrays()] == [np.int32, np.float32, np.int32]
            for got_array, want_array in zip(s.arrays(), ws.arrays()):
                np.testing.assert_array_equal(got_array, want_array)
            assert s == ws  # every field of the record


def test_iter_batches_reproduces_the_recorded_batches(run_dir):
    got = list(iter_batches(run_dir))
    assert len(got) == len(BATCHES)
    for g, w in zip(got, BATCHES):
        assert_same_batch(g, w)
    assert got[0].groups[0].zero_variance and got[1].groups[0].oldest_version == 0


def test_replay_main_prints_the_summary_and_exports(run_dir, tmp_path, capsys):
    assert replay_main([str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "per-prompt accuracy (3 prompts)" in out and "staleness" in out and "learner steps" in out
    dest = tmp_path / "v1.jsonl"
    assert replay_main([str(run_dir), "--export", str(dest), "--version", "1"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote 5 completions rows to {dest}"
    assert {r["group_id"] for r in read_jsonl(dest)} == {2, 3}
    assert (
        replay_main([str(run_dir), "--export", str(dest), "--table", "batches", "--step", "0", "--prompt", "p1"]) == 0
    )
    assert len(read_jsonl(dest)) == 4


def test_replay_main_errors_are_clear(run_dir, tmp_path):
    with pytest.raises(ValueError, match="without a store.*expected a run directory"):
        replay_main([str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="--version with --min-version"):
        replay_main([str(run_dir), "--export", "x", "--version", "1", "--min-version", "0"])
    with pytest.raises(ValueError, match="without --export"):
        replay_main([str(run_dir), "--prompt", "p1"])
    with pytest.raises(ValueError, match=r"\['step'\] for table completions"):
        replay_main([str(run_dir), "--export", str(tmp_path / "x.jsonl"), "--step", "1"])
