"""Completions with poisonous values are rejected at ingest (docs/design.md section 6, buffer/validate.py):
counted under their reason, never stored, and a good completion of the same group still joins."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sample_records import sample_record

from buffer.pool import PoolPrompt
from buffer.service import BufferService
from buffer.store import RunStore, read_table
from dynamo_async.config import load_config
from dynamo_async.protocol import Completion, NoWork, WorkItem

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
VOCAB = 64


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_service(*overrides: str, store=None, vocab_size: int | None = VOCAB) -> BufferService:
    """Groups of exactly 4 samples (g_min = g_max = 4) from 8 prompts."""
    cfg = load_config(TINY, ["allocation.avg_rollouts=4", "allocation.g_min=4", "allocation.g_max=4", *overrides])
    prompts = [PoolPrompt(f"p{i}", f"{i}+{i}?", str(2 * i), np.array([1, 10 + i, 7], np.int32)) for i in range(8)]
    return BufferService(cfg, prompts, store=store, clock=FakeClock(), vocab_size=vocab_size)


def lease(svc: BufferService, capacity: int = 4) -> WorkItem:
    got = svc.request_work("w", capacity)
    assert not isinstance(got, NoWork), f"expected work, got {got}"
    return got[0]


def completion(item: WorkItem, index: int, *, lease_id: int | None = None, **fields) -> Completion:
    """A good completion (version 0) of sample ``index`` of ``item``'s group under ``item``'s lease
    (or ``lease_id``); ``fields`` replace the record's arrays or fields."""
    args = dict(tokens=[3, 4, 5], logprobs=[-0.5, -0.1, 0.0], versions=[0, 0, 0])
    args.update({k: fields.pop(k) for k in list(fields) if k in args})
    record = sample_record(item.group_id, item.prompt_id, index, **args, worker_id="w", acc=index % 2, **fields)
    return Completion(lease_id=item.lease_id if lease_id is None else lease_id, sample=record)


BAD_VALUES = {
    "nan_logprob": (dict(logprobs=[-0.5, math.nan, -0.1]), "nonfinite_logprobs"),
    "minus_inf_logprob": (dict(logprobs=[-0.5, -math.inf, -0.1]), "nonfinite_logprobs"),
    "plus_inf_logprob": (dict(logprobs=[math.inf, -0.5, -0.1]), "nonfinite_logprobs"),
    "token_at_vocab": (dict(tokens=[3, VOCAB, 5]), "token_out_of_vocab"),
    "token_far_out": (dict(tokens=[10**6, 4, 5]), "token_out_of_vocab"),
    "negative_token": (dict(tokens=[3, -1, 5]), "token_out_of_vocab"),
    "version_above_next": (dict(versions=[0, 2, 2]), "bad_version"),  # next: the weights in flight
    "version_far_above": (dict(versions=[10**6] * 3), "bad_version"),
    "negative_version": (dict(versions=[0, -1, 0]), "bad_version"),
    "nan_reward": (dict(reward=math.nan), "nonfinite_reward"),
    "negative_gen_seconds": (dict(gen_seconds=-1.0), "bad_timing"),
    "inf_score_seconds": (dict(score_seconds=math.inf), "bad_timing"),
}


def stored(run_dir: Path) -> list[tuple[int, int]]:
    table = read_table(run_dir, "completions", ["group_id", "sample_index"])
    return list(zip(table["group_id"].to_pylist(), table["sample_index"].to_pylist()))


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_value_rejected_counted_not_stored(case, tmp_path):
    changes, reason = BAD_VALUES[case]
    with RunStore(tmp_path, segment_bytes=1 << 20, flush_rows=1, max_delay_s=None) as store:
        svc = make_service(store=store)
        item = lease(svc)
        assert svc.add_completion(completion(item, 0, **changes)) == reason
        assert svc.rejected == {reason: 1}
        group = svc.groups[item.group_id]
        assert 0 not in group.received
        assert svc.add_completion(completion(item, 1)) is None  # a good one of the same group joins
        assert sorted(group.received) == [1]
        assert svc.counts["completions"] == 1
    assert stored(tmp_path) == [(item.group_id, 1)]


