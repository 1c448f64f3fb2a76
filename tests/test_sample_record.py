"""One sample record from worker to learner (docs/design.md sections 5 and 6): the store's per-sample
columns are the record's fields, and a record survives every hop unchanged."""

from __future__ import annotations

import types
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pytest
from sample_records import sample_record

from buffer.batch import LearnerBatch, ReadyGroup
from buffer.pool import PoolPrompt
from buffer.replay import iter_batches
from buffer.service import BufferService
from buffer.store import BATCHES_SCHEMA, COMPLETIONS_SCHEMA, RunStore, read_table
from buffer.tables import BATCH_COLUMNS, COMPLETION_COLUMNS, arrow_fields, records_from
from dynamo_async.config import load_config
from dynamo_async.learner.orders import Evaluate, Step, decode_order, encode_order
from dynamo_async.protocol import Completion, NoWork, decode, encode
from dynamo_async.rewards.messages import ScoreResult
from dynamo_async.sample import Float32, SampleRecord
from workers.engine import GenResult
from workers.worker import RolloutWorker, _Pending

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
RECORD_FIELDS = [f.name for f in msgspec.structs.fields(SampleRecord)]

# The completions columns of the run stores already on disk (names and types; column order is free).
STORED_COMPLETIONS = {
    "group_id": pa.int64(),
    "prompt_id": pa.string(),
    "sample_index": pa.int32(),
    "lease_id": pa.int64(),
    "worker_id": pa.string(),
    "token_ids": pa.list_(pa.int32()),
    "logprobs": pa.list_(pa.float32()),
    "versions": pa.list_(pa.int32()),
    "finish_reason": pa.string(),
    "acc": pa.int8(),
    "reward": pa.float32(),
    "score_status": pa.string(),
    "gen_seconds": pa.float32(),
    "score_seconds": pa.float32(),
    "received_at": pa.float64(),
    "policy_version": pa.int32(),
}


# --------------------------------------------------------------------------- (a) schema = record fields


def test_per_sample_columns_are_exactly_the_record_fields():
    assert [n for n in COMPLETIONS_SCHEMA.names if n not in COMPLETION_COLUMNS] == RECORD_FIELDS
    assert [n for n in BATCHES_SCHEMA.names if n not in BATCH_COLUMNS] == RECORD_FIELDS
    # the run stores on disk still read: every column they have keeps its name and type
    assert {name: COMPLETIONS_SCHEMA.field(name).type for name in STORED_COMPLETIONS} == STORED_COMPLETIONS


def test_a_new_record_field_becomes_a_column_by_itself():
    class Scratch(SampleRecord, frozen=True, kw_only=True):
        scratch_top_p: Float32
        scratch_note: str

    fields = arrow_fields(Scratch)
    assert list(fields) == RECORD_FIELDS + ["scratch_top_p", "scratch_note"]
    assert fields["scratch_top_p"] == (pa.float32(), None) and fields["scratch_note"] == (pa.string(), None)
    assert fields["token_ids"] == (pa.list_(pa.int32()), "<i4")


def test_record_invariants_are_checked_on_construction():
    ok = dict(group_id=0, prompt_id="p", sample_index=0, tokens=[1, 2], logprobs=[0.0, 0.0], versions=[0, 0])
    assert sample_record(**ok).num_tokens == 2
    for bad in (dict(logprobs=[0.0]), dict(tokens=[], logprobs=[], versions=[]), dict(sample_index=-1)):
        with pytest.raises(ValueError):
            sample_record(**{**ok, **bad})
    with pytest.raises(ValueError):
        sample_record(**ok, acc=2)


# --------------------------------------------------------------------------- (b) worker -> store -> replay


def _worker(cfg) -> RolloutWorker:
    return RolloutWorker(cfg, types.SimpleNamespace(worker_id="w-test"), None, None, None, capacity=8)


def _produce(worker: RolloutWorker, item, i: int) -> Completion:
    """What the worker sends for sample ``i`` of ``item``, built by the worker's own code."""
    n = 3 + i
    result = GenResult(
        token_ids=np.arange(n, dtype=np.int32) + 100 * item.group_id,
        logprobs=-np.linspace(0.0, 1.0, n, dtype=np.float32),
        versions=np.full(n, 0, np.int32),
        finish_reason=("stop", "length")[i % 2],
    )
    pending = _Pending(item, i, result, gen_seconds=0.5 + i, future=None, submitted=0.0)
    score = ScoreResult(acc=i % 2, status=("no_answer", "ok")[i % 2], reward=0.5 * i)
    return worker._completion(pending, score, score_seconds=0.25)  # float32-exact timings: the store narrows


