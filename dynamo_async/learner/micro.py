"""One micro-batch's tensors, in the two layouts the learner can forward (docs/design.md section 8).

Both give the objective the same ``[B, T]`` targets, mask and behaviour log-probs, and logits
``[B, T, V]`` that predict those targets; they differ in what the model runs:

- **rows** (``RowInputs``): every sample as ``prompt + response``, right-padded. The logits at
  position t predict token t + 1, so the targets are ``ids[1:]`` and the mask covers the
  response targets only (T = longest row - 1).
- **shared prompt** (``SharedInputs``, built by ``shared_layout.py``): one forward of rows of
  one width W = 1 + longest response: each group's prompt without its last token in chunks of
  W tokens, then per sample a tail ``[last prompt token, response]`` at positions ``P - 1, P,
  ...`` (short tails of a group may share a row). Every row attends to its group's prompt keys
  and values of the same layer (``shared_prompt.py``), so a tail sees exactly what its full row
  would. The tails' logits predict the responses, so T = longest response.

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
    row_group: torch.Tensor  # [K + M] whose prompt each row attends to
    chunk_rows: torch.Tensor  # [G, C] each group's chunk rows in order (C: the most chunks; 0 pads)
    tails: int  # K, the first tail row
    # With packed tails (M rows for N tails): each position's segment in its row (-1: padding),
    # for the block mask, and each response token's logit row in the flattened output
    # [N, longest response].
    segments: torch.Tensor | None = None
    gather: torch.Tensor | None = None


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


def padded_size(rows: list[Row], shared: bool, pack_tails: bool = False) -> int:
    """Positions the model runs for ``rows`` in one micro-batch of the given layout."""
    if not shared:
        return len(rows) * max(len(r.prompt) + len(r.response) for r in rows)
    from dynamo_async.learner.shared_layout import shared_size

    return shared_size(rows, pack_tails)


def collate(
    rows: list[Row], shared: bool, pad_id: int, total_tokens: float, total_seqs: float, pack_tails: bool = False
) -> MicroBatch:
    """``rows`` as one micro-batch of the given layout (``pack_tails``: several short tails of a
    group share a row, ``shared_layout.py``)."""
    if not shared:
        return _collate_rows(rows, pad_id, total_tokens, total_seqs)
    from dynamo_async.learner.shared_layout import collate_shared

    return collate_shared(rows, pad_id, total_tokens, total_seqs, pack_tails)


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


def _advantages(rows: list[Row]) -> torch.Tensor:
    return torch.tensor([r.advantage for r in rows], dtype=torch.float32)
