"""Training and evaluation prompts: where they come from and how they are tokenized.

``data.train`` is ``synthetic`` (the seeded arithmetic task), a local JSONL/Parquet file
with fields ``problem`` and ``answer``, or a Hugging Face dataset name (needs the optional
``datasets`` package). Each problem becomes a chat: the configured system prompt, then the
problem as the user turn, rendered with the tokenizer's chat template and left-truncated to
``data.max_prompt_tokens`` (Table 3). Workers generate from exactly these token ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from buffer.pool import PoolPrompt
from dynamo_async.config.schema import DataConfig
from dynamo_async.data.problems import Problem, load_spec
from dynamo_async.data.synthetic import train_eval_split


def training_problems(cfg: DataConfig) -> list[Problem]:
    """The training set named by ``data.train``."""
    if cfg.train == "synthetic":
        return train_eval_split(cfg.synthetic)[0]
    return load_spec(cfg.train, "data.train")


def eval_problems(cfg: DataConfig) -> dict[str, list[Problem]]:
    """Held-out sets by name: ``data.eval``, or the synthetic held-out split."""
    if not cfg.eval:
        if cfg.train != "synthetic":
            return {}
        return {"synthetic": train_eval_split(cfg.synthetic)[1]}
    return {Path(spec).stem if Path(spec).exists() else spec: load_spec(spec, "data.eval") for spec in cfg.eval}


def render_prompt(tokenizer, system_prompt: str, problem: str, max_tokens: int,
                  few_shot: tuple = ()) -> np.ndarray:
    """Chat-templated token ids of one problem (left-truncated to ``max_tokens``), after the
    system prompt and the worked examples (user: problem, assistant: ``\\boxed{answer}``)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for example in few_shot:
        messages += [{"role": "user", "content": example.problem},
                     {"role": "assistant", "content": f"\\boxed{{{example.answer}}}"}]
    messages.append({"role": "user", "content": problem})
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = np.asarray(tokenizer.encode(text, add_special_tokens=False), dtype=np.int32).reshape(-1)
    assert ids.size > 0, "chat template produced no tokens"
    return ids[-max_tokens:]


def pool_prompts(problems: list[Problem], tokenizer, cfg: DataConfig) -> list[PoolPrompt]:
    """Problems as buffer prompts with their token ids."""
    return [PoolPrompt(p.id, p.problem, p.answer,
                       render_prompt(tokenizer, cfg.system_prompt, p.problem, cfg.max_prompt_tokens, cfg.few_shot))
            for p in problems]
