"""Generation batches planned whole, admitted as the staleness gate allows (docs/design.md section 6).

DynaMO's budgets are water-filled over a generation batch of ``allocation.gen_batch_prompts``
prompts (Eq. 1, ``algo/allocation.py``). The gate often has room for only part of a batch (after
a drop, one group); water-filling that part alone would give a single prompt exactly
``avg_rollouts`` whatever its statistics. So the planner takes a whole batch from the pool,
water-fills its budget once, and the service admits its prompts in order, each with the budget
it got in the whole batch: a prompt's budget never depends on how many others the gate let in
with it. The next batch is planned when this one is used up. Planned prompts are busy in the
pool; a checkpoint requeues the ones not yet admitted.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from buffer.pool import PromptPool
from dynamo_async.algo.allocation import water_fill
from dynamo_async.config.schema import AllocationConfig


class Planner:
    """The current generation batch's prompts not yet admitted, with their budgets."""

    def __init__(self, pool: PromptPool, cfg: AllocationConfig):
        self.pool, self.cfg = pool, cfg
        self._planned: deque[tuple[int, int]] = deque()

    def admit(self, room: int) -> list[tuple[int, int]]:
        """Up to ``room`` (prompt index, rollouts) pairs, planning a new batch when empty."""
        if room <= 0:
            return []
        if not self._planned:
            self._plan()
        return [self._planned.popleft() for _ in range(min(room, len(self._planned)))]

    def planned_prompt_ids(self) -> list[str]:
        """Prompts planned but not admitted (a checkpoint generates them again after a resume)."""
        return [self.pool.prompts[idx].prompt_id for idx, _ in self._planned]

    def _plan(self) -> None:
        a = self.cfg
        idxs = self.pool.take(a.gen_batch_prompts)
        if not idxs:
            return
        budget = a.avg_rollouts * len(idxs)
        if a.dynamic:
            counts = water_fill(self.pool.priorities(idxs, a.prior, a.priority_power), budget, a.g_min, a.g_max)
        else:
            counts = np.full(len(idxs), a.avg_rollouts)
        self._planned.extend((idx, int(n)) for idx, n in zip(idxs, counts))
