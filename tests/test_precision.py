"""Mixed precision at the presets' values: bf16 compute, float32 masters, lr 1e-6.

An AdamW step of about 1e-6 is below half a bf16 ulp for weights of normal size, so the
learner must keep float32 masters: checked here by the fraction of weight elements a step
moves, against the float32 run's (and against pure bf16, which loses them), and by exact
checkpoint round trips of the masters and the optimizer state.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from sample_records import sample_record

from buffer.batch import LearnerBatch, ReadyGroup
from dynamo_async.config import load_config
from dynamo_async.learner import checkpoint
from dynamo_async.learner.optim import make_optimizer
from dynamo_async.learner.trainer import Trainer

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def _config(dtype: str, *extra: str):
    # The presets' optimizer (lr 1e-6, weight decay 0.1) on the tiny model; no warm-up so that
    # the first steps run at the full rate; small micro-batches so gradients accumulate.
    return load_config(
        TINY,
        [
            f"model.compute_dtype={dtype}",
            "optim.lr=1e-6",
            "optim.weight_decay=0.1",
            "optim.warmup_steps=0",
            "optim.micro_batch_tokens=160",
            *extra,
        ],
    )


def _batch(vocab: int, step: int = 0) -> LearnerBatch:
    rng = np.random.default_rng(11)
    groups = []
    for g in range(4):
        prompt = rng.integers(5, vocab, 16).astype(np.int32)
        samples = tuple(
            sample_record(
                g,
                f"p{g}",
                i,
                rng.integers(5, vocab, 6 + i).astype(np.int32),
                (-0.5 - rng.random(6 + i)).astype(np.float32),
                np.zeros(6 + i, np.int32),
                acc=(i + g) % 2,
                reward=float(2 * ((i + g) % 2) - 1),
                finish_reason="stop",
                worker_id="w",
            )
            for i in range(4)
        )
        groups.append(ReadyGroup(g, f"p{g}", prompt, "1", samples))
    return LearnerBatch(step=step, policy_version=step, groups=tuple(groups), staleness=(0,) * 4)


def _trained(trainer: Trainer, steps: int) -> tuple[dict, dict]:
    before = {n: t.detach().float().clone() for n, t in trainer.masters.named.items()}
    for s in range(steps):
        trainer.train_on(_batch(trainer.model.config.vocab_size, s))
    return before, {n: t.detach().float().clone() for n, t in trainer.masters.named.items()}


def _moved(before: dict, after: dict) -> float:
    changed = sum(int((before[n] != after[n]).sum()) for n in before)
    return changed / sum(t.numel() for t in before.values())


def test_bf16_compute_keeps_float32_masters_that_move_like_the_float32_run():
    torch.manual_seed(0)
    fp32 = Trainer(_config("float32"), "cpu")
    torch.manual_seed(0)
    bf16 = Trainer(_config("bfloat16"), "cpu")
    assert all(p.dtype == torch.bfloat16 for p in bf16.model.parameters())
    assert all(t.dtype == torch.float32 for t in bf16.masters.named.values())
    assert all(p.dtype == torch.float32 for g in bf16.opt.param_groups for p in g["params"])
    b0, a32 = _trained(fp32, 3)
    b1, a16 = _trained(bf16, 3)
    assert all(torch.equal(b0[n], b1[n]) for n in b0), "both runs start from the same weights"
    moved32, moved16 = _moved(b0, a32), _moved(b1, a16)
    assert moved32 > 0.9, moved32
    assert moved16 / moved32 >= 0.9, (moved16, moved32)
    # The update points the same way as the float32 one (first steps of Adam: about lr per element).
    d32 = torch.cat([(a32[n] - b0[n]).flatten() for n in b0])
    d16 = torch.cat([(a16[n] - b1[n]).flatten() for n in b1])
    assert torch.nn.functional.cosine_similarity(d32, d16, dim=0) > 0.9
    # The compute copy is the masters rounded to bf16, after every step.
    for name, p in bf16.model.named_parameters():
        assert torch.equal(p.detach(), bf16.masters.named[name].detach().to(torch.bfloat16)), name
    # Workers get the compute copy: bf16, half of float32's bytes.
    assert all(t.dtype == torch.bfloat16 for t in bf16.named_weights().values())


def test_pure_bf16_weights_lose_the_updates_the_masters_keep():
    """The failure this guards against: parameters and AdamW state in bf16 (the learner before
    float32 masters) move almost no element at lr 1e-6."""
    torch.manual_seed(0)
    pure = Trainer(_config("float32"), "cpu")
    pure.model.to(torch.bfloat16)  # the optimizer's tensors are these parameters, now bf16
    pure.opt, pure.sched = make_optimizer(pure.masters.parameters(), pure.cfg.optim)
    before, after = _trained(pure, 3)
    assert _moved(before, after) < 0.1


def test_checkpoint_round_trips_the_float32_masters_and_optimizer_exactly(tmp_path):
    torch.manual_seed(0)
    trainer = Trainer(_config("bfloat16"), "cpu")
    _trained(trainer, 2)
    trainer.step, trainer.version = 2, 2
    ckpt = checkpoint.save_checkpoint(tmp_path, trainer)
    saved = load_file(str(ckpt / "model" / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in saved.values())
    resumed = Trainer(_config("bfloat16"), "cpu", checkpoint_dir=ckpt)
    assert (resumed.step, resumed.version) == (2, 2)
    for name, master in trainer.masters.named.items():
        assert torch.equal(resumed.masters.named[name], master), name
        st, rt = trainer.opt.state[master], resumed.opt.state[resumed.masters.named[name]]
        assert torch.equal(st["exp_avg"], rt["exp_avg"]) and torch.equal(st["exp_avg_sq"], rt["exp_avg_sq"])
        assert float(st["step"]) == float(rt["step"])
    for name, p in resumed.model.named_parameters():
        assert p.dtype == torch.bfloat16 and torch.equal(p, trainer.model.get_parameter(name)), name
    # The next step continues exactly as the uninterrupted run's.
    _, cont = _trained(trainer, 1)
    _, again = _trained(resumed, 1)
    assert all(torch.equal(cont[n], again[n]) for n in cont)


def test_checkpoint_model_loads_in_transformers_as_float32(tmp_path):
    from transformers import AutoModelForCausalLM

    trainer = Trainer(_config("bfloat16"), "cpu")
    ckpt = checkpoint.save_checkpoint(tmp_path, trainer)
    loaded = AutoModelForCausalLM.from_pretrained(ckpt / "model")
    assert loaded.dtype == torch.float32
    for name, p in loaded.named_parameters():
        if name in trainer.masters.named:
            assert torch.equal(p, trainer.masters.named[name]), name


def test_resume_from_a_checkpoint_with_bf16_optimizer_moments(tmp_path):
    """A run checkpointed before DCP shards and float32 masters kept one file of bf16 AdamW moments:
    it still resumes, casting them."""
    from safetensors.torch import save_file

    trainer = Trainer(_config("bfloat16"), "cpu")
    _trained(trainer, 1)
    ckpt = checkpoint.save_checkpoint(tmp_path, trainer)
    # the layout before DCP shards: one optimizer.safetensors of full moments, here in bf16
    moments = {k[2:]: v.to(torch.bfloat16) for k, v in trainer.full_state().items() if k.startswith("m/")}
    shutil.rmtree(ckpt / "state")
    save_file(moments, str(ckpt / "optimizer.safetensors"))
    resumed = Trainer(_config("bfloat16"), "cpu", checkpoint_dir=ckpt)
    assert all(s["exp_avg"].dtype == torch.float32 for s in resumed.opt.state.values())
    before, after = _trained(resumed, 1)
    assert _moved(before, after) > 0.9
