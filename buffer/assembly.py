"""The learner batch being assembled from READY groups (``BufferService.pull_batch``).

Groups are taken oldest first. At assembly a group is set aside (DROPPED, counted) when its
oldest token is more than ``buffer.max_staleness`` versions old (with ``stale_groups: drop``)
or, with ``advantage.filter_zero_variance``, when all its rewards are equal. Groups assembled by
a pull that timed out are checked again at the next one: the version may have moved since.
A full batch of ``gen_batch_prompts`` groups is handed out as a ``LearnerBatch`` (CONSUMED),
with the counts of what was set aside since the last one. Called with the service's lock held.
"""

from __future__ import annotations

from collections import Counter

from buffer.batch import LearnerBatch
from buffer.gate import too_stale
from buffer.groups import Group
from buffer.lifecycle import GroupState, check_transition
from dynamo_async.config.schema import RunConfig


class Assembly:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.groups: list[Group] = []
        self.set_aside: Counter[str] = Counter()

    def has(self, need: int) -> bool:
        return len(self.groups) >= need

    def collect(self, service, need: int) -> None:
        """Move READY groups of ``service`` into the batch until it has ``need`` of them."""
        kept = []
        for group in self.groups:
            reason = self._set_aside_reason(group, service.version)
            if reason is None:
                kept.append(group)
            else:
                self._drop(service, group, reason)
        self.groups = kept
        taken = {id(g) for g in self.groups}
        ready = [g for g in service.groups.values() if g.state is GroupState.READY and id(g) not in taken]
        for group in ready:
            if len(self.groups) >= need:
                return
            reason = self._set_aside_reason(group, service.version)
            if reason is None:
                self.groups.append(group)
            else:
                self._drop(service, group, reason)

    def hand_out(self, service, need: int) -> LearnerBatch:
        """The first ``need`` assembled groups as the batch of ``service``'s next step."""
        chosen, self.groups = self.groups[:need], self.groups[need:]
        groups = tuple(g.ready(service.pool.prompts[g.prompt_idx]) for g in chosen)
        for g in chosen:
            g.state = check_transition(g.state, GroupState.CONSUMED)
            del service.groups[g.group_id]
        batch = LearnerBatch(
            step=service.step + 1,  # the learner step it trains, counted from 1 as in metrics.jsonl
            policy_version=service.version,
            groups=groups,
            dropped_stale=self.set_aside["dropped_stale"],
            dropped_zero_variance=self.set_aside["dropped_zero_variance"],
            staleness=tuple(service.version - g.oldest_version for g in groups),
        )
        self.set_aside.clear()
        service.counts["consumed"] += len(groups)
        service.step += 1
        if service.store is not None:
            service.store.append_batch(batch)
        return batch

    def _drop(self, service, group: Group, reason: str) -> None:
        group.state = check_transition(group.state, GroupState.DROPPED)
        service.counts[reason] += 1
        self.set_aside[reason] += 1
        del service.groups[group.group_id]

    def _set_aside_reason(self, group: Group, version: int) -> str | None:
        oldest = min(s.oldest_version for s in group.received.values())
        if self.cfg.buffer.stale_groups == "drop" and too_stale(version, oldest, self.cfg.buffer.max_staleness):
            return "dropped_stale"
        if self.cfg.advantage.filter_zero_variance and len({(c.reward, c.acc) for c in group.received.values()}) == 1:
            return "dropped_zero_variance"
        return None
