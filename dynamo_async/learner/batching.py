"""From a learner batch to micro-batches: advantages, mini-batches, samples left out, packing by length.

Advantages are computed per group over the group's own samples (groups of unequal size). A
mini-batch is ``optim.mini_batch_prompts`` groups (one optimizer step); with several learner
ranks, rank r keeps groups r, r+W, ... of it. Its samples then go two ways
(docs/design.md section 8):

- ``stats_only``: samples whose advantage is exactly 0, when ``optim.skip_zero_advantage`` is on
  and the objective says they add nothing (``Objective.skips_zero_advantage``). The proximal pass
  still covers them (their tokens count in the entropy metric and in the mini-batch
  normalisers); the update does not forward or backpropagate them.
- ``update``: the rest, which both passes cover.

Each list is cut into micro-batches of at most ``optim.micro_batch_tokens`` padded positions
(``micro.padded_size``, per layout), from samples sorted by length (``optim.sort_by_length``)
so that little is padding. Every micro-batch carries the whole mini-batch's totals (response
tokens and sequences of every rank, skipped samples included), so the accumulated loss equals
the mini-batch's, and leaving zero-gradient samples out changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from buffer.batch import LearnerBatch, ReadyGroup
from dynamo_async.algo.objective import sequence_advantages
from dynamo_async.config.schema import RunConfig
from dynamo_async.errors import UsageError
from dynamo_async.learner.micro import MicroBatch, Row, collate, padded_size


@dataclass(frozen=True)
class Packing:
    """How samples become micro-batches (resolved from the config, the objective and the model)."""

    shared_prompt: bool  # the shared-prompt layout (the model passed shared_prompt.check)
    skip_zero_advantage: bool  # optim.skip_zero_advantage and the objective allows it
    sort_by_length: bool
    budget: int  # optim.micro_batch_tokens
    pack_tails: bool = False  # shared layout, sorted by length, and the model takes the block mask

    @classmethod
    def of(cls, cfg: RunConfig, shared_prompt: bool, skips_zero_advantage: bool, pack_tails: bool = False) -> Packing:
        o = cfg.optim
        skip = o.skip_zero_advantage and skips_zero_advantage
        pack = shared_prompt and pack_tails and o.sort_by_length
        return cls(shared_prompt, skip, o.sort_by_length, o.micro_batch_tokens, pack)


@dataclass
class MiniBatch:
    """One optimizer step's micro-batches on this rank."""

    update: list[MicroBatch]  # forwarded in the proximal pass and trained on
    stats_only: list[MicroBatch]  # zero-advantage samples: the proximal pass only
    skipped: int  # samples of this rank left out of the update
    normalisers: dict[str, float] = field(default_factory=dict)  # from the proximal pass

    def all(self) -> list[MicroBatch]:
        return [*self.update, *self.stats_only]


def group_rows(groups: tuple[ReadyGroup, ...], cfg: RunConfig) -> list[list[Row]]:
    """Per group, its samples as rows with their advantage (computed over that group only)."""
    acc = [s.acc for g in groups for s in g.samples]
    rewards = [s.reward for g in groups for s in g.samples]
    ids = [g.group_id for g in groups for _ in g.samples]
    adv = sequence_advantages(torch.tensor(acc, dtype=torch.float32), ids, cfg, rewards).tolist() if acc else []
    rows, k = [], 0
    for index, g in enumerate(groups):
        prompt = g.prompt_token_ids.astype(np.int64)
        group = []
        for s in g.samples:
            response = s.token_array.astype(np.int64)
            group.append(Row(prompt, response, s.logprob_array.astype(np.float32), float(adv[k]), index))
            k += 1
        rows.append(group)
    return rows


