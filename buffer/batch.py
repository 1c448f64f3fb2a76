"""What the buffer hands the learner: ready groups of one prompt's samples (in-process).

A ``LearnerBatch`` is what one learner step consumes: ``groups`` of unequal size, each
keeping its own prompt id, prompt tokens and gold answer with every sample (docs/design.md section 4.1:
responses never drift to another prompt's metadata). Arrays are numpy views of the
packed bytes that arrived on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Sample:
    """One response: tokens, behaviour log-probs and the policy version of every token."""

    sample_index: int
    token_ids: np.ndarray
    logprobs: np.ndarray
    versions: np.ndarray
    acc: int
    reward: float
    finish_reason: str
    worker_id: str

    def __post_init__(self) -> None:
        n = len(self.token_ids)
        assert len(self.logprobs) == n and len(self.versions) == n, "sample arrays differ in length"


@dataclass(frozen=True)
class ReadyGroup:
    """All samples of one group (one prompt, n_i rollouts), ordered by sample index."""

    group_id: int
    prompt_id: str
    prompt_token_ids: np.ndarray
    answer: str
    samples: tuple[Sample, ...]

    @property
    def oldest_version(self) -> int:
        """Policy version of the oldest token in the group."""
        return int(min(int(s.versions.min()) for s in self.samples))

    @property
    def zero_variance(self) -> bool:
        """True when every sample has the same correctness (no GRPO signal)."""
        return len({s.acc for s in self.samples}) <= 1


@dataclass(frozen=True)
class LearnerBatch:
    """The groups of one learner step, with what batch assembly set aside."""

    step: int
    policy_version: int
    groups: tuple[ReadyGroup, ...]
    dropped_stale: int = 0
    dropped_zero_variance: int = 0
    staleness: tuple[int, ...] = field(default_factory=tuple)

    @property
    def num_samples(self) -> int:
        return sum(len(g.samples) for g in self.groups)
