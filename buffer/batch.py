"""What the buffer hands the learner: ready groups of one prompt's samples (in-process).

A ``LearnerBatch`` is what one learner step consumes: ``groups`` of unequal size, each
keeping its own prompt id, prompt tokens and gold answer with every sample (docs/design.md section 4.1:
responses never drift to another prompt's metadata). The samples are the ``SampleRecord`` s that
arrived on the wire (``dynamo_async/sample.py``); their arrays are numpy views of the packed bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dynamo_async.sample import SampleRecord


@dataclass(frozen=True)
class ReadyGroup:
    """All samples of one group (one prompt, n_i rollouts), ordered by sample index."""

    group_id: int
    prompt_id: str
    prompt_token_ids: np.ndarray
    answer: str
    samples: tuple[SampleRecord, ...]

    def __post_init__(self) -> None:
        assert all(s.group_id == self.group_id and s.prompt_id == self.prompt_id for s in self.samples), (
            f"group {self.group_id} ({self.prompt_id}) holds a sample of another group or prompt"
        )

    @property
    def oldest_version(self) -> int:
        """Policy version of the oldest token in the group."""
        return min(s.oldest_version for s in self.samples)

    @property
    def zero_variance(self) -> bool:
        """True when every sample has the same reward and success (no GRPO signal)."""
        return len({(s.reward, s.acc) for s in self.samples}) <= 1


@dataclass(frozen=True)
class LearnerBatch:
    """The groups of one learner step, with what batch assembly set aside."""

    step: int  # the learner step that trains it, from 1 (as in metrics.jsonl and the plots)
    policy_version: int
    groups: tuple[ReadyGroup, ...]
    dropped_stale: int = 0
    dropped_zero_variance: int = 0
    staleness: tuple[int, ...] = field(default_factory=tuple)

    @property
    def num_samples(self) -> int:
        return sum(len(g.samples) for g in self.groups)
