"""Component kinds of the objective and the registry they join by name (docs/design.md section 4.6).

The objective of one micro-batch runs these stages in order::

    advantage        one advantage per response, from its group's rewards (at batch assembly)
    token_advantage  per-token advantages: shaping and modulation, applied in the listed order
    token_weights    per-token weights and masks (IS corrections, clip-cov, fork tokens), multiplied
    token_loss       the per-token policy loss
    (aggregation)    loss.aggregation: token-mean / seq-mean-token-mean / seq-mean-token-sum-norm
    extra            scalar terms added to the aggregated loss (entropy bonus)

A component is a subclass of one stage's base class below with a unique ``name``; ``@register``
adds it. ``settings_type`` (a ``Section``) is its own config section ``objective.<name>``;
``reads`` lists the keys of shared sections it reads (``loss.eps_low``, ``modulation.*``); and
``needs()`` says which token statistics the trainer must compute for it. This module and the
component modules import without torch: they import the tensor formulas inside their methods.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

    from dynamo_async.objective.state import StepState

STAGES = ("advantage", "token_advantage", "token_weights", "token_loss", "extra")
# Token statistics a component can ask for beyond the log-probs (docs/design.md section 8);
# "mini_batch_stats": the proximal pass must cover the whole mini-batch and collect the
# component's ``mini_batch_stats`` (maxima over its valid tokens).
NEEDS = frozenset({"entropy", "vocab_sum", "entropy_grad", "mini_batch_stats"})


class Component:
    """One piece of the objective, built once from the run config."""

    name: ClassVar[str] = ""
    stage: ClassVar[str] = ""
    settings_type: ClassVar[type | None] = None
    reads: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: Any, cfg: Any) -> None:
        self.settings = settings  # this component's section (objective.<name>), or None
        self.cfg = cfg  # the RunConfig, for the shared sections it declares in ``reads``

    def needs(self) -> frozenset[str]:
        """Token statistics (of ``NEEDS``) this component reads from the state."""
        return frozenset()

    def zero_advantage_contributes(self) -> bool:
        """True when a sample whose advantage is exactly 0 still changes the update: through a
        gradient of its own (an entropy bonus, a KL penalty) or through statistics shared across
        the micro-batch (a quantile, a covariance, a normaliser). The learner leaves such samples
        out of the update only when no component says True (docs/design.md section 8)."""
        return False

    def mini_batch_stats(self, s: StepState) -> dict[str, float]:
        """With ``"mini_batch_stats"`` in ``needs()``: maxima over the valid tokens of one
        micro-batch of the proximal pass. The learner takes the max of each over the mini-batch
        (and the learner ranks) and hands them to the update as ``s.normalisers["<name>.<key>"]``."""
        return {}


class SequenceAdvantage(Component):
    stage = "advantage"

    def advantages(self, acc: torch.Tensor, group_ids: list[int], rewards: torch.Tensor | None = None) -> torch.Tensor:
        """One float advantage per response from its success ``acc`` (0/1), its group id and its
        training reward (``rewards``: the sum of the run's reward functions, docs/rewards.md;
        None: math-verify's reward of ``acc``, as ``advantage.reward`` says)."""
        raise NotImplementedError


class TokenAdvantage(Component):
    stage = "token_advantage"

    def apply(self, s: StepState) -> None:
        """Rewrite ``s.adv`` (``[B, T]``, detached) and add metrics."""
        raise NotImplementedError


class TokenWeights(Component):
    stage = "token_weights"

    def apply(self, s: StepState) -> None:
        """Multiply a detached weight or 0/1 mask into the state (``s.reweight``; ``s.in_band``
        counts what a band masks)."""
        raise NotImplementedError


class TokenLoss(Component):
    stage = "token_loss"

    def per_token(self, s: StepState) -> torch.Tensor:
        """Per-token loss ``[B, T]`` (with gradient) before the weights and the aggregation."""
        raise NotImplementedError


class ExtraTerm(Component):
    stage = "extra"

    def term(self, s: StepState) -> torch.Tensor:
        """A scalar added to the aggregated loss."""
        raise NotImplementedError


_REGISTRY: dict[str, type[Component]] = {}


def register(cls: type[Component]) -> type[Component]:
    """Class decorator: add a component under its ``name`` (names are unique across stages)."""
    assert cls.stage in STAGES and cls.name, f"{cls.__name__}: expected a stage base class and a name"
    other = _REGISTRY.get(cls.name)
    if other is not None and other.__qualname__ != cls.__qualname__:
        raise ValueError(f"component name {cls.name!r}: got a second component {cls.__qualname__}, expected unique")
    _REGISTRY[cls.name] = cls
    return cls


@functools.cache
def discover() -> None:
    """Import every module of ``dynamo_async.objective.components`` (each registers itself), once."""
    from dynamo_async.objective import components

    for info in pkgutil.iter_modules(components.__path__):
        importlib.import_module(f"{components.__name__}.{info.name}")


def registered(stage: str | None = None) -> dict[str, type[Component]]:
    """The registered components (of one stage), by name."""
    discover()
    return {n: c for n, c in sorted(_REGISTRY.items()) if stage is None or c.stage == stage}


def component(name: str) -> type[Component]:
    """The component registered under ``name``."""
    found = registered().get(name)
    if found is None:
        raise ValueError(f"objective component: got {name!r}, expected one of {sorted(registered())}")
    return found
