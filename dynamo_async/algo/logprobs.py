"""Chunked per-token log-probs, entropy and vocabulary sums from logits.

For temperature-scaled logits ``z = logits / T`` (fp32, one chunk of rows at a time, so the
full ``[tokens, vocab]`` fp32 tensor is never materialised at once)::

    log pi(a)  = z_a - logsumexp(z)                        (sampled token a; with grad)
    H          = -sum_b pi(b) log pi(b)                    (entropy)
    S          = sum_b pi(b)^2 Lambda(b),  Lambda(b) = log pi(b) + H

``S`` is the vocabulary sum of DynaMO's exact entropy change (Theorem 1, Appendix A).
Entropy and ``S`` are detached unless ``entropy_grad`` asks for an entropy with gradient
(the entropy-loss baseline). Plain GRPO asks for log-probs only.
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
) -> TokenStats:
    """Stats for ``logits[..., V]`` and ``tokens[...]``; outputs have the shape of ``tokens``."""
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"got logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)}, "
                         "expected logits of shape tokens.shape + (vocab,)")
    if temperature <= 0:
        raise ValueError(f"got temperature={temperature}, expected > 0")
    shape = tokens.shape
    flat = logits.reshape(-1, logits.shape[-1])
    tok = tokens.reshape(-1, 1)
    parts: dict[str, list[torch.Tensor]] = {"logp": [], "entropy": [], "vocab_sum": []}
    for start in range(0, flat.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        _chunk(flat[rows], tok[rows], temperature, entropy or vocab_sum, vocab_sum, entropy_grad, parts)
    out = {k: torch.cat(v).reshape(shape) if v else None for k, v in parts.items()}
    if flat.shape[0] == 0:
        out = {k: flat.new_zeros(shape, dtype=torch.float32) for k in parts}
    return TokenStats(
        logp=out["logp"],
        entropy=out["entropy"] if (entropy or vocab_sum) else None,
        vocab_sum=out["vocab_sum"] if vocab_sum else None,
    )


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0,
                   chunk_size: int = 1024) -> torch.Tensor:
    """Log-probs of ``tokens`` only (with gradient): what plain GRPO needs."""
    return token_stats(logits, tokens, temperature, chunk_size).logp


def _chunk(z_raw, tok, temperature, want_entropy, want_sum, entropy_grad, parts) -> None:
    z = z_raw.float()
    if temperature != 1.0:
        z = z / temperature
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    parts["logp"].append((z.gather(-1, tok) - lse).squeeze(-1))
    if not want_entropy:
        return
    if entropy_grad:
        logp_all = z - lse
        parts["entropy"].append(-(logp_all.exp() * logp_all).sum(-1))
        if not want_sum:
            return
    with torch.no_grad():
        logp_all = z.detach() - lse.detach()
        p = logp_all.exp()
        h = -(p * logp_all).sum(-1)
        if not entropy_grad:
            parts["entropy"].append(h)
        if want_sum:
            q = p * p
            parts["vocab_sum"].append((q * logp_all).sum(-1) + h * q.sum(-1))
