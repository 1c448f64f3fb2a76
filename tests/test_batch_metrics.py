"""The learner's per-step batch metrics: counts a user reads to judge a run's rollouts."""

from types import SimpleNamespace

import numpy as np
from sample_records import scored_record

from buffer.batch import LearnerBatch, ReadyGroup
from dynamo_async.learner.loop import Learner


def _group(group_id: int, accs: list[int]) -> ReadyGroup:
    tokens = np.arange(5, 9, dtype=np.int32)
    logprobs = np.full(4, -1.0, np.float32)
    samples = tuple(scored_record(group_id, i, tokens, logprobs, acc) for i, acc in enumerate(accs))
    return ReadyGroup(group_id, f"p{group_id}", np.arange(3, dtype=np.int32), "1", samples)


def test_effective_samples_count_only_groups_with_unequal_rewards():
    groups = (_group(0, [1, 0, 1]), _group(1, [0, 0, 0, 0, 0]), _group(2, [1, 1]), _group(3, [0, 1, 1, 1]))
    batch = LearnerBatch(step=0, policy_version=0, groups=groups, staleness=(0,) * 4)
    m = Learner.batch_metrics(SimpleNamespace(_sent_to=()), batch)
    assert (m["samples"], m["effective_samples"]) == (14, 7)
    assert m["zero_variance_frac"] == 0.5
    assert m["allocation_hist"] == {"2": 1, "3": 1, "4": 1, "5": 1}
