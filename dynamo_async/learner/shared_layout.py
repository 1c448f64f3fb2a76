"""The shared-prompt layout of a micro-batch: prompt chunks, tails, and which row sees what.

All rows have one width W, 1 + the longest response of the micro-batch or, with packed tails, the
multiple of it that runs the fewest positions::

    rows 0 .. K-1    each group's prompt without its last token, in chunks of W tokens
    rows K ..        tails: [last prompt token, response], at positions P - 1, P, ...

Every row attends first to its group's prompt (the chunk rows' keys and values of the same
layer, gathered by ``shared_prompt._GroupPrefix``), then to itself. A chunk sees the chunks
before it, a tail its whole prompt.

Tails of one group whose lengths add up to at most W share a row (``pack_tails``; first fit
in decreasing order), each a segment with its own positions; a block mask then keeps each
segment to itself and its prompt, and the model gets a 4D mask instead of the 2D one (boolean
for ``sdpa``, additive for ``eager``: ``shared_prompt.block_mask``). Where nothing shares a row,
the 2D mask is kept. Without packing, short responses in a micro-batch with a long one are
mostly padding: in the demo about a third of the positions.
"""

from __future__ import annotations

import functools

import torch

from dynamo_async.learner.micro import MicroBatch, Row, SharedInputs

WIDTHS = (1, 2, 3, 4)  # row widths tried with packed tails, in multiples of the longest tail


def shared_size(rows: list[Row], pack_tails: bool) -> int:
    """Positions the model runs for ``rows`` in one shared-layout micro-batch."""
    return _size(rows, _width(rows, pack_tails), pack_tails)


def _size(rows: list[Row], width: int, pack: bool, needs: dict[int, tuple[int, ...]] | None = None) -> int:
    prefixes = {r.group: len(r.prompt) - 1 for r in rows}
    chunks = sum(-(-p // width) for p in prefixes.values())
    if not pack:
        return (chunks + len(rows)) * width
    needs = _needs(rows) if needs is None else needs
    return (chunks + sum(_bin_count(n, width) for n in needs.values())) * width


def _width(rows: list[Row], pack: bool) -> int:
    """The longest tail; with packing, the multiple of it that runs the fewest positions (two
    responses of average length do not fit in the row of one twice as long)."""
    longest = 1 + max(len(r.response) for r in rows)
    if not pack:
        return longest
    needs = _needs(rows)
    return min((k * longest for k in WIDTHS), key=lambda w: (_size(rows, w, pack, needs), w))


def _by_group(rows: list[Row]) -> dict[int, list[int]]:
    """Each group's row indices, longest tail first (ties in row order)."""
    out: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        out.setdefault(r.group, []).append(i)
    return {g: sorted(idx, key=lambda i: -len(rows[i].response)) for g, idx in out.items()}


def _needs(rows: list[Row]) -> dict[int, tuple[int, ...]]:
    """Each group's tail lengths, longest first: all that its packing depends on."""
    return {g: tuple(1 + len(rows[i].response) for i in idx) for g, idx in _by_group(rows).items()}


@functools.lru_cache(maxsize=4096)
def _bin_count(needs: tuple[int, ...], width: int) -> int:
    # cached: the packer asks again for every group each time it adds one row to a micro-batch
    return len(_first_fit(needs, width))


def _first_fit(needs: tuple[int, ...], width: int) -> list[list[int]]:
    """First fit of ``needs`` (longest first) into rows of ``width``: each row's positions in ``needs``."""
    bins: list[list] = []  # [free positions, positions in needs]
    for k, need in enumerate(needs):
        row = next((b for b in bins if b[0] >= need), None)
        if row is None:
            bins.append([width - need, [k]])
        else:
            row[0] -= need
            row[1].append(k)
    return [b[1] for b in bins]


def _tail_rows(rows: list[Row], width: int, pack: bool) -> list[list[int]]:
    """Rows of tails (indices into ``rows``): one each, or a group's tails packed first-fit
    decreasing into rows of ``width`` positions."""
    if not pack:
        return [[i] for i in range(len(rows))]
    out: list[list[int]] = []
    for idx in _by_group(rows).values():
        needs = tuple(1 + len(rows[i].response) for i in idx)
        out += [[idx[k] for k in row] for row in _first_fit(needs, width)]
    return out


def collate_shared(rows: list[Row], pad_id: int, total_tokens: float, total_seqs: float, pack: bool) -> MicroBatch:
    order = list(dict.fromkeys(r.group for r in rows))  # the groups, in order of first appearance
    prefixes = {r.group: torch.from_numpy(r.prompt[:-1]) for r in rows}
    width = _width(rows, pack)
    n_chunks = [-(-len(prefixes[g]) // width) for g in order]
    longest = max(len(r.response) for r in rows)
    tail_rows = _tail_rows(rows, width, pack)
    packed = any(len(m) > 1 for m in tail_rows) or width != 1 + longest
    if not packed:  # one row per tail, in the samples' order: the logits need no gather
        tail_rows = [[j] for j in range(len(rows))]
    past, first_tail = max(n_chunks) * width, sum(n_chunks)
    n_rows = first_tail + len(tail_rows)
    ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    attn = torch.zeros((n_rows, past + width), dtype=torch.long)
    positions = torch.zeros((n_rows, width), dtype=torch.long)
    segments = torch.full((n_rows, width), -1, dtype=torch.long)
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
            segments[row, : len(part)] = 0
            row_group[row], chunk_rows[i, c] = i, row
            row += 1
    gather = torch.zeros((len(rows), longest), dtype=torch.long)
    targets = torch.zeros((len(rows), longest), dtype=torch.long)
    mask = torch.zeros((len(rows), longest))
    behavior = torch.zeros((len(rows), longest))
    group_index = {g: i for i, g in enumerate(order)}
    for t, members in enumerate(tail_rows):
        row, start = first_tail + t, 0
        p = len(rows[members[0]].prompt)
        attn[row, : p - 1] = 1  # its whole prompt
        row_group[row] = group_index[rows[members[0]].group]
        for k, j in enumerate(members):
            r, n = rows[j], len(rows[j].response)
            ids[row, start] = int(r.prompt[-1])
            ids[row, start + 1 : start + 1 + n] = torch.from_numpy(r.response)
            attn[row, past + start : past + start + 1 + n] = 1
            positions[row, start : start + 1 + n] = p - 1 + torch.arange(1 + n)
            segments[row, start : start + 1 + n] = k
            gather[j, :n] = row * width + start + torch.arange(n)  # logit at j predicts token j + 1
            targets[j, :n] = torch.from_numpy(r.response)
            mask[j, :n] = 1.0
            behavior[j, :n] = torch.from_numpy(r.logp)
            start += 1 + n
    inputs = SharedInputs(
        ids, attn, positions, row_group, chunk_rows, first_tail,
        segments if packed else None, gather if packed else None,
    )  # fmt: skip
    used = sum(len(prefixes[g]) for g in order) + sum(1 + len(r.response) for r in rows)
    return MicroBatch(
        inputs, targets, mask, torch.tensor([r.advantage for r in rows], dtype=torch.float32), behavior,
        total_tokens, total_seqs, computed_tokens=ids.numel(), padded_tokens=ids.numel() - used,
    )  # fmt: skip
