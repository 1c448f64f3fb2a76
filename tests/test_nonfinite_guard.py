"""The learner's last guard (docs/design.md section 8): an optimizer step whose loss or gradient norm
is not finite is skipped, leaving the float32 masters and AdamW's state bitwise as they were, and is
counted (``nonfinite_skipped``) and named on stderr; the step and version still advance."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import msgspec
import pytest
import torch
from objective_reference import fixed_batch

from dynamo_async.config import load_config
from dynamo_async.learner.optim import clip_and_step, finite_on_every_rank

TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"


def _trainer(*overrides: str):
    from dynamo_async.learner.trainer import Trainer

    cfg = load_config(
        TINY, ["model.name=builtin:tiny", "method=grpo", "optim.mini_batch_prompts=4", "optim.lr=1e-3", *overrides]
    )
    torch.manual_seed(0)
    return Trainer(cfg, "cpu")


def _poisoned(batch, value: float = math.nan):
    """``batch`` with one behaviour log-prob set to ``value``, as a worker could have sent it had the
    buffer not checked it (buffer/validate.py)."""
    first = batch.groups[0]
    sample = first.samples[0]
    logprobs = sample.logprob_array.copy()
    logprobs[1] = value
    bad = dataclasses.replace(
        first, samples=(msgspec.structs.replace(sample, logprobs=logprobs.tobytes()), *first.samples[1:])
    )
    return dataclasses.replace(batch, groups=(bad, *batch.groups[1:]))


def _state(trainer) -> dict[str, torch.Tensor]:
    """Masters, AdamW moments and AdamW's step counts, copied."""
    out = {k: v.clone() for k, v in trainer.full_state().items()}
    for i, p in enumerate(trainer.masters.parameters()):
        out[f"step/{i}"] = trainer.opt.state[p]["step"].clone()
    return out


def _differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names whose tensors differ in any bit."""
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k].reshape(-1).view(torch.uint8), b[k].reshape(-1).view(torch.uint8))]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_nonfinite_step_leaves_weights_and_moments_untouched(dtype, capsys):
    from dynamo_async.learner.step import learner_step

    trainer = _trainer(f"model.compute_dtype={dtype}")
    batch = fixed_batch(trainer.model.config.vocab_size)
    first = learner_step(trainer, batch, False).metrics  # a normal step: AdamW has moments now
    assert first["nonfinite_skipped"] == 0 and math.isfinite(first["loss"])
    before = _state(trainer)
    compute_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}

    skipped = learner_step(trainer, _poisoned(batch), False).metrics
    assert skipped["nonfinite_skipped"] == 1
    assert not math.isfinite(skipped["loss"]) or not math.isfinite(skipped["grad_norm"])
    assert _differing(before, _state(trainer)) == [], "a skipped step changed masters or AdamW state"
    for n, p in trainer.model.named_parameters():  # the copy the workers receive, too
        assert torch.equal(p.detach(), compute_before[n]), n
    assert all(p.grad is None for p in trainer.masters.parameters()), "the bad gradients were kept"
    assert (trainer.step, trainer.version) == (2, 2), "the step and the version advance as always"
    err = capsys.readouterr().err
    assert "learner step 2: skipped the update" in err and err.count("skipped the update") == 1

    after = learner_step(trainer, batch, False).metrics  # the next good step trains again
    assert after["nonfinite_skipped"] == 0 and math.isfinite(after["loss"])
    changed = _differing(before, _state(trainer))
    assert any(k.startswith("w/") for k in changed) and any(k.startswith("m/") for k in changed)


class _InfiniteLoss:
    """The run's objective with +inf added to its loss: the gradient stays finite, only the loss is not."""

    def __init__(self, objective):
        self.objective = objective

    def __getattr__(self, name: str):
        return getattr(self.objective, name)

    def __call__(self, *args):
        loss, metrics = self.objective(*args)
        return loss + math.inf, metrics


def test_nonfinite_loss_with_a_finite_gradient_is_skipped(monkeypatch):
    trainer = _trainer()
    batch = fixed_batch(trainer.model.config.vocab_size)
    trainer.train_on(batch)
    before = _state(trainer)
    monkeypatch.setattr(trainer, "objective", _InfiniteLoss(trainer.objective))
    metrics = trainer.train_on(batch)
    assert metrics["nonfinite_skipped"] == 1 and math.isfinite(metrics["grad_norm"])
    assert _differing(before, _state(trainer)) == []


def _param_with_grad(grad: list[float]) -> tuple[torch.nn.Parameter, torch.optim.Optimizer]:
    p = torch.nn.Parameter(torch.ones(len(grad)))
    p.grad = torch.tensor(grad)
    return p, torch.optim.AdamW([p], lr=0.1)


@pytest.mark.parametrize("grad", [[1.0, math.nan], [math.inf, 0.0], [-math.inf, 1.0]])
def test_clip_and_step_skips_a_nonfinite_gradient(grad):
    p, opt = _param_with_grad(grad)
    norm, stepped = clip_and_step([p], opt, max_norm=1.0)
    assert not stepped and not math.isfinite(norm)
    assert torch.equal(p.detach(), torch.ones(2)) and p.grad is None and not opt.state


def test_clip_and_step_skips_on_a_nonfinite_loss_flag():
    p, opt = _param_with_grad([0.5, 0.5])
    norm, stepped = clip_and_step([p], opt, max_norm=1.0, loss_finite=False)
    assert not stepped and norm == pytest.approx(math.sqrt(0.5))
    assert torch.equal(p.detach(), torch.ones(2)) and p.grad is None and not opt.state
    p.grad = torch.tensor([0.5, 0.5])
    assert clip_and_step([p], opt, max_norm=1.0) == (pytest.approx(math.sqrt(0.5)), True)
    assert not torch.equal(p.detach(), torch.ones(2))


def test_finite_on_one_rank():
    assert finite_on_every_rank(1.5, sharded=False)
    assert not any(finite_on_every_rank(v, sharded=False) for v in (math.nan, math.inf, -math.inf))
