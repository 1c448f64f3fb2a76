"""Chunked per-token log-probs, entropy and vocabulary sums from logits.

For temperature-scaled logits ``z = logits / T`` (fp32, one chunk of rows at a time, so the
full ``[tokens, vocab]`` fp32 tensor is never materialised at once)::

    log pi(a)  = z_a - logsumexp(z)                        (sampled token a; with grad)
    H          = -sum_b pi(b) log pi(b)                    (entropy)
    S          = sum_b pi(b)^2 Lambda(b),  Lambda(b) = log pi(b) + H

``S`` is the vocabulary sum of DynaMO's exact entropy change (Theorem 1, Appendix A).
Entropy and ``S`` are detached unless ``entropy_grad`` asks for an entropy with gradient
(the entropy-loss baseline), whose exact gradient is::

    dH / dz_b  = -pi(b) (log pi(b) + H)

Plain GRPO asks for log-probs only; the statistics reuse the ``exp`` the log-normaliser
already needs, so they cost a few extra reductions per chunk. The backward pass recomputes
the softmax per chunk instead of keeping fp32 copies, with or without the entropy's gradient.
"""

from __future__ import annotations

import msgspec
import torch


class TokenStats(msgspec.Struct, frozen=True):
    """Per-token results for flattened rows; ``entropy``/``vocab_sum`` None unless requested."""

    logp: torch.Tensor
    entropy: torch.Tensor | None = None
    vocab_sum: torch.Tensor | None = None


def token_stats(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    entropy: bool = False,
    vocab_sum: bool = False,
    entropy_grad: bool = False,
    mask: torch.Tensor | None = None,
) -> TokenStats:
    """Stats for ``logits[..., V]`` and ``tokens[...]``; outputs have the shape of ``tokens``.

    With ``mask`` (shape of ``tokens``), only the rows where it is nonzero are computed (the
    others read 0 and get no gradient), so padding costs nothing.
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(
            f"got logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)}, "
            "expected logits of shape tokens.shape + (vocab,)"
        )
    if temperature <= 0:
        raise ValueError(f"got temperature={temperature}, expected > 0")
    if chunk_size < 1:
        raise ValueError(f"got chunk_size={chunk_size}, expected >= 1")
    if entropy_grad:
        return _with_entropy_grad(logits, tokens, temperature, chunk_size, vocab_sum)
    want_entropy = entropy or vocab_sum
    if mask is not None and mask.shape != tokens.shape:
        raise ValueError(f"got mask {tuple(mask.shape)}, expected the shape of tokens {tuple(tokens.shape)}")
    rows = None if mask is None else torch.nonzero(mask.reshape(-1)).squeeze(-1)
    logp, ent, vsum = _ChunkedLogprob.apply(logits, tokens, rows, temperature, chunk_size, want_entropy, vocab_sum)
    return TokenStats(logp=logp, entropy=ent if want_entropy else None, vocab_sum=vsum if vocab_sum else None)


def token_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Log-probs of ``tokens`` only (with gradient): what plain GRPO needs."""
    return token_stats(logits, tokens, temperature, chunk_size, mask=mask).logp


class _ChunkedLogprob(torch.autograd.Function):
    """Sampled-token log-probs with gradient; entropy and vocabulary sum as detached extras.

    Forward shares one ``exp`` per chunk between the log-normaliser and the statistics;
    backward recomputes the softmax chunk by chunk, so only ``logits`` and the per-row
    log-normaliser are kept (no fp32 ``[tokens, vocab]`` copy survives the forward).
    """

    @staticmethod
    def forward(ctx, logits, tokens, rows, temperature, chunk_size, want_entropy, want_sum):
        flat = logits.reshape(-1, logits.shape[-1])
        tok = tokens.reshape(-1, 1)
        out = [flat.new_zeros(flat.shape[0], dtype=torch.float32) for _ in range(4)]
        for sel in _chunks(flat.shape[0], rows, chunk_size):
            parts = [flat.new_empty(_count(sel), dtype=torch.float32) for _ in range(4)]
            _forward_chunk(_take(flat, sel), _take(tok, sel), temperature, want_entropy, want_sum, parts)
            for o, part in zip(out, parts):
                _put(o, sel, part)
        logp, log_norm, ent, vsum = (o.reshape(tokens.shape) if i != 1 else o for i, o in enumerate(out))
        ctx.save_for_backward(logits, tokens, log_norm, rows)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.mark_non_differentiable(ent, vsum)
        return logp, ent, vsum

    @staticmethod
    def backward(ctx, grad_logp, _grad_ent, _grad_sum):
        logits, tokens, log_norm, rows = ctx.saved_tensors
        flat = logits.reshape(-1, logits.shape[-1])
        tok = tokens.reshape(-1, 1)
        g = grad_logp.reshape(-1, 1).float()
        grad = torch.empty_like(flat) if rows is None else torch.zeros_like(flat)
        for sel in _chunks(flat.shape[0], rows, ctx.chunk_size):
            z = _scaled(_take(flat, sel), ctx.temperature)
            g_sel = _take(g, sel)
            # d log pi(a) / d z_b = 1[b = a] - pi(b);  d z / d logits = 1 / T
            part = torch.exp(z - _take(log_norm, sel)[:, None]).mul_(-g_sel)
            part.scatter_add_(-1, _take(tok, sel), g_sel)
            if ctx.temperature != 1.0:
                part.div_(ctx.temperature)
            _put(grad, sel, part.to(grad.dtype))
        return grad.reshape(logits.shape), None, None, None, None, None, None


