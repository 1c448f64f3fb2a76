"""Each group's prompt forwarded once per micro-batch; the group's responses attend to its keys and values.

A micro-batch in the shared layout (``micro.SharedInputs``) is one forward of rows of one width
W: first each group's prompt (without its last token) cut into chunks, then per sample a tail
``[last prompt token, response]`` at positions ``P - 1, P, ...``. In every attention layer a
cache layer (``_GroupPrefix``) puts in front of each row's own keys and values those of its
group's prompt, from the chunk rows of the same call::

    keys(row) = [ the prompt chunks of the row's group | the row's own W keys ]

and the attention mask lets a tail see its whole prompt and a chunk the chunks before it. So
each response token attends to exactly the keys, values and positions it has in its full row
``prompt + response``: log-probs, entropy, loss and gradient are those of the rows layout up to
float rounding (tests/test_shared_prompt.py), while a prompt's positions are computed once per
group instead of once per sample. The gradient of a group's n responses flows into its prompt's
activations through the shared keys and values, inside the same layer call, so FSDP2 (one
gather per layer and call) and gradient checkpointing see an ordinary forward: the cache layer
stores nothing and computes the same on a replay, so checkpointed layers are told they may keep
it (transformers otherwise drops a cache under checkpointing).

``check(model)`` tries a model once, on a tiny input, before the learner shards or casts it:
the same log-probs and embedding gradient in both layouts, or the reason it cannot share (the
trainer then forwards full rows with a one-line notice).
"""

from __future__ import annotations

import inspect

import torch
from transformers.cache_utils import Cache, DynamicLayer

from dynamo_async.learner.micro import MicroBatch, Row, SharedInputs, collate


class _GroupPrefix(DynamicLayer):
    """Puts each row's group prompt (gathered from the chunk rows of the same call) in front of
    the row's own keys or values; stores nothing."""

    def __init__(self, x: SharedInputs):
        super().__init__()
        self.chunk_rows, self.row_group = x.chunk_rows, x.row_group
        self.past = x.chunk_rows.shape[1] * x.input_ids.shape[1]
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        return self._with_prompt(key_states), self._with_prompt(value_states)

    def _with_prompt(self, x: torch.Tensor) -> torch.Tensor:
        _, heads, width, dim = x.shape
        groups, chunks = self.chunk_rows.shape
        prompt = x.index_select(0, self.chunk_rows.flatten()).view(groups, chunks, heads, width, dim)
        prompt = prompt.transpose(1, 2).reshape(groups, heads, chunks * width, dim)
        return torch.cat([prompt.index_select(0, self.row_group), x], dim=-2)

    def get_seq_length(self) -> int:
        return self.past

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.past + query_length, 0


def cache_keyword(model: torch.nn.Module) -> str | None:
    """The forward's name for a key/value cache (``cache`` from transformers 5.x, formerly
    ``past_key_values``), or None when it takes none."""
    params = inspect.signature(model.forward).parameters
    return next((k for k in ("cache", "past_key_values") if k in params), None)


def keep_cache_under_checkpointing(model: torch.nn.Module) -> None:
    """Let checkpointed layers keep this module's caches (safe to replay, see the module doc)."""
    for module in model.modules():
        if hasattr(module, "_can_checkpoint_with_cache"):
            module._can_checkpoint_with_cache = True


def shared_logits(model: torch.nn.Module, x: SharedInputs, cache_kw: str) -> torch.Tensor:
    """Logits ``[N, longest response, V]`` that predict each tail's response tokens."""
    extra, has_prompt = {}, x.chunk_rows.shape[1] > 0
    if has_prompt:
        layers = model.config.get_text_config().num_hidden_layers
        extra[cache_kw] = Cache(layers=[_GroupPrefix(x)] * layers)  # the same stateless layer
    mask = x.attention_mask if has_prompt else x.attention_mask[:, -x.input_ids.shape[1] :]
    if x.segments is not None:
        mask = block_mask(mask, x.segments, model.config._attn_implementation)
    out = model(input_ids=x.input_ids, attention_mask=mask, position_ids=x.position_ids, use_cache=False, **extra)
    if x.gather is None:
        return out.logits[x.tails :, :-1]
    flat = out.logits.reshape(-1, out.logits.shape[-1])
    return flat.index_select(0, x.gather.flatten()).view(*x.gather.shape, -1)


