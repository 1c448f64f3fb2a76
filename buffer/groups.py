"""Groups in the buffer: one prompt, its budget n_i, and the samples received so far.

A group is created with the rollout budget that water-filling gave its prompt. Its sample
indices 0..n_i-1 are handed out (possibly to several workers) and come back one completion
at a time; a completion's sample (its ``SampleRecord``) is accepted only for its own group,
prompt and an index not yet received that the lease it names was granted, and is kept as it
arrived: the learner gets the same record. The group remembers every lease granted on it, also
after the lease ends or is revoked, so a late completion of a revoked lease still joins.
``created_version`` is the buffer's version when the group was admitted; its tokens' versions are
checked against it (``validate.allowed_versions``; docs/design.md section 6).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from buffer.batch import ReadyGroup
from buffer.lifecycle import GroupState, check_transition
from dynamo_async.sample import SampleRecord


@dataclass(eq=False)
class Group:
    group_id: int
    prompt_idx: int
    prompt_id: str
    n: int
    created_version: int
    state: GroupState = GroupState.WAITING
    pending: deque[int] = field(default_factory=deque)
    received: dict[int, SampleRecord] = field(default_factory=dict)
    leased: dict[int, frozenset[int]] = field(default_factory=dict)  # lease id -> sample indices granted

    def __post_init__(self) -> None:
        assert self.n >= 1
        self.pending.extend(range(self.n))

    def take(self, count: int) -> list[int]:
        """Up to ``count`` pending sample indices; the group is then IN_FLIGHT."""
        out = [self.pending.popleft() for _ in range(min(count, len(self.pending)))]
        if out and self.state is GroupState.WAITING:
            self.state = check_transition(self.state, GroupState.IN_FLIGHT)
        return out

    def give_back(self, samples: set[int]) -> int:
        """Samples of a revoked lease that have not arrived go back to pending; returns how many."""
        back = sorted(s for s in samples if s not in self.received and s not in self.pending)
        self.pending.extendleft(reversed(back))
        return len(back)

    def note_lease(self, lease_id: int, samples: list[int]) -> None:
        """Lease ``lease_id`` was granted for ``samples`` of this group."""
        assert lease_id not in self.leased, "lease ids are never reused"
        self.leased[lease_id] = frozenset(samples)

    def rejection(self, c: SampleRecord, lease_id: int) -> str | None:
        """Why sample ``c``, sent under lease ``lease_id``, cannot join this group, or None if it can."""
        if self.state not in (GroupState.WAITING, GroupState.IN_FLIGHT):
            return "group_complete"
        if c.prompt_id != self.prompt_id:
            return "wrong_prompt"
        if not 0 <= c.sample_index < self.n:
            return "bad_sample_index"
        if c.sample_index in self.received:
            return "duplicate"
        if c.sample_index not in self.leased.get(lease_id, ()):
            return "sample_out_of_lease"
        return None

    def add(self, c: SampleRecord) -> bool:
        """Accept ``c`` (already checked); True when the group just became READY."""
        assert c.sample_index not in self.received, "add() after rejection() said no"
        self.received[c.sample_index] = c
        if self.pending and c.sample_index in self.pending:  # arrived although revoked and queued again
            self.pending.remove(c.sample_index)
        if self.state is GroupState.WAITING:
            self.state = check_transition(self.state, GroupState.IN_FLIGHT)
        if len(self.received) == self.n:
            self.state = check_transition(self.state, GroupState.READY)
            return True
        return False

    @property
    def correct(self) -> int:
        return sum(c.acc for c in self.received.values())

    def ready(self, prompt) -> ReadyGroup:
        """The group as the learner gets it (samples in index order); ``prompt`` is its PoolPrompt."""
        samples = tuple(self.received[index] for index in sorted(self.received))
        return ReadyGroup(self.group_id, self.prompt_id, prompt.token_ids, prompt.answer, samples)
