"""Rank 0 to the other learner ranks: what every rank does next, in the same order.

Rank 0 alone talks to the buffer; before each collective part of its loop it broadcasts an
order over the learner's default process group (CPU tensors: gloo, also when the model's
collectives run on NCCL): a ``Step`` (the learner batch and whether the step ends with a
checkpoint by time), an ``Evaluate`` (the held-out evaluation, sharded over the ranks), or stop.
An order is typed msgpack: a length, then the bytes; a batch travels as its groups and their
``SampleRecord`` s as they are (docs/design.md section 5). Nothing is pickled.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import numpy as np
import torch
import torch.distributed as dist

from buffer.batch import LearnerBatch, ReadyGroup
from dynamo_async.protocol import pack_i32
from dynamo_async.sample import SampleRecord


@dataclass(frozen=True)
class Step:
    """Train on ``batch``; ``checkpoint``: rank 0's time-based checkpoint decision for this step."""

    batch: LearnerBatch
    checkpoint: bool = False


@dataclass(frozen=True)
class Evaluate:
    """Run the held-out evaluation now (every rank samples its share of the problems)."""


class _WireGroup(msgspec.Struct, frozen=True, array_like=True):
    group_id: int
    prompt_id: str
    prompt: bytes  # prompt token ids, packed int32
    answer: str
    samples: list[SampleRecord]  # the records themselves


class _WireStep(msgspec.Struct, frozen=True, array_like=True, tag="step"):
    step: int
    version: int
    groups: list[_WireGroup]
    dropped_stale: int
    dropped_zero_variance: int
    staleness: list[int]
    checkpoint: bool


class _WireEvaluate(msgspec.Struct, frozen=True, array_like=True, tag="evaluate"):
    pass


_decoder = msgspec.msgpack.Decoder(_WireStep | _WireEvaluate)


def send_order(order: Step | Evaluate | None) -> None:
    """Rank 0: the next order to the other ranks (None: stop)."""
    data = b"" if order is None else encode_order(order)
    size = torch.tensor([len(data)], dtype=torch.int64)
    dist.broadcast(size, src=0)
    if data:
        dist.broadcast(torch.frombuffer(bytearray(data), dtype=torch.uint8), src=0)


def receive_order() -> Step | Evaluate | None:
    """Other ranks: the order rank 0 sent, or None when the run stops."""
    size = torch.zeros(1, dtype=torch.int64)
    dist.broadcast(size, src=0)
    if int(size) == 0:
        return None
    buf = torch.empty(int(size), dtype=torch.uint8)
    dist.broadcast(buf, src=0)
    return decode_order(buf.numpy().tobytes())


def encode_order(order: Step | Evaluate) -> bytes:
    if isinstance(order, Evaluate):
        return msgspec.msgpack.encode(_WireEvaluate())
    b = order.batch
    groups = [
        _WireGroup(g.group_id, g.prompt_id, pack_i32(g.prompt_token_ids), g.answer, list(g.samples)) for g in b.groups
    ]
    wire = _WireStep(
        b.step, b.policy_version, groups, b.dropped_stale, b.dropped_zero_variance, list(b.staleness), order.checkpoint
    )
    return msgspec.msgpack.encode(wire)


def decode_order(data: bytes) -> Step | Evaluate:
    """The order ``encode_order`` wrote (typed decode; the sample records check their invariants)."""
    w = _decoder.decode(data)
    if isinstance(w, _WireEvaluate):
        return Evaluate()
    groups = tuple(
        ReadyGroup(g.group_id, g.prompt_id, np.frombuffer(g.prompt, "<i4"), g.answer, tuple(g.samples))
        for g in w.groups
    )
    batch = LearnerBatch(w.step, w.version, groups, w.dropped_stale, w.dropped_zero_variance, tuple(w.staleness))
    return Step(batch, w.checkpoint)