PACKED_TAIL_ATTENTION = ("sdpa", "eager")  # attention implementations that take our 4D mask


def block_mask(mask_2d: torch.Tensor, segments: torch.Tensor, attention: str) -> torch.Tensor:
    """The 4D mask ``[rows, 1, W, past + W]`` of packed tails: every query sees the row's prompt
    positions of ``mask_2d`` and, causally, its own segment (a padding query only itself).
    Boolean for ``sdpa``; additive (0 or the float32 minimum) for ``eager``."""
    assert attention in PACKED_TAIL_ATTENTION, f"packed tails need one of {PACKED_TAIL_ATTENTION}"
    rows, width = segments.shape
    causal = torch.ones(width, width, dtype=torch.bool, device=segments.device).tril()
    own = (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] >= 0) & causal
    own |= torch.eye(width, dtype=torch.bool, device=segments.device)
    prompt = mask_2d[:, : mask_2d.shape[1] - width].bool()[:, None, :].expand(rows, width, -1)
    allowed = torch.cat([prompt, own], dim=-1)[:, None]
    if attention == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device).masked_fill_(
        ~allowed, torch.finfo(torch.float32).min
    )


def row_logits(model: torch.nn.Module, mb: MicroBatch) -> torch.Tensor:
    """Logits ``[B, L - 1, V]`` of full rows (``micro.RowInputs``)."""
    x = mb.inputs
    return model(input_ids=x.input_ids, attention_mask=x.attention_mask).logits[:, :-1]


def packs_tails(model: torch.nn.Module) -> bool:
    """Whether the model's attention takes the 4D mask of packed tails."""
    return getattr(model.config, "_attn_implementation", None) in PACKED_TAIL_ATTENTION


def check(model: torch.nn.Module) -> str | None:
    """None when ``model`` gives the same log-probs and gradient in both layouts (tails packed
    where ``packs_tails``); else why not."""
    if getattr(model.config, "is_encoder_decoder", False):
        return "it is an encoder-decoder model"
    if "position_ids" not in inspect.signature(model.forward).parameters:
        return "its forward takes no position_ids"
    cache_kw = cache_keyword(model)
    if cache_kw is None:
        return "its forward takes no key/value cache"
    rows = _probe_rows(model.config.get_text_config().vocab_size)
    device = next(model.parameters()).device
    weight = model.get_input_embeddings().weight
    results = []
    for shared in (False, True):
        mb = collate(rows, shared, 0, 1.0, float(len(rows)), packs_tails(model)).to(str(device))
        if shared:
            try:  # a model whose attention ignores or rejects the cache fails here: that is the answer
                logits = shared_logits(model, mb.inputs, cache_kw)
            except (RuntimeError, TypeError, ValueError) as e:
                return f"its forward fails with a shared prompt: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
        else:
            logits = row_logits(model, mb)
        logp = torch.log_softmax(logits.float(), -1).gather(-1, mb.targets[..., None]).squeeze(-1)
        logp = logp[mb.mask.bool()]
        results.append((logp.detach(), torch.autograd.grad(logp.sum(), weight)[0]))
    (lp_rows, g_rows), (lp_shared, g_shared) = results
    if not torch.allclose(lp_rows, lp_shared, rtol=1e-3, atol=1e-4):
        return f"its log-probs differ by up to {float((lp_rows - lp_shared).abs().max()):.2g}"
    if not torch.allclose(g_rows, g_shared, rtol=1e-3, atol=1e-5):
        return f"its gradients differ by up to {float((g_rows - g_shared).abs().max()):.2g}"
    return None


def _probe_rows(vocab: int) -> list[Row]:
    """Two groups of unequal prompts, responses of unequal length; group 0's two tails fit in
    one row of group 1's width (fixed pseudo-random ids)."""
    import numpy as np

    ids = np.random.default_rng(0).integers(1, min(vocab, 1000), size=40).astype(np.int64)
    prompts = (ids[:5], ids[5:8])
    shapes = ((0, 3), (0, 1), (1, 6))
    return [
        Row(prompts[g], ids[8 + 4 * i : 8 + 4 * i + n], np.zeros(n, dtype=np.float32), 1.0, g)
        for i, (g, n) in enumerate(shapes)
    ]
