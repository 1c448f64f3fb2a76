"""``builtin:tiny``: a deterministic tiny causal LM for tests and quick runs (docs/design.md section 11).

It is an ordinary Hugging Face checkpoint, written with ``save_pretrained`` (safetensors)
and read back through ``AutoTokenizer``/``AutoModelForCausalLM.from_pretrained`` like any
real model, so tests exercise the same loading path as real runs.

- Tokenizer: character level, built with the ``tokenizers`` library (a BPE model with no
  merges, so every printable ASCII character, newline and tab is one token; anything else is
  ``<|unk|>``). Special tokens follow ChatML as SmolLM2 does: the end-of-turn marker
  ``<|im_end|>`` is also the eos token, so generation stops where an assistant turn ends.
  No bos is added automatically (as in SmolLM2).
- Model: a ``LlamaConfig`` model (hidden 64, 2 layers, 2 heads, 1 kv head, intermediate 256,
  512 positions, tied embeddings; about 0.13 M parameters; heads of 32 dimensions, the
  smallest vLLM's CPU attention serves), initialised from its own
  ``torch.Generator`` so the weights depend only on ``seed`` and the global RNG is not used
  for them (safe to build from several threads at once).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

PAD, UNK, BOS, IM_START, IM_END = "<|pad|>", "<|unk|>", "<|bos|>", "<|im_start|>", "<|im_end|>"
EOS = IM_END
SPECIAL_TOKENS = (PAD, UNK, BOS, IM_START, IM_END)
CHARACTERS = tuple(chr(c) for c in range(32, 127)) + ("\n", "\t")
MAX_POSITIONS = 512
INIT_STD = 0.02

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)


def build_tiny(path: Path, seed: int = 0) -> Path:
    """Write the tiny model and its tokenizer into ``path`` (created if missing); return it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer, seed)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_math(path: Path, seed: int = 0) -> Path:
    """``builtin:tiny-math``: the tiny model after a short warm-up on single-digit sums
    (``tiny_warmup.py``), so that RL on the synthetic task gets groups with mixed rewards."""
    from dynamo_async.models.tiny_warmup import warm_up

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer, seed)
    warm_up(model, tokenizer, seed)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """The character-level tokenizer with ChatML markers and a chat template."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[IM_START],
        model_max_length=MAX_POSITIONS,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    assert len(tokenizer) == len(vocab), f"tokenizer has {len(tokenizer)} tokens, expected {len(vocab)}"
    return tokenizer


def tiny_config(tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    """Architecture of the tiny model, with the tokenizer's special token ids."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=256,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        initializer_range=INIT_STD,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_model(tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    """A ``LlamaForCausalLM`` whose parameters are drawn from ``torch.Generator(seed)``."""
    model = LlamaForCausalLM(tiny_config(tokenizer))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.ndim == 1:  # RMSNorm scales
                param.fill_(1.0)
            else:
                torch.nn.init.normal_(param, mean=0.0, std=INIT_STD, generator=generator)
    assert model.lm_head.weight is model.model.embed_tokens.weight, "expected tied embeddings"
    return model


def num_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())
