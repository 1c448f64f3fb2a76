"""Test helper: a ``SampleRecord`` (dynamo_async/sample.py) from numpy arrays, with plain defaults
for what a test does not look at."""

from __future__ import annotations

from dynamo_async.protocol import pack_f32, pack_i32
from dynamo_async.sample import SampleRecord


def sample_record(
    group_id: int, prompt_id: str, sample_index: int, tokens, logprobs, versions, **fields
) -> SampleRecord:
    """The record of one response; ``tokens`` / ``logprobs`` / ``versions`` are arrays or lists."""
    defaults = dict(
        worker_id="w",
        finish_reason="stop",
        acc=0,
        reward=0.0,
        score_status="ok",
        gen_seconds=0.0,
        score_seconds=0.0,
    )
    return SampleRecord(
        group_id=group_id,
        prompt_id=prompt_id,
        sample_index=sample_index,
        token_ids=pack_i32(tokens),
        logprobs=pack_f32(logprobs),
        versions=pack_i32(versions),
        **{**defaults, **fields},
    )
