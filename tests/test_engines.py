"""The engine interface: engines registered by name, waiting for a version, no import cycles."""

from __future__ import annotations

import ast
import threading
import time
import typing
from pathlib import Path

import pytest
import torch

from dynamo_async.config.schema import RolloutConfig
from dynamo_async.weights.group import collective_backend

ROOT = Path(__file__).resolve().parents[1]


def test_every_configurable_engine_is_registered():
    from workers.factory import ENGINES

    hint = typing.get_type_hints(RolloutConfig, include_extras=True)["engine"]
    literal = typing.get_args(hint)[0]
    assert set(ENGINES) == set(typing.get_args(literal)) == {"hf", "vllm"}


def test_one_place_chooses_nccl_or_gloo():
    assert collective_backend("cuda") == collective_backend("cuda:3") == "nccl"
    assert collective_backend("cpu") == "gloo"
    for path in ("dynamo_async/learner/loop.py", "dynamo_async/learner/distributed.py", "workers/hf_engine.py"):
        assert '"nccl" if' not in (ROOT / path).read_text(), path


def _hf_engine(source):
    from dynamo_async.config import load_config
    from dynamo_async.models import load_model, load_tokenizer
    from workers.hf_engine import HFEngine

    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["model.name=builtin:tiny"])
    model = load_model(cfg.model.name)
    return HFEngine(model, load_tokenizer(cfg.model.name), cfg, weight_source=source), model


def test_hf_engine_waits_for_the_weights_of_a_version():
    staged: list = []
    engine, model = _hf_engine(lambda: staged.pop() if staged else None)
    new = {n: torch.full_like(p, 0.5) for n, p in model.named_parameters()}
    threading.Timer(0.2, lambda: staged.append((3, new))).start()
    start = time.monotonic()
    engine.wait_for_weights(3, timeout_s=10)
    assert engine.policy_version == 3 and time.monotonic() - start >= 0.15
    assert all(torch.equal(p, new[n]) for n, p in model.named_parameters())
    with pytest.raises(RuntimeError, match="no weights of version 4 arrived"):
        engine.wait_for_weights(4, timeout_s=0.2)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_no_import_cycles_between_trainer_and_distributed_or_factory_and_vllm():
    assert "dynamo_async.learner.trainer" not in _imports(ROOT / "dynamo_async/learner/distributed.py")
    assert "workers.factory" not in _imports(ROOT / "workers/vllm_engine.py")
    assert "workers.factory" not in _imports(ROOT / "workers/hf_engine.py")


def test_the_weight_sync_runs_over_gloo_when_the_launcher_shares_one_gpu(monkeypatch):
    from dynamo_async.weights.group import SHARED_GPU_ENV, sync_backend

    monkeypatch.delenv(SHARED_GPU_ENV, raising=False)
    assert sync_backend("cuda:0") == "nccl" and sync_backend("cpu") == "gloo"
    monkeypatch.setenv(SHARED_GPU_ENV, "1")  # NCCL refuses two ranks of one group on one GPU
    assert sync_backend("cuda:0") == "gloo" and sync_backend("cpu") == "gloo"
