"""Training and evaluation prompts: where they come from and how they are tokenized.

``data.train`` is ``synthetic`` (the seeded arithmetic task), a local JSONL/Parquet file (plain
``problem``/``answer``, verl's RL layout, or mapped fields; ``layouts.py``), or a Hugging Face
dataset name (needs the optional ``datasets`` package). Training prompts are deduplicated by
problem text at load (``dedup.py``). Each problem becomes a chat: the configured system prompt,
the worked examples, then the problem inside ``data.user_template`` as the user turn, rendered
with the tokenizer's chat template and left-truncated to ``data.max_prompt_tokens`` (Table 3).
Workers generate from exactly these token ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from buffer.pool import PoolPrompt
from dynamo_async.config.schema import DataConfig, RunConfig
from dynamo_async.data import templates
from dynamo_async.data.dedup import DedupReport, dedup_problems
from dynamo_async.data.layouts import FieldMap
from dynamo_async.data.problems import Problem, ReadOptions, iter_spec, load_spec, with_unique_ids
from dynamo_async.data.synthetic import train_eval_split
from dynamo_async.errors import UsageError


def read_options(cfg: DataConfig, train: bool) -> ReadOptions:
    """How ``cfg``'s files are read: the field mapping applies to the training data only."""
    fields = FieldMap(cfg.layout, cfg.problem_field, cfg.answer_field, cfg.id_field) if train else FieldMap()
    return ReadOptions(fields, cfg.strip_template)


def load_training_set(cfg: DataConfig) -> tuple[list[Problem], DedupReport | None]:
    """The training set named by ``data.train`` and, when deduplicated, what dedup did."""
    if cfg.train == "synthetic":
        return train_eval_split(cfg.synthetic)[0], None
    located = iter_spec(cfg.train, "data.train", read_options(cfg, train=True))
    if not cfg.dedup:
        return with_unique_ids(located), None
    kept, report = dedup_problems(located)
    if not kept:
        raise UsageError(
            f"data.train: got {cfg.train!r} with no usable prompt ({report.line()}), expected at "
            "least one problem with an answer"
        )
    hint = "two different problems share this id; name another id field with data.id_field"
    return with_unique_ids(kept, hint), report


def training_problems(cfg: DataConfig) -> list[Problem]:
    """The training set named by ``data.train`` (deduplicated unless ``data.dedup`` is false)."""
    return load_training_set(cfg)[0]


def eval_problems(cfg: DataConfig) -> dict[str, list[Problem]]:
    """Held-out sets by name: ``data.eval``, or the synthetic held-out split."""
    if not cfg.eval:
        if cfg.train != "synthetic":
            return {}
        return {"synthetic": train_eval_split(cfg.synthetic)[1]}
    opts = read_options(cfg, train=False)
    return {Path(spec).stem if Path(spec).exists() else spec: load_spec(spec, "data.eval", opts) for spec in cfg.eval}


def example_answer(answer: str, answer_format: str) -> str:
    """A worked example's assistant turn, in the form the reward reads."""
    return f"Answer: {answer}" if answer_format == "answer_line" else f"\\boxed{{{answer}}}"


def render_prompt(
    tokenizer,
    system_prompt: str,
    problem: str,
    max_tokens: int,
    few_shot: tuple = (),
    user_template: str = "{problem}",
    answer_format: str = "boxed",
) -> np.ndarray:
    """Chat-templated token ids of one problem (left-truncated to ``max_tokens``), after the
    system prompt and the worked examples (user: problem, assistant: its answer)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for example in few_shot:
        messages += [
            {"role": "user", "content": templates.apply(user_template, example.problem)},
            {"role": "assistant", "content": example_answer(example.answer, answer_format)},
        ]
    messages.append({"role": "user", "content": templates.apply(user_template, problem)})
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = np.asarray(tokenizer.encode(text, add_special_tokens=False), dtype=np.int32).reshape(-1)
    assert ids.size > 0, "chat template produced no tokens"
    return ids[-max_tokens:]


def prompt_ids(tokenizer, problem: str, cfg: RunConfig) -> np.ndarray:
    """``render_prompt`` with the run's data settings and answer format."""
    d = cfg.data
    return render_prompt(
        tokenizer, d.system_prompt, problem, d.max_prompt_tokens, d.few_shot, d.user_template, cfg.rewards.answer_format
    )


def pool_prompts(problems: list[Problem], tokenizer, cfg: RunConfig) -> list[PoolPrompt]:
    """Problems as buffer prompts with their token ids; their rows travel to the workers only when
    a user reward function reads them."""
    from dynamo_async.rewards.spec import spec_from_config

    rows = bool(spec_from_config(cfg).user_entries())
    return [
        PoolPrompt(
            p.id, p.problem, p.answer, prompt_ids(tokenizer, p.problem, cfg), p.source, p.fields if rows else b""
        )
        for p in problems
    ]
