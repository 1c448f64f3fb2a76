"""The ``objective`` config section, built from the registry, and the rule that every setting is read.

``objective`` names the component of each stage (``advantage``, ``token_advantage``, ...) and
holds one sub-section per component that has settings (``objective.clip_cov.ratio``). A key a
user sets must be read by a component the run uses: ``check_read`` turns a setting of an unused
component into an error that names it, and ``unread_keys`` lets the resolved ``config.yaml``
leave such keys out (docs/design.md section 4.6).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from dynamo_async.config.section import Section
from dynamo_async.errors import UsageError
from dynamo_async.objective.registry import STAGES, Component, registered

_LISTS = ("token_advantage", "token_weights", "extra")
_STRUCTURE = {
    "advantage": ("grpo", "The sequence-advantage component (one per run)."),
    "token_advantage": (("modulation",), "Token-advantage components (shaping, modulation), applied in order."),
    "token_weights": (("truncated_is",), "Token weight and mask components (IS corrections, masks), multiplied."),
    "token_loss": ("clipped", "The per-token policy loss component (one per run)."),
    "extra": ((), "Terms added to the aggregated loss (e.g. entropy_bonus)."),
}
# Allocation settings only dynamic allocation reads (uniform allocation reads avg_rollouts).
DYNAMIC_ONLY = ("allocation.g_min", "allocation.g_max", "allocation.priority_power", "allocation.prior")


def _names(stage: str) -> str:
    return str(sorted(registered(stage)))


def _check_structure(self: Any) -> None:
    for stage in STAGES:
        value = getattr(self, stage)
        names = value if stage in _LISTS else (value,)
        for name in names:
            if name not in registered(stage):
                raise ValueError(f"objective.{stage}: got {name!r}, expected one of {_names(stage)}")
        if len(set(names)) != len(names):
            raise ValueError(f"objective.{stage}: got {list(names)}, expected each component at most once")


def _chosen(self: Any) -> tuple[str, ...]:
    """Names of the components this run uses, in stage order."""
    out: list[str] = []
    for stage in STAGES:
        value = getattr(self, stage)
        out.extend(value if stage in _LISTS else (value,))
    return tuple(out)


def _build() -> type[Section]:
    fields: list[tuple[str, Any, Any]] = []
    for stage, (default, doc) in _STRUCTURE.items():
        kind = tuple[str, ...] if stage in _LISTS else str
        fields.append((stage, Annotated[kind, Meta(description=f"{doc} One of {_names(stage)}.")], default))
    for name, cls in registered().items():
        if cls.settings_type is not None:
            summary = (cls.__doc__ or name).strip().splitlines()[0]
            fields.append((name, Annotated[cls.settings_type, Meta(description=summary)], cls.settings_type()))
    namespace = {"__post_init__": _check_structure, "chosen": _chosen, "__module__": __name__}
    return msgspec.defstruct("ObjectiveConfig", fields, bases=(Section,), namespace=namespace)


ObjectiveConfig = _build()


def _reads(cls: type[Component]) -> tuple[str, ...]:
    own = (f"objective.{cls.name}.*",) if cls.settings_type is not None else ()
    return own + cls.reads


def _matches(key: str, patterns: tuple[str, ...] | list[str]) -> bool:
    return any(key == p or (p.endswith(".*") and key.startswith(p[:-1])) for p in patterns)


def unread_keys(cfg: Any, keys: list[str]) -> dict[str, list[str]]:
    """Of ``keys``, those no component of ``cfg`` reads, each with the components that would."""
    chosen = set(cfg.objective.chosen())
    used = [p for n, c in registered().items() if n in chosen for p in _reads(c)]
    out: dict[str, list[str]] = {}
    for key in keys:
        readers = [f"{n} (objective.{c.stage})" for n, c in registered().items() if _matches(key, _reads(c))]
        if readers and not _matches(key, used):
            out[key] = readers
        elif key in DYNAMIC_ONLY and not cfg.allocation.dynamic:
            out[key] = ["allocation.dynamic=true"]
    return out


def check_read(cfg: Any, user_keys: list[str]) -> None:
    """A ``UsageError`` naming the first key the user set that this run would silently ignore."""
    for key, readers in unread_keys(cfg, user_keys).items():
        raise UsageError(
            f"config field {key}: got a value, but nothing this run uses reads it (method {cfg.method}, "
            f"objective components {list(cfg.objective.chosen())}); expected it removed, or one of "
            f"{readers} added (see `dynamo-async config --describe`)"
        )