def test_version_more_than_max_staleness_below_the_groups_admission_is_rejected():
    """Tokens may lag the admission version by up to ``max_staleness`` (a worker that has not swapped in
    the new weights yet), never more, and never run ahead of the buffer's version."""
    svc = make_service("buffer.max_staleness=1")
    svc.set_version(3)
    item = lease(svc)
    assert svc.groups[item.group_id].created_version == 3
    assert svc.add_completion(completion(item, 0, versions=[3, 1, 3])) == "bad_version"
    assert svc.add_completion(completion(item, 1, versions=[2, 2, 3])) is None  # one version behind: tolerated
    svc.set_version(4)  # tokens up to the current version + 1 (being broadcast) are fine
    assert svc.add_completion(completion(item, 2, versions=[3, 4, 5])) is None
    assert svc.add_completion(completion(item, 3, versions=[4, 4, 6])) == "bad_version"
    assert svc.rejected == {"bad_version": 2}
    assert sorted(svc.groups[item.group_id].received) == [1, 2]


def test_version_below_admission_is_rejected_without_staleness():
    svc = make_service("buffer.max_staleness=0")
    svc.set_version(2)
    item = lease(svc)
    assert svc.add_completion(completion(item, 0, versions=[2, 1, 2])) == "bad_version"
    assert svc.add_completion(completion(item, 1, versions=[2, 2, 2])) is None


def test_sample_outside_its_lease_is_rejected():
    svc = make_service()
    first = lease(svc, capacity=2)  # samples 0 and 1 of a group of 4
    second = lease(svc, capacity=2)  # samples 2 and 3 of the same group
    other = lease(svc, capacity=4)  # another group
    assert first.group_id == second.group_id != other.group_id
    assert first.sample_indices == (0, 1) and second.sample_indices == (2, 3)
    assert svc.add_completion(completion(first, 2)) == "sample_out_of_lease"  # the group's, not this lease's
    assert svc.add_completion(completion(first, 0, lease_id=other.lease_id)) == "sample_out_of_lease"
    assert svc.add_completion(completion(first, 0, lease_id=987654)) == "sample_out_of_lease"
    assert svc.rejected == {"sample_out_of_lease": 3}
    assert not svc.groups[first.group_id].received
    assert svc.add_completion(completion(first, 0)) is None
    assert svc.add_completion(completion(second, 2)) is None
    assert sorted(svc.groups[first.group_id].received) == [0, 2]


def test_late_completion_of_a_revoked_lease_still_joins():
    """The group remembers a lease after it is revoked: the sample it granted is still accepted once."""
    svc = make_service()
    item = lease(svc)
    assert svc.worker_left("w") == 4  # revoked, samples requeued
    assert svc.add_completion(completion(item, 3)) is None
    assert svc.add_completion(completion(item, 3)) == "duplicate"


def test_rejected_values_hand_the_sample_out_again_at_once():
    """The worker let the sample go with its bad completion; it is requeued now, not after the lease lapses."""
    svc = make_service()
    item = lease(svc)
    assert svc.add_completion(completion(item, 1, logprobs=[math.nan] * 3)) == "nonfinite_logprobs"
    assert svc.counts["samples_redispatched"] == 1
    assert svc.add_completion(completion(item, 1, tokens=[VOCAB] * 3)) == "token_out_of_vocab"
    assert svc.counts["samples_redispatched"] == 1, "already requeued: a second bad copy requeues nothing"
    again = svc.request_work("v", 1)
    assert [(it.group_id, it.sample_indices) for it in again] == [(item.group_id, (1,))]
    assert svc.add_completion(completion(again[0], 1)) is None
    assert svc.add_completion(completion(item, 1)) == "duplicate"  # a structural rejection requeues nothing
    assert svc.counts["samples_redispatched"] == 1


def test_without_a_vocabulary_size_only_negative_ids_are_rejected():
    svc = make_service(vocab_size=None)
    item = lease(svc)
    assert svc.add_completion(completion(item, 0, tokens=[10**6, 4, 5])) is None
    assert svc.add_completion(completion(item, 1, tokens=[-5, 4, 5])) == "token_out_of_vocab"


@pytest.mark.parametrize("bad", [0, -3, 2**31 + 1, 2.5, True, "64"])
def test_bad_vocab_size_is_refused(bad):
    with pytest.raises(ValueError, match="vocab_size"):
        make_service(vocab_size=bad)
