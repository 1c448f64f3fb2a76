"""One completed sample, the same record from the worker to the learner (docs/design.md sections 5 and 6).

A ``SampleRecord`` is what a worker sends inside a ``Completion`` (``protocol.py``), what a buffer
group holds, what a ``ReadyGroup`` hands the learner, what rank 0 sends the other learner ranks,
and what the Arrow store writes and replay reads back (``buffer/tables.py``): one frozen
``msgspec.Struct``, so a new per-sample field is declared once, here.

Token ids, behaviour log-probs and per-token policy versions are packed little-endian bytes
(int32 / float32 / int32, as ``protocol.pack_i32`` / ``pack_f32`` write them); ``token_array``,
``logprob_array`` and ``version_array`` are zero-copy numpy views. A field's Arrow width, where it
is not the natural one (int -> int64, float -> float64, str -> string), is declared with its type
below (``Int32``, ``Float32``, ...); packed fields name their element dtype and become list columns.

Invariants (checked on construction and on decode, where a violation rejects the message):
``len(token_ids) == len(logprobs) == len(versions)`` in elements, at least one token, at most
``MAX_TOKENS``; ``sample_index >= 0``; ``acc`` in {0, 1}.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import numpy as np

MAX_TOKENS = 1 << 20

# Arrow/numpy widths narrower than the natural ones, and packed arrays with their element dtype.
Int8 = Annotated[int, msgspec.Meta(extra={"dtype": "int8"})]
Int32 = Annotated[int, msgspec.Meta(extra={"dtype": "int32"})]
Float32 = Annotated[float, msgspec.Meta(extra={"dtype": "float32"})]
PackedI32 = Annotated[bytes, msgspec.Meta(extra={"dtype": "<i4"})]
PackedF32 = Annotated[bytes, msgspec.Meta(extra={"dtype": "<f4"})]


class SampleRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One response to one prompt: its identity, tokens, behaviour log-probs, token versions, score, timings."""

    group_id: int
    prompt_id: str
    sample_index: Int32
    worker_id: str
    token_ids: PackedI32
    logprobs: PackedF32
    versions: PackedI32
    finish_reason: Literal["stop", "length", "abort"]
    acc: Int8
    reward: Float32
    score_status: str
    gen_seconds: Float32
    score_seconds: Float32

    def __post_init__(self) -> None:
        n = len(self.token_ids)
        if n == 0 or n % 4 or n // 4 > MAX_TOKENS:
            raise ValueError(f"got token_ids of {n} bytes, expected 4..{4 * MAX_TOKENS}, a multiple of 4")
        if len(self.logprobs) != n or len(self.versions) != n:
            raise ValueError(
                f"got {n}, {len(self.logprobs)}, {len(self.versions)} bytes of token_ids, "
                "logprobs, versions, expected equal lengths"
            )
        if self.sample_index < 0 or self.acc not in (0, 1):
            raise ValueError(f"got sample_index={self.sample_index}, acc={self.acc}, expected >= 0 and 0/1")

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids) // 4

    @property
    def token_array(self) -> np.ndarray:
        """Response token ids, int32, a read-only view of ``token_ids``."""
        return np.frombuffer(self.token_ids, "<i4")

    @property
    def logprob_array(self) -> np.ndarray:
        """Behaviour log-probs of the response tokens, float32, a read-only view of ``logprobs``."""
        return np.frombuffer(self.logprobs, "<f4")

    @property
    def version_array(self) -> np.ndarray:
        """Policy version that generated each token, int32, a read-only view of ``versions``."""
        return np.frombuffer(self.versions, "<i4")

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(token ids, behaviour log-probs, versions), zero-copy views."""
        return self.token_array, self.logprob_array, self.version_array

    @property
    def oldest_version(self) -> int:
        """Policy version of the sample's oldest token."""
        return int(self.version_array.min())
