"""What a completion's values must satisfy before the buffer stores it (docs/design.md section 6).

Decoding (``dynamo_async/protocol.py``, ``dynamo_async/sample.py``) checks a completion's shape:
equal array lengths, at least one token, ``sample_index >= 0``, ``acc`` in {0, 1}, a known
finish reason. The group (``groups.py``) checks that it belongs there: its group is live
("unknown_group", "group_complete"), its prompt ("wrong_prompt"), an index below the budget
("bad_sample_index"), not yet received ("duplicate"), and one of the indices the lease it names
was granted for that group ("sample_out_of_lease"). A well-formed record can still poison the
learner, so its values are checked here, each failure under its own rejection reason:

    nonfinite_logprobs   a behaviour log-prob is NaN or infinite (it would make the loss NaN)
    token_out_of_vocab   a token id is negative or, when the vocabulary size is known, not below
                         it (the learner's embedding lookup would fail)
    bad_version          a token's policy version is outside ``allowed_versions``: above the
                         buffer's current version + 1 (the weights being broadcast), or more
                         than ``max_staleness`` below the version its group was admitted at
    nonfinite_reward     the reward is NaN or infinite (it is averaged into the step's metrics)
    bad_timing           ``gen_seconds`` or ``score_seconds`` is negative, NaN or infinite

Log-probs are only required to be finite: a positive one within rounding of 0 is what a
sampler can report for a token of probability ~1.

A completion rejected here is never stored; while its lease is live, the service hands its
sample out again at once (``service.py``).
"""

from __future__ import annotations

import math

import numpy as np

from dynamo_async.sample import SampleRecord

_add, _max, _min = np.add.reduce, np.maximum.reduce, np.minimum.reduce


def check_vocab_size(vocab_size: int | None) -> int | None:
    """``vocab_size`` itself when it is None (ids unchecked above) or an int in 1..2**31 (token ids
    are int32); else ValueError."""
    if vocab_size is None:
        return None
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 1 <= vocab_size <= 1 << 31:
        raise ValueError(f"got vocab_size={vocab_size!r}, expected an int in 1..2**31 or None (ids unchecked above)")
    return vocab_size


def allowed_versions(admitted: int, current: int, max_staleness: int) -> tuple[int, int]:
    """The lowest and highest policy version a token of a group admitted at version ``admitted``
    may carry while the buffer is at ``current``.

    Above ``current + 1`` no weights exist yet. Below ``admitted`` a token can legitimately be: a
    worker that asked for work just before the gate moved may still generate with the weights it
    had, up to its next weight swap (the vLLM engine polls for staged weights). Such tokens are
    what ``max_staleness`` tolerates; a token more than that below ``admitted`` is more than that
    below ``current`` too, so its group could only be dropped as too stale at batch assembly (or,
    with ``stale_groups: keep``, trained on older weights than the gate allows): rejecting the one
    sample keeps the group."""
    assert admitted <= current, "a group is never admitted above the buffer's version"
    # current + 1: the learner raises the buffer's version just after broadcasting those weights
    # (learner/loop.py), so a fast worker's tokens of the new version may arrive in between.
    return max(0, admitted - max_staleness), current + 1


def value_rejection(s: SampleRecord, versions: tuple[int, int], vocab_size: int | None) -> str | None:
    """Why the values of ``s`` cannot be stored, or None. ``versions``: the lowest and highest
    token version allowed (``allowed_versions``); ``vocab_size``: None leaves ids unchecked above
    (tests and a standalone buffer without the model)."""
    lowest, highest = versions
    # One reduction per array, no temporaries (this runs for every completion): a float64 sum of
    # float32 values is finite exactly when every value is (float32s cannot overflow a float64 sum).
    if not math.isfinite(_add(np.frombuffer(s.logprobs, "<f4"), dtype=np.float64)):
        return "nonfinite_logprobs"
    # Read unsigned, a negative int32 id is >= 2**31, above any vocabulary.
    if _max(np.frombuffer(s.token_ids, "<u4")) >= (vocab_size if vocab_size is not None else 1 << 31):
        return "token_out_of_vocab"
    token_versions = np.frombuffer(s.versions, "<i4")
    if _min(token_versions) < lowest or _max(token_versions) > highest:
        return "bad_version"
    if not math.isfinite(s.reward):
        return "nonfinite_reward"
    if not (0.0 <= s.gen_seconds < math.inf and 0.0 <= s.score_seconds < math.inf):  # NaN fails too
        return "bad_timing"
    return None
