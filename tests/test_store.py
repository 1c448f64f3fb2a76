"""The run's Arrow store: round trips, segment rotation, flush batching, crash recovery, threads."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pytest
from sample_records import sample_record

from buffer.batch import LearnerBatch, ReadyGroup
from buffer.store import (
    BATCHES_SCHEMA,
    COMPLETIONS_SCHEMA,
    STEPS_SCHEMA,
    RunStore,
    SegmentWriter,
    read_table,
    segment_paths,
)
from dynamo_async.protocol import Completion


def make_completion(group_id: int, sample_index: int, num_tokens: int = 5, acc: int = 1) -> Completion:
    rng = np.random.default_rng(group_id * 1000 + sample_index)
    sample = sample_record(
        group_id,
        f"p{group_id % 4}",
        sample_index,
        rng.integers(0, 50_000, num_tokens),
        -rng.random(num_tokens),
        np.sort(rng.integers(0, 4, num_tokens)),
        worker_id=f"w{group_id % 3}",
        finish_reason=("stop", "length", "abort")[sample_index % 3],
        acc=acc,
        reward=1.0 if acc else -1.0,
        gen_seconds=0.25 * sample_index,
        score_seconds=0.125,
    )
    return Completion(lease_id=100 + group_id, sample=sample, v=1)


def make_batch(step: int, policy_version: int, group_ids: list[int], size: int = 3) -> LearnerBatch:
    groups = []
    for g in group_ids:
        samples = tuple(
            sample_record(
                g,
                f"p{g}",
                i,
                np.arange(i + 2, dtype=np.int32) + g,
                -np.linspace(0.0, 1.0, i + 2, dtype=np.float32),
                np.full(i + 2, policy_version - 1, dtype=np.int32),
                acc=i % 2,
                reward=0.5 * i,
                worker_id=f"w{i}",
                score_status=("ok", "no_answer")[i % 2],
                gen_seconds=0.5 + i,
                score_seconds=0.25,
            )
            for i in range(size)
        )
        groups.append(
            ReadyGroup(
                group_id=g,
                prompt_id=f"p{g}",
                prompt_token_ids=np.array([7, 8, g], np.int32),
                answer=f"{g}",
                samples=samples,
            )
        )
    return LearnerBatch(
        step=step,
        policy_version=policy_version,
        groups=tuple(groups),
        dropped_stale=step,
        dropped_zero_variance=2 * step,
        staleness=tuple(range(len(groups))),
    )


def store(tmp_path, segment_bytes: int = 1 << 20, flush_rows: int = 4) -> RunStore:
    return RunStore(tmp_path, segment_bytes=segment_bytes, flush_rows=flush_rows, max_delay_s=None)


def test_completions_round_trip_every_field(tmp_path):
    sent = [make_completion(g, i, num_tokens=1 + 3 * i + g, acc=(g + i) % 2) for g in range(3) for i in range(4)]
    with store(tmp_path) as s:
        for k, c in enumerate(sent):
            s.append_completion(c, received_at=1.7e9 + k / 8, policy_version=k // 5)
    table = read_table(tmp_path, "completions")
    assert table.schema == COMPLETIONS_SCHEMA and table.num_rows == len(sent)
    for k, (c, row) in enumerate(zip(sent, table.to_pylist())):
        for name in (
            "group_id",
            "prompt_id",
            "sample_index",
            "worker_id",
            "finish_reason",
            "acc",
            "reward",
            "score_status",
            "gen_seconds",
            "score_seconds",
        ):
            assert row[name] == getattr(c.sample, name), name
        assert row["lease_id"] == c.lease_id
        assert row["received_at"] == 1.7e9 + k / 8 and row["policy_version"] == k // 5
        tokens, logprobs, versions = c.sample.arrays()
        np.testing.assert_array_equal(row["token_ids"], tokens)
        np.testing.assert_array_equal(np.float32(row["logprobs"]), logprobs)
        np.testing.assert_array_equal(row["versions"], versions)


def test_batches_and_steps_round_trip(tmp_path):
    sent = [make_batch(0, 1, [5, 3]), make_batch(1, 2, [9], size=2)]
    with store(tmp_path) as s:
        for b in sent:
            s.append_batch(b)
        # durable as soon as handed out: readable before close
        assert read_table(tmp_path, "batches").num_rows == 8
    rows, steps = read_table(tmp_path, "batches"), read_table(tmp_path, "steps")
    assert rows.schema == BATCHES_SCHEMA and steps.schema == STEPS_SCHEMA
    expected = [(b, g, smp) for b in sent for g in b.groups for smp in g.samples]
    assert rows.num_rows == len(expected)
    for (b, g, smp), row in zip(expected, rows.to_pylist()):
        assert (row["step"], row["policy_version"]) == (b.step, b.policy_version)
        assert (row["group_id"], row["prompt_id"], row["answer"]) == (g.group_id, g.prompt_id, g.answer)
        assert row["prompt_token_ids"] == g.prompt_token_ids.tolist()
        for name in ("sample_index", "acc", "reward", "finish_reason", "worker_id", "score_status", "gen_seconds"):
            assert row[name] == getattr(smp, name), name
        for name, array in zip(("token_ids", "logprobs", "versions"), smp.arrays()):
            np.testing.assert_array_equal(np.asarray(row[name], array.dtype), array)
    for b, row in zip(sent, steps.to_pylist()):
        assert row["step"] == b.step and row["policy_version"] == b.policy_version
        assert (row["num_groups"], row["num_samples"]) == (len(b.groups), b.num_samples)
        assert (row["dropped_stale"], row["dropped_zero_variance"]) == (b.dropped_stale, b.dropped_zero_variance)
        assert tuple(row["staleness"]) == b.staleness and row["written_at"] > 1.6e9


def test_rotation_makes_several_segments_in_order(tmp_path):
    sent = [make_completion(g, 0, num_tokens=200) for g in range(40)]
    with store(tmp_path, segment_bytes=4096, flush_rows=3) as s:
        for c in sent:
            s.append_completion(c, received_at=0.0, policy_version=0)
    paths = segment_paths(tmp_path, "completions")
    assert len(paths) >= 4
    assert [p.name for p in paths[:2]] == ["completions-000000.arrows", "completions-000001.arrows"]
    table = read_table(tmp_path, "completions")
    assert table["group_id"].to_pylist() == list(range(40))
    assert table["token_ids"].to_pylist()[17] == sent[17].sample.token_array.tolist()


def test_reopened_store_continues_segment_numbering(tmp_path):
    for run in range(2):
        with store(tmp_path) as s:
            s.append_completion(make_completion(run, 0), received_at=0.0, policy_version=run)
    assert [p.name for p in segment_paths(tmp_path, "completions")] == [
        "completions-000000.arrows",
        "completions-000001.arrows",
    ]
    assert read_table(tmp_path, "completions")["group_id"].to_pylist() == [0, 1]


def record_batch_sizes(path) -> list[int]:
    return [b.num_rows for b in pa.ipc.open_stream(pa.memory_map(str(path)))]


def test_flush_rows_batches_rows_into_record_batches(tmp_path):
    with store(tmp_path, flush_rows=3) as s:
        for i in range(7):
            s.append_completion(make_completion(1, i), received_at=0.0, policy_version=0)
        s.written()  # completions are written by the store's writer thread
        path = segment_paths(tmp_path, "completions")[0]
        assert record_batch_sizes(path) == [3, 3]  # the 7th row is still pending
        s.flush()
        assert record_batch_sizes(path) == [3, 3, 1]
    assert read_table(tmp_path, "completions").num_rows == 7


def test_segment_writer_opens_files_lazily_and_rejects_bad_sizes(tmp_path):
    writer = SegmentWriter(tmp_path, "steps", STEPS_SCHEMA, segment_bytes=1 << 20, flush_rows=3)
    writer.flush()
    writer.close()
    assert segment_paths(tmp_path, "steps") == []
    with pytest.raises(ValueError, match="flush_rows=0"):
        SegmentWriter(tmp_path, "steps", STEPS_SCHEMA, segment_bytes=1024, flush_rows=0)


def test_max_delay_flushes_on_append(tmp_path):
    with RunStore(tmp_path, segment_bytes=1 << 20, flush_rows=1000, max_delay_s=0.0) as s:
        s.append_completion(make_completion(1, 0), received_at=0.0, policy_version=0)
        s.written()
        assert read_table(tmp_path, "completions").num_rows == 1


def test_truncated_last_segment_keeps_complete_record_batches(tmp_path):
    with store(tmp_path, flush_rows=2) as s:
        for i in range(6):
            s.append_completion(make_completion(2, i, num_tokens=50), received_at=0.0, policy_version=0)
    path = segment_paths(tmp_path, "completions")[-1]
    data = path.read_bytes()
    path.write_bytes(data[:-100])  # cuts the end-of-stream marker and the tail of the 3rd batch
    with pytest.warns(RuntimeWarning, match="damaged after 2 record batches"):
        table = read_table(tmp_path, "completions")
    assert table["sample_index"].to_pylist() == [0, 1, 2, 3]
    path.write_bytes(data[:20])  # cut inside the schema message: nothing readable
    with pytest.warns(RuntimeWarning, match="damaged after 0"):
        assert read_table(tmp_path, "completions").num_rows == 0
    path.write_bytes(b"")  # created, nothing written yet
    with pytest.warns(RuntimeWarning, match="damaged after 0"):
        assert read_table(tmp_path, "completions").num_rows == 0


def test_unclosed_segment_reads_without_end_marker(tmp_path):
    s = store(tmp_path, flush_rows=1)
    s.append_completion(make_completion(3, 0), received_at=0.0, policy_version=0)
    s.written()
    assert read_table(tmp_path, "completions").num_rows == 1  # no warning: a live stream is fine
    s.close()


def test_concurrent_appends_lose_nothing(tmp_path):
    with store(tmp_path, segment_bytes=64 * 1024, flush_rows=7) as s:

        def completions() -> None:
            for g in range(300):
                s.append_completion(make_completion(g, g % 5), received_at=float(g), policy_version=0)

        def batches() -> None:
            for step in range(40):
                s.append_batch(make_batch(step, step + 1, [1000 + step], size=2))

        threads = [threading.Thread(target=completions), threading.Thread(target=batches)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert read_table(tmp_path, "completions")["group_id"].to_pylist() == list(range(300))
    assert read_table(tmp_path, "batches")["group_id"].to_pylist() == [1000 + k // 2 for k in range(80)]
    assert read_table(tmp_path, "steps")["step"].to_pylist() == list(range(40))


def test_read_errors_name_what_is_expected(tmp_path):
    with pytest.raises(ValueError, match="without a store"):
        read_table(tmp_path / "nope", "completions")
    RunStore(tmp_path, segment_bytes=1024, flush_rows=1).close()
    assert read_table(tmp_path, "batches").num_rows == 0
    assert read_table(tmp_path, "steps").schema == STEPS_SCHEMA
    with pytest.raises(ValueError, match="expected one of"):
        read_table(tmp_path, "groups")
    with pytest.raises(ValueError, match="segment_bytes=0"):
        RunStore(tmp_path, segment_bytes=0, flush_rows=1)