def test_a_record_round_trips_worker_wire_buffer_store_replay(tmp_path):
    cfg = load_config(TINY, ["model.name=builtin:tiny"])
    prompts = [PoolPrompt(f"p{k}", f"{k}+1?", str(k + 1), np.array([5, 6, k], np.int32)) for k in range(8)]
    worker = _worker(cfg)
    with RunStore(tmp_path, segment_bytes=1 << 20, flush_rows=4, max_delay_s=None) as store:
        svc = BufferService(cfg, prompts, store=store)
        items = svc.request_work("w-test", 1000)
        assert not isinstance(items, NoWork)
        sent = {}
        for item in items:
            for i in item.sample_indices:
                wire = encode(_produce(worker, item, i))  # worker -> bytes
                back = decode(wire)  # -> buffer
                assert svc.add_completion(back) is None
                sent[(back.sample.group_id, back.sample.sample_index)] = back.sample
        batch = svc.pull_batch(timeout=0)
        assert batch is not None
    assert all(s is sent[(s.group_id, s.sample_index)] for g in batch.groups for s in g.samples)

    (replayed,) = list(iter_batches(tmp_path))
    got = [s for g in replayed.groups for s in g.samples]
    assert [(s.group_id, s.sample_index) for s in got] == [
        (s.group_id, s.sample_index) for g in batch.groups for s in g.samples
    ]
    for s in got:
        assert msgspec.structs.asdict(s) == msgspec.structs.asdict(sent[(s.group_id, s.sample_index)])
    stored = {(s.group_id, s.sample_index): s for s in records_from(read_table(tmp_path, "completions"))}
    assert stored == sent


def test_older_segments_read_by_column_name(tmp_path):
    """A segment written in the column order of an older layout reads by name; a column it
    predates reads as zeros / empty strings (these fields have no default)."""
    rec = sample_record(1, "p1", 0, [1, 2], [-0.5, -0.25], [0, 0], gen_seconds=0.5, score_status="ok")
    batch = LearnerBatch(0, 1, (ReadyGroup(1, "p1", np.array([7], np.int32), "1", (rec,)),), staleness=(1,))
    with RunStore(tmp_path, segment_bytes=1 << 20, flush_rows=1, max_delay_s=None) as store:
        store.append_batch(batch)
    old_names = ["step", "policy_version", "group_id", "prompt_id", "prompt_token_ids", "answer", "sample_index"]
    old_names += ["token_ids", "logprobs", "versions", "acc", "reward", "finish_reason", "worker_id"]
    path = tmp_path / "store" / "batches" / "batches-000001.arrows"
    table = read_table(tmp_path, "batches").select(old_names)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    rows = read_table(tmp_path, "batches")
    assert rows.schema == BATCHES_SCHEMA and rows.num_rows == 2
    assert rows["score_status"].to_pylist() == ["ok", ""] and rows["gen_seconds"].to_pylist() == [0.5, 0.0]
    assert records_from(rows)[1] == msgspec.structs.replace(rec, score_status="", gen_seconds=0.0, score_seconds=0.0)


# --------------------------------------------------------------------------- (c) rank to rank


def test_rank_to_rank_encoding_round_trips_a_learner_batch():
    groups = tuple(
        ReadyGroup(
            g,
            f"p{g}",
            np.array([3, 4, g], np.int32),
            str(g),
            tuple(
                sample_record(g, f"p{g}", i, [g, i, 9], [-0.5, -0.25, -0.125], [0, 1, 1], acc=i % 2, worker_id=f"w{i}")
                for i in range(2 + g)
            ),
        )
        for g in range(3)
    )
    batch = LearnerBatch(7, 3, groups, dropped_stale=1, dropped_zero_variance=2, staleness=(1, 2, 3))
    order = decode_order(encode_order(Step(batch, checkpoint=True)))
    assert isinstance(order, Step) and order.checkpoint is True
    assert decode_order(encode_order(Step(batch))).checkpoint is False
    assert isinstance(decode_order(encode_order(Evaluate())), Evaluate)
    back = order.batch
    for name in ("step", "policy_version", "dropped_stale", "dropped_zero_variance", "staleness"):
        assert getattr(back, name) == getattr(batch, name), name
    for g, w in zip(back.groups, batch.groups, strict=True):
        assert (g.group_id, g.prompt_id, g.answer) == (w.group_id, w.prompt_id, w.answer)
        assert g.prompt_token_ids.dtype == np.int32 and g.prompt_token_ids.tolist() == w.prompt_token_ids.tolist()
        assert g.samples == w.samples
