"""From a learner batch to padded training tensors: mini-batches of groups, micro-batches of tokens.

Each sample becomes ``prompt + response`` token ids; the logits at position t predict token
t+1, so the training targets are ``ids[1:]`` and the loss mask covers the response targets
only. Advantages are computed per group over the group's own samples (groups of unequal
size; every sample keeps its own prompt). A mini-batch is ``optim.mini_batch_prompts``
groups (one optimizer step); it is split into micro-batches of at most
``optim.micro_batch_tokens`` padded tokens for gradient accumulation, carrying the
mini-batch totals so the accumulated loss equals the mini-batch's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from buffer.batch import LearnerBatch, ReadyGroup
from dynamo_async.algo.objective import sequence_advantages
from dynamo_async.config.schema import RunConfig
from dynamo_async.errors import UsageError


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [B, L] right-padded prompt + response
    attention_mask: torch.Tensor  # [B, L]
    targets: torch.Tensor  # [B, L-1] ids[:, 1:]
    mask: torch.Tensor  # [B, L-1] 1 on response targets
    advantages: torch.Tensor  # [B]
    logp_behavior: torch.Tensor  # [B, L-1] worker log-probs on response targets
    total_tokens: float = 0.0
    total_seqs: float = 0.0
    logp_old: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    vocab_sum: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    def to(self, device: str) -> MicroBatch:
        for name in ("input_ids", "attention_mask", "targets", "mask", "advantages", "logp_behavior"):
            setattr(self, name, getattr(self, name).to(device))
        return self


@dataclass(frozen=True)
class _Row:
    ids: np.ndarray
    prompt_len: int
    logp: np.ndarray
    advantage: float


def group_rows(groups: tuple[ReadyGroup, ...], cfg: RunConfig) -> list[list[_Row]]:
    """Per group, its samples as rows with their advantage (computed over that group only)."""
    acc = [s.acc for g in groups for s in g.samples]
    ids = [g.group_id for g in groups for _ in g.samples]
    adv = sequence_advantages(torch.tensor(acc, dtype=torch.float32), ids, cfg).tolist() if acc else []
    rows, k = [], 0
    for g in groups:
        group = []
        for s in g.samples:
            full = np.concatenate([g.prompt_token_ids.astype(np.int64), s.token_array.astype(np.int64)])
            group.append(_Row(full, len(g.prompt_token_ids), s.logprob_array.astype(np.float32), float(adv[k])))
            k += 1
        rows.append(group)
    return rows


def mini_batches(
    batch: LearnerBatch, cfg: RunConfig, pad_id: int, rank: int = 0, world: int = 1
) -> list[list[MicroBatch]]:
    """The batch's groups in mini-batches (optimizer steps) of micro-batches; with several
    learner ranks, rank r keeps groups r, r+world, ... of each mini-batch, and the totals stay
    those of the whole mini-batch."""
    groups = group_rows(batch.groups, cfg)
    size = cfg.optim.mini_batch_prompts
    if size % world:
        raise UsageError(
            f"optim.mini_batch_prompts: got {size} for {world} learner ranks, expected a multiple "
            "of the number of ranks"
        )
    out = []
    for start in range(0, len(groups), size):
        mini = groups[start : start + size]
        rows = [r for g in mini for r in g]
        total_tokens = float(sum(len(r.ids) - r.prompt_len for r in rows))
        mine = [r for g in mini[rank::world] for r in g]
        out.append(
            [
                _collate(chunk, pad_id, total_tokens, float(len(rows)))
                for chunk in _pack(mine, cfg.optim.micro_batch_tokens)
            ]
        )
    return out


def _pack(rows: list[_Row], budget: int) -> list[list[_Row]]:
    """Consecutive rows whose padded size (rows x longest) stays within ``budget`` tokens."""
    chunks: list[list[_Row]] = []
    cur: list[_Row] = []
    longest = 0
    for r in rows:
        new_longest = max(longest, len(r.ids))
        if cur and new_longest * (len(cur) + 1) > budget:
            chunks.append(cur)
            cur, new_longest = [], len(r.ids)
        cur.append(r)
        longest = new_longest
    if cur:
        chunks.append(cur)
    return chunks


def _collate(rows: list[_Row], pad_id: int, total_tokens: float, total_seqs: float) -> MicroBatch:
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width - 1))
    behavior = torch.zeros((len(rows), width - 1))
    for i, r in enumerate(rows):
        n = len(r.ids)
        ids[i, :n] = torch.from_numpy(r.ids)
        attn[i, :n] = 1
        resp = slice(r.prompt_len - 1, n - 1)  # logits at t predict token t + 1
        mask[i, resp] = 1.0
        behavior[i, resp] = torch.from_numpy(r.logp)
    adv = torch.tensor([r.advantage for r in rows], dtype=torch.float32)
    return MicroBatch(ids, attn, ids[:, 1:].clone(), mask, adv, behavior, total_tokens, total_seqs)
