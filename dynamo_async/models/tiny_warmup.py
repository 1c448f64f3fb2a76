"""``builtin:tiny-math``: a short supervised warm-up puts the tiny model at the edge of the synthetic task.

A randomly initialised model never writes ``\\boxed{...}``, so every GRPO group would have
all-equal (zero) rewards and no learning signal. The builder therefore trains the tiny
model for a few hundred steps on single-digit sums in the chat format of the default
system prompt, answering ``\\boxed{a+b}``: afterwards it writes the answer form reliably
and gets some sums right, so groups have mixed rewards, as at the frontier of a real task.
Deterministic for a seed (its own generator; single-threaded math). About 25 s on 2 cores;
afterwards about 20% of sampled answers (temperature 1) are right.
"""

from __future__ import annotations

import random

import torch

from dynamo_async.config.schema import DataConfig


def warm_up(model, tokenizer, seed: int = 0, steps: int = 300, batch: int = 32, lr: float = 3e-3) -> None:
    """Train ``model`` in place on level-1 sums (loss on the answer tokens only)."""
    rng = random.Random(seed)
    system = DataConfig().system_prompt
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.train()
        for _ in range(steps):
            ids, labels = _batch(tokenizer, system, rng, batch)
            loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    finally:
        torch.set_num_threads(threads)
    model.eval()


def _batch(tokenizer, system: str, rng: random.Random, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = []
    for _ in range(size):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        prompt = tokenizer.apply_chat_template(
            [{"role": "system", "content": system}, {"role": "user", "content": f"What is {a} + {b}?"}],
            add_generation_prompt=True,
            tokenize=False,
        )
        answer = f"\\boxed{{{a + b}}}{tokenizer.eos_token}"
        p, r = tokenizer.encode(prompt), tokenizer.encode(answer)
        rows.append((p + r, [-100] * len(p) + r))
    width = max(len(x) for x, _ in rows)
    ids = torch.full((size, width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((size, width), -100, dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
    return ids, labels
