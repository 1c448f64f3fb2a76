"""Model and tokenizer loading: Hugging Face names, local paths and builtins (docs/design.md section 10).

``load_model``/``load_tokenizer`` accept what ``ModelConfig.name`` accepts; builtins
(``builtin:tiny``, ``builtin:smollm2-135m-instruct``) are built once into ``cache_dir()``
and then loaded like any local checkpoint. Importing this package imports torch and
transformers, so entry points should import it after parsing their config.
"""

from dynamo_async.models.cache import build_once, cache_dir
from dynamo_async.models.loader import BUILTINS, load_model, load_tokenizer, resolve_model
from dynamo_async.models.smollm2 import build_smollm2, find_gguf, load_from_gguf
from dynamo_async.models.tiny import build_tiny

__all__ = [
    "BUILTINS",
    "build_once",
    "build_smollm2",
    "build_tiny",
    "cache_dir",
    "find_gguf",
    "load_from_gguf",
    "load_model",
    "load_tokenizer",
    "resolve_model",
]