def _chunks(n: int, rows: torch.Tensor | None, size: int):
    """Row selectors: slices of ``range(n)``, or slices of the index tensor ``rows``."""
    if rows is None:
        return [slice(i, min(i + size, n)) for i in range(0, n, size)]
    return [rows[i : i + size] for i in range(0, rows.numel(), size)]


def _count(sel) -> int:
    return sel.stop - sel.start if isinstance(sel, slice) else sel.numel()


def _take(t: torch.Tensor, sel) -> torch.Tensor:
    return t[sel] if isinstance(sel, slice) else t.index_select(0, sel)


def _put(t: torch.Tensor, sel, value: torch.Tensor) -> None:
    if isinstance(sel, slice):
        t[sel] = value
    else:
        t.index_copy_(0, sel, value)


def _scaled(chunk: torch.Tensor, temperature: float) -> torch.Tensor:
    z = chunk.float()
    return z / temperature if temperature != 1.0 else z


@torch.no_grad()
def _forward_chunk(chunk, tok, temperature, want_entropy, want_sum, out) -> None:
    logp, log_norm, ent, vsum = out
    z = _scaled(chunk, temperature)
    top = z.amax(-1, keepdim=True)
    shifted = z - top  # z - max <= 0: well conditioned
    e = shifted.exp()  # pi = e / total
    total = e.sum(-1)
    log_total = total.log()
    logp.copy_(shifted.gather(-1, tok).squeeze(-1) - log_total)
    log_norm.copy_(top.squeeze(-1) + log_total)  # logsumexp(z), for the backward pass
    if not want_entropy:
        return
    h = log_total - torch.linalg.vecdot(e, shifted) / total  # H = log total - <pi, z - max>
    ent.copy_(h)
    if want_sum:
        sq = e.mul_(e)  # e^2 in place; pi^2 = e^2 / total^2
        norm = total * total
        # sum_b pi^2 (log pi + H) = <pi^2, z - max> + (H - log total) * sum_b pi^2
        vsum.copy_((torch.linalg.vecdot(sq, shifted) + (h - log_total) * sq.sum(-1)) / norm)


def _with_entropy_grad(logits, tokens, temperature, chunk_size, vocab_sum) -> TokenStats:
    """Entropy with its gradient (the entropy-loss baseline), chunked like the log-probs."""
    logp, ent, vsum = _ChunkedLogprobEntropy.apply(logits, tokens, temperature, chunk_size, vocab_sum)
    return TokenStats(logp=logp, entropy=ent, vocab_sum=vsum if vocab_sum else None)


class _ChunkedLogprobEntropy(torch.autograd.Function):
    """Sampled-token log-probs and entropies, both with gradient; vocabulary sum detached.

    Forward is ``_ChunkedLogprob``'s on every row; it keeps ``logits`` and the per-row entropy,
    and backward recomputes the softmax chunk by chunk::

        d / d z_b  [g_logp log pi(a) + g_H H]  =  g_logp (1[b = a] - pi(b)) - g_H pi(b) (log pi(b) + H)
    """

    @staticmethod
    def forward(ctx, logits, tokens, temperature, chunk_size, want_sum):
        flat = logits.reshape(-1, logits.shape[-1])
        tok = tokens.reshape(-1, 1)
        out = [flat.new_zeros(flat.shape[0], dtype=torch.float32) for _ in range(4)]
        for sel in _chunks(flat.shape[0], None, chunk_size):
            parts = [o[sel] for o in out]  # contiguous row slices: written in place
            _forward_chunk(flat[sel], tok[sel], temperature, True, want_sum, parts)
        logp, ent, vsum = (out[i].reshape(tokens.shape) for i in (0, 2, 3))
        ctx.save_for_backward(logits, tokens, out[2])
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.mark_non_differentiable(vsum)
        return logp, ent, vsum

    @staticmethod
    def backward(ctx, grad_logp, grad_ent, _grad_sum):
        logits, tokens, ent = ctx.saved_tensors
        flat = logits.reshape(-1, logits.shape[-1])
        tok = tokens.reshape(-1, 1)
        g_logp = grad_logp.reshape(-1, 1).float()
        g_ent = grad_ent.reshape(-1, 1).float()
        grad = torch.empty_like(flat)
        for sel in _chunks(flat.shape[0], None, ctx.chunk_size):
            z = _scaled(flat[sel], ctx.temperature)  # may alias logits: not written to
            shifted = z - z.amax(-1, keepdim=True)
            pi = shifted.exp()
            total = pi.sum(-1, keepdim=True)
            pi.div_(total)
            # log pi from z - max, not z - logsumexp(z): no rounding of a large normaliser
            log_pi = shifted.sub_(total.log_())
            # -pi(b) [g_logp + g_H (log pi(b) + H)], then + g_logp at the sampled token
            part = log_pi.add_(ent[sel, None]).mul_(g_ent[sel]).add_(g_logp[sel]).mul_(pi).neg_()
            part.scatter_add_(-1, tok[sel], g_logp[sel])
            if ctx.temperature != 1.0:
                part.div_(ctx.temperature)
            grad[sel] = part
        return grad.reshape(logits.shape), None, None, None, None
