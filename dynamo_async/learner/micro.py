"""One micro-batch's tensors, in the two layouts the learner can forward (docs/design.md section 8).

Both give the objective the same ``[B, T]`` targets, mask and behaviour log-probs, and logits
``[B, T, V]`` that predict those targets; they differ in what the model runs:

- **rows** (``RowInputs``): every sample as ``prompt + response``, right-padded. The logits at
  position t predict token t + 1, so the targets are ``ids[1:]`` and the mask covers the
  response targets only (T = longest row - 1).
- **shared prompt** (``SharedInputs``): one forward of rows of one width W = 1 + longest
  response. First each group's prompt without its last token, cut into chunks of W tokens
  (``ceil((P - 1) / W)`` of them), then per sample a tail ``[last prompt token, response]``
  at positions ``P - 1, P, ...``. Every row attends to its group's prefix keys and values of the
  same layer (``shared_prompt.py``), so a tail sees exactly what its full row would. The tails'
  logits predict the responses, so T = longest response.

``computed_tokens`` counts the positions the model runs, padding included; ``padded_tokens``
the padding among them. ``padded_size`` is the same count for a list of rows before collating,
which is what the packing keeps within ``optim.micro_batch_tokens``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class Row:
    """One sample: its group's prompt (the same array for the whole group) and its response."""

    prompt: np.ndarray  # int64 token ids
    response: np.ndarray  # int64 token ids
    logp: np.ndarray  # float32 worker log-probs of the response tokens
    advantage: float
    group: int  # the group's index in the batch


@dataclass
class RowInputs:
    input_ids: torch.Tensor  # [B, L] right-padded prompt + response
    attention_mask: torch.Tensor  # [B, L]


@dataclass
class SharedInputs:
    input_ids: torch.Tensor  # [K + N, W] the K prompt chunks (group by group), then the N tails
    attention_mask: torch.Tensor  # [K + N, C*W + W] the group's prompt, then the row itself
    position_ids: torch.Tensor  # [K + N, W]
    row_group: torch.Tensor  # [K + N] whose prompt each row attends to
    chunk_rows: torch.Tensor  # [G, C] each group's chunk rows in order (C: the most chunks; 0 pads)
    tails: int  # K, the first tail's row


@dataclass
class MicroBatch:
    inputs: RowInputs | SharedInputs
    targets: torch.Tensor  # [B, T]
    mask: torch.Tensor  # [B, T] 1 on response targets
    advantages: torch.Tensor  # [B]
    logp_behavior: torch.Tensor  # [B, T] worker log-probs on response targets
    total_tokens: float = 0.0
    total_seqs: float = 0.0
    computed_tokens: int = 0
    padded_tokens: int = 0
    logp_old: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    vocab_sum: torch.Tensor | None = None
    normalisers: dict[str, float] | None = None
    extra: dict = field(default_factory=dict)

    def to(self, device: str) -> MicroBatch:
        for name in ("targets", "mask", "advantages", "logp_behavior"):
            setattr(self, name, getattr(self, name).to(device))
        for f in dataclasses.fields(self.inputs):
            value = getattr(self.inputs, f.name)
            if isinstance(value, torch.Tensor):
                setattr(self.inputs, f.name, value.to(device))
        return self


def padded_size(rows: list[Row], shared: bool) -> int:
    """Positions the model runs for ``rows`` in one micro-batch of the given layout."""
    if not shared:
        return len(rows) * max(len(r.prompt) + len(r.response) for r in rows)
    prefixes = {r.group: len(r.prompt) - 1 for r in rows}
    width = 1 + max(len(r.response) for r in rows)
    return (sum(-(-p // width) for p in prefixes.values()) + len(rows)) * width


def collate(rows: list[Row], shared: bool, pad_id: int, total_tokens: float, total_seqs: float) -> MicroBatch:
    return (_collate_shared if shared else _collate_rows)(rows, pad_id, total_tokens, total_seqs)


def _collate_rows(rows: list[Row], pad_id: int, total_tokens: float, total_seqs: float) -> MicroBatch:
    width = max(len(r.prompt) + len(r.response) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width - 1))
    behavior = torch.zeros((len(rows), width - 1))
    for i, r in enumerate(rows):
        p, n = len(r.prompt), len(r.prompt) + len(r.response)
        ids[i, :p] = torch.from_numpy(r.prompt)
        ids[i, p:n] = torch.from_numpy(r.response)
        attn[i, :n] = 1
        resp = slice(p - 1, n - 1)  # logits at t predict token t + 1
        mask[i, resp] = 1.0
        behavior[i, resp] = torch.from_numpy(r.logp)
    used = int(attn.sum())
    return MicroBatch(
        RowInputs(ids, attn), ids[:, 1:].clone(), mask, _advantages(rows), behavior, total_tokens, total_seqs,
        computed_tokens=ids.numel(), padded_tokens=ids.numel() - used,
    )  # fmt: skip


def _collate_shared(rows: list[Row], pad_id: int, total_tokens: float, total_seqs: float) -> MicroBatch:
    order = list(dict.fromkeys(r.group for r in rows))  # the groups, in order of first appearance
    index = {g: i for i, g in enumerate(order)}
    prefixes = {r.group: torch.from_numpy(r.prompt[:-1]) for r in rows}
    width = 1 + max(len(r.response) for r in rows)
    n_chunks = [-(-len(prefixes[g]) // width) for g in order]
    past, tails = max(n_chunks) * width, sum(n_chunks)
    n_rows = tails + len(rows)
    ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    attn = torch.zeros((n_rows, past + width), dtype=torch.long)
    positions = torch.zeros((n_rows, width), dtype=torch.long)
    row_group = torch.zeros(n_rows, dtype=torch.long)
    chunk_rows = torch.zeros((len(order), max(n_chunks)), dtype=torch.long)
    row = 0
    for i, g in enumerate(order):
        prefix = prefixes[g]
        for c in range(n_chunks[i]):
            part = prefix[c * width : (c + 1) * width]
            ids[row, : len(part)] = part
            attn[row, : c * width] = 1  # the earlier chunks of its prompt
            attn[row, past : past + len(part)] = 1  # itself (causal)
            positions[row] = c * width + torch.arange(width)
            row_group[row], chunk_rows[i, c] = i, row
            row += 1
    mask = torch.zeros((len(rows), width - 1))
    behavior = torch.zeros((len(rows), width - 1))
    for j, r in enumerate(rows):
        row, n, p = tails + j, len(r.response), len(r.prompt)
        ids[row, 0] = int(r.prompt[-1])
        ids[row, 1 : 1 + n] = torch.from_numpy(r.response)
        attn[row, : p - 1] = 1  # its whole prompt
        attn[row, past : past + 1 + n] = 1
        positions[row] = p - 1 + torch.arange(width)
        row_group[row] = index[r.group]
        mask[j, :n] = 1.0
        behavior[j, :n] = torch.from_numpy(r.logp)
    used = sum(len(prefixes[g]) for g in order) + sum(1 + len(r.response) for r in rows)
    inputs = SharedInputs(ids, attn, positions, row_group, chunk_rows, tails)
    return MicroBatch(
        inputs, ids[tails:, 1:].clone(), mask, _advantages(rows), behavior, total_tokens, total_seqs,
        computed_tokens=ids.numel(), padded_tokens=ids.numel() - used,
    )  # fmt: skip


def _advantages(rows: list[Row]) -> torch.Tensor:
    return torch.tensor([r.advantage for r in rows], dtype=torch.float32)
