"""Training prompts: sources, chat rendering with the system prompt, left truncation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from dynamo_async.config import load_config
from dynamo_async.data.prompts import eval_problems, pool_prompts, render_prompt, training_problems
from dynamo_async.models import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
AIME24 = ROOT.parent / "shared" / "data" / "aime24.jsonl"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("builtin:tiny")


def test_synthetic_prompts_carry_system_prompt_problem_and_answer(tokenizer):
    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    problems = training_problems(cfg.data)
    prompts = pool_prompts(problems, tokenizer, cfg)
    assert len(prompts) == cfg.data.synthetic.num_train
    first = prompts[0]
    text = tokenizer.decode(first.token_ids.tolist())
    assert cfg.data.system_prompt in text and problems[0].problem in text
    assert first.answer == problems[0].answer and first.prompt_id == problems[0].id
    assert text.rstrip().endswith("assistant")  # generation prompt appended
    assert set(eval_problems(cfg.data)) == {"synthetic"}


def test_long_prompts_are_left_truncated(tokenizer):
    full = render_prompt(tokenizer, "sys", "x" * 200, max_tokens=10_000)
    cut = render_prompt(tokenizer, "sys", "x" * 200, max_tokens=16)
    assert len(cut) == 16 and (cut == full[-16:]).all()


@pytest.mark.skipif(not AIME24.exists(), reason="needs ../shared/data")
def test_jsonl_training_file_is_loaded(tokenizer):
    cfg = load_config(None, ["model.name=builtin:tiny", f"data.train={AIME24}", "data.max_prompt_tokens=64"])
    prompts = pool_prompts(training_problems(cfg.data), tokenizer, cfg)
    assert len(prompts) == 30 and prompts[0].answer == "204" and len(prompts[0].token_ids) == 64
    assert eval_problems(cfg.data) == {}


def test_missing_file_and_hub_name_without_datasets_are_clear_errors():
    cfg = load_config(None, ["model.name=x", "data.train=no/such/file.jsonl"])
    with pytest.raises(ValueError, match="expected an existing file"):
        training_problems(cfg.data)
    if importlib.util.find_spec("datasets") is None:
        cfg = load_config(None, ["model.name=x", "data.train=someone/some-dataset"])
        with pytest.raises(ValueError, match="pip install datasets"):
            training_problems(cfg.data)
