"""Test helper: a ``SampleRecord`` (dynamo_async/sample.py) from numpy arrays, with plain defaults
for what a test does not look at."""

from __future__ import annotations

import numpy as np

from dynamo_async.protocol import pack_f32, pack_i32
from dynamo_async.sample import SampleRecord


def sample_record(
    group_id: int, prompt_id: str, sample_index: int, tokens, logprobs, versions, **fields
) -> SampleRecord:
    """The record of one response; ``tokens`` / ``logprobs`` / ``versions`` are arrays or lists (or
    bytes, taken as packed). The reward defaults to math-verify's ``2 acc - 1``, as a worker of a
    math-verify run sends it."""
    defaults = dict(
        worker_id="w",
        finish_reason="stop",
        acc=0,
        reward=float(2 * fields.get("acc", 0) - 1),
        score_status="ok",
        gen_seconds=0.0,
        score_seconds=0.0,
    )
    packed = dict(
        token_ids=_packed(tokens, pack_i32), logprobs=_packed(logprobs, pack_f32), versions=_packed(versions, pack_i32)
    )
    ids = dict(group_id=group_id, prompt_id=prompt_id, sample_index=sample_index)
    return SampleRecord(**{**ids, **defaults, **packed, **fields})  # ``fields`` override the defaults and arrays


def _packed(values, pack) -> bytes:
    return values if isinstance(values, bytes) else pack(values)


def scored_record(group_id: int, sample_index: int, tokens, logprobs, acc: int) -> SampleRecord:
    """A finished response of prompt ``p<group_id>`` with correctness ``acc`` (reward 2 acc - 1),
    generated at version 0."""
    n = len(tokens)
    return sample_record(
        group_id,
        f"p{group_id}",
        sample_index,
        tokens,
        logprobs,
        np.zeros(n, np.int32),
        acc=acc,
        reward=float(2 * acc - 1),
    )