def check_split(cfg: RunConfig, world: int) -> None:
    """The rule for splitting a step's groups over ``world`` learner ranks: each mini-batch's
    groups are dealt round-robin, so ``mini_batch_prompts`` is a multiple of the ranks, and every
    rank holds at least one group of a step (``gen_batch_prompts`` >= ranks). A last mini-batch
    shorter than the ranks is fine: the ranks without a group in it join with masked passes."""
    size = cfg.optim.mini_batch_prompts
    if size % world:
        raise UsageError(
            f"optim.mini_batch_prompts: got {size} for {world} learner ranks, expected a multiple "
            "of the number of ranks"
        )
    if cfg.allocation.gen_batch_prompts < world:
        raise UsageError(
            f"allocation.gen_batch_prompts: got {cfg.allocation.gen_batch_prompts} for {world} learner ranks, "
            "expected at least one group per rank"
        )


def mini_batches(
    batch: LearnerBatch, cfg: RunConfig, pad_id: int, packing: Packing, rank: int = 0, world: int = 1
) -> list[MiniBatch]:
    """The batch's groups in mini-batches (optimizer steps) of micro-batches, this rank's share."""
    groups = group_rows(batch.groups, cfg)
    size = cfg.optim.mini_batch_prompts
    check_split(cfg, world)
    assert len(groups) >= world, f"{len(groups)} groups for {world} ranks"
    out = []
    for start in range(0, len(groups), size):
        mini = groups[start : start + size]
        rows = [r for g in mini for r in g]
        totals = (float(sum(len(r.response) for r in rows)), float(len(rows)))
        mine = [r for g in mini[rank::world] for r in g]
        skipped = [r for r in mine if packing.skip_zero_advantage and r.advantage == 0.0]
        kept = [r for r in mine if not (packing.skip_zero_advantage and r.advantage == 0.0)]
        out.append(
            MiniBatch(_micro(kept, packing, pad_id, totals), _micro(skipped, packing, pad_id, totals), len(skipped))
        )
    return out


# A micro-batch takes the shared layout only where it runs at most this share of the positions
# of full rows: its rows attend to a prompt plus themselves through an explicit mask, which is
# dearer per position than the causal kernel of full rows (long responses after a short prompt
# gain nothing from sharing; measured by bench/learner_step.py's long shape).
SHARE_AT_MOST = 0.75


def _micro(rows: list[Row], packing: Packing, pad_id: int, totals: tuple[float, float]) -> list[MicroBatch]:
    return [
        collate(chunk, _shares(chunk, packing), pad_id, *totals, packing.pack_tails) for chunk in _pack(rows, packing)
    ]


def _shares(rows: list[Row], packing: Packing) -> bool:
    """Whether these rows are forwarded in the shared layout (``SHARE_AT_MOST``)."""
    if not packing.shared_prompt:
        return False
    return padded_size(rows, True, packing.pack_tails) <= SHARE_AT_MOST * padded_size(rows, False)


def _size(rows: list[Row], packing: Packing) -> int:
    return padded_size(rows, _shares(rows, packing), packing.pack_tails)


def _pack(rows: list[Row], packing: Packing) -> list[list[Row]]:
    """Consecutive rows (sorted by length when asked) whose padded size, in the layout they will
    take, stays within the budget."""
    if packing.sort_by_length:
        rows = sorted(
            rows, key=_shared_order(rows) if packing.shared_prompt else lambda r: len(r.prompt) + len(r.response)
        )
    chunks: list[list[Row]] = []
    for r in rows:
        if chunks and _size([*chunks[-1], r], packing) <= packing.budget:
            chunks[-1].append(r)
        else:
            chunks.append([r])
    return chunks


def _shared_order(rows: list[Row]):
    """Groups by their longest response, each group's samples by length: neighbours have similar
    widths, and a group stays in one micro-batch where it fits (its prompt forwarded once)."""
    longest: dict[int, int] = {}
    for r in rows:
        longest[r.group] = max(longest.get(r.group, 0), len(r.response))
    return lambda r: (longest[r.group], r.group, len(r.response))
