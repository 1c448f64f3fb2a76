"""Prompt pool with cumulative Bernoulli statistics (docs/design.md section 4.1 and 6).

Per prompt i: ``k_i`` correct of ``G_i`` attempts, cumulative over the run, updated when a
group completes (``G_i += n``, ``k_i += correct``), and the learner version last seen.
Prompts are drawn in epoch order (a seeded shuffle per epoch); a prompt whose group is
still live is skipped and comes back in a later epoch ("requeue with allocated budget":
its next budget is water-filled from the statistics its completed group left behind).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from dynamo_async.algo.allocation import allocation_priority
from dynamo_async.errors import UsageError

STATS_SCHEMA = pa.schema(
    [("prompt_id", pa.string()), ("successes", pa.int64()), ("attempts", pa.int64()), ("last_version", pa.int64())]
)


@dataclass(frozen=True)
class PoolPrompt:
    """A training prompt: id, text, gold answer, its (chat-templated) token ids, and the data
    source and row its reward functions see."""

    prompt_id: str
    text: str
    answer: str
    token_ids: np.ndarray
    source: str = ""
    fields: bytes = b""


class PromptPool:
    """Epoch-ordered prompts, their statistics, and which of them are in a live group."""

    def __init__(self, prompts: Sequence[PoolPrompt], seed: int = 0):
        if not prompts:
            raise UsageError("prompt pool: got no prompts, expected at least one")
        ids = [p.prompt_id for p in prompts]
        if len(set(ids)) != len(ids):
            raise UsageError("prompt pool: got duplicate prompt ids, expected unique ids")
        self.prompts = list(prompts)
        self.index = {pid: i for i, pid in enumerate(ids)}
        n = len(prompts)
        self.successes = np.zeros(n, dtype=np.int64)
        self.attempts = np.zeros(n, dtype=np.int64)
        self.last_version = np.full(n, -1, dtype=np.int64)
        self.epoch = 0
        self._seed = seed
        self._order = self._shuffle(0)
        self._pos = 0
        self._busy: set[int] = set()
        self._first: list[int] = []

    def __len__(self) -> int:
        return len(self.prompts)

    def take(self, count: int) -> list[int]:
        """Up to ``count`` prompt indices not in a live group, in epoch order; marks them busy."""
        out: list[int] = []
        while self._first and len(out) < count:
            idx = self._first.pop(0)
            if idx not in self._busy:
                self._busy.add(idx)
                out.append(idx)
        scanned = 0
        while len(out) < count and scanned < 2 * len(self.prompts):
            if self._pos == len(self._order):
                self.epoch += 1
                self._order, self._pos = self._shuffle(self.epoch), 0
            idx = int(self._order[self._pos])
            self._pos += 1
            scanned += 1
            if idx not in self._busy:
                self._busy.add(idx)
                out.append(idx)
        return out

    @property
    def position(self) -> tuple[int, int]:
        """(epoch, index in the epoch's order) of the next prompt to draw."""
        return self.epoch, self._pos

    def seek(self, epoch: int, position: int) -> None:
        """Continue the draw order at ``position`` of ``epoch`` (after a restore)."""
        if not 0 <= position <= len(self.prompts):
            raise ValueError(f"pool position: got {position}, expected 0..{len(self.prompts)}")
        self.epoch, self._order, self._pos = epoch, self._shuffle(epoch), position

    def requeue_first(self, prompt_ids) -> None:
        """Draw these prompts (known ids only) before continuing the epoch order."""
        self._first.extend(self.index[p] for p in prompt_ids if p in self.index)

    def complete(self, idx: int, correct: int, attempts: int, version: int) -> None:
        """A group of prompt ``idx`` finished: add its counts and free the prompt."""
        assert 0 <= correct <= attempts
        self.successes[idx] += correct
        self.attempts[idx] += attempts
        self.last_version[idx] = max(self.last_version[idx], version)
        self._busy.discard(idx)

    def release(self, idx: int) -> None:
        """Free prompt ``idx`` without statistics (its group was abandoned)."""
        self._busy.discard(idx)

    def priorities(self, idxs: Sequence[int], prior: float, power: float) -> np.ndarray:
        """Water-filling priority ``P_i ** power`` of the given prompts."""
        sel = np.asarray(idxs, dtype=np.int64)
        return allocation_priority(self.successes[sel], self.attempts[sel], prior, power)

    def stats_table(self) -> pa.Table:
        """The statistics as an Arrow table (for checkpoints)."""
        return pa.table(
            [
                pa.array([p.prompt_id for p in self.prompts]),
                pa.array(self.successes),
                pa.array(self.attempts),
                pa.array(self.last_version),
            ],
            schema=STATS_SCHEMA,
        )

    def restore_stats(self, table: pa.Table) -> int:
        """Load statistics saved by ``stats_table``; returns how many prompts matched."""
        if not table.schema.equals(STATS_SCHEMA):
            raise ValueError(f"prompt statistics: got schema {table.schema}, expected {STATS_SCHEMA}")
        cols = table.to_pydict()
        matched = 0
        for pid, k, g, v in zip(cols["prompt_id"], cols["successes"], cols["attempts"], cols["last_version"]):
            i = self.index.get(pid)
            if i is not None:
                self.successes[i], self.attempts[i], self.last_version[i] = k, g, v
                matched += 1
        return matched

    def _shuffle(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self._seed, epoch]).permutation(len(self.prompts))
