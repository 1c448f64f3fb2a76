"""Which reward functions score a response, and how their values combine (docs/rewards.md).

A run's ``rewards`` section names reward functions: ``math_verify`` (the built-in) or user code
as ``module:function`` or ``path/to/file.py:function``. For a response to a row of data source
``s`` the entries are ``rewards.by_source[s]`` if listed, else ``rewards.functions``, and

    reward  = sum_f  w_f * r_f                       (w_f: rewards.weights, default 1)
    success = all(acc_f for f reporting acc)         (rewards.success: acc)
            = reward >= rewards.success_threshold     (rewards.success: reward)

where ``math_verify`` gives ``r = 2 acc - 1`` (``advantage.reward: pm1``) or ``r = acc`` and
always reports ``acc``; a user function reports ``acc`` when it returns
``{"reward": r, "acc": 0 or 1}``. ``success`` is what the per-prompt Bernoulli statistics,
held-out accuracy and W-REINFORCE count; ``reward`` is what GRPO's group baseline sees.

``RewardSpec`` carries this to the scorer processes as a msgspec struct (nothing is pickled).
This module imports no user code: ``check_entries`` checks an entry's form when the config is
parsed, ``resolve`` imports it (in the process that calls it).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import msgspec

from dynamo_async.errors import UsageError

BUILTIN = "math_verify"
_ENTRY = re.compile(r"^(?P<where>[^:]+):(?P<name>[A-Za-z_][A-Za-z0-9_]*)$")


class RewardSpec(msgspec.Struct, frozen=True):
    """The ``rewards`` settings the scorer processes need, plus math-verify's reward mode."""

    functions: tuple[str, ...] = (BUILTIN,)
    by_source: dict[str, tuple[str, ...]] = {}
    weights: dict[str, float] = {}
    success: Literal["acc", "reward"] = "acc"
    success_threshold: float = 0.5
    correctness: Literal["pm1", "acc"] = "acc"

    def entries(self, source: str) -> tuple[str, ...]:
        """The functions that score a response to a row of ``source``."""
        return self.by_source.get(source, self.functions)

    def weight(self, entry: str) -> float:
        return self.weights.get(entry, 1.0)

    def failure_reward(self, source: str) -> float:
        """The reward of a response that could not be scored at all (a killed scorer): math-verify's
        reward for a wrong answer, 0 from every other function."""
        wrong = -1.0 if self.correctness == "pm1" else 0.0
        return sum(self.weight(e) * wrong for e in self.entries(source) if e == BUILTIN)

    def user_entries(self) -> list[str]:
        """Every user function entry, each once, in order of appearance."""
        seen = dict.fromkeys(e for group in (self.functions, *self.by_source.values()) for e in group)
        return [e for e in seen if e != BUILTIN]


def spec_from_config(cfg) -> RewardSpec:
    """The RewardSpec of a ``RunConfig``."""
    r = cfg.rewards
    return RewardSpec(
        functions=tuple(r.functions),
        by_source={k: tuple(v) for k, v in r.by_source.items()},
        weights=dict(r.weights),
        success=r.success,
        success_threshold=r.success_threshold,
        correctness=cfg.advantage.reward,
    )


def check_entries(where: str, entries: tuple[str, ...]) -> None:
    """Each entry is ``math_verify`` or ``X:function``; raises ValueError naming the bad one."""
    if not entries:
        raise ValueError(f"{where}: got no reward functions, expected at least one (e.g. [{BUILTIN}])")
    for entry in entries:
        if entry != BUILTIN and not _ENTRY.match(entry):
            raise ValueError(
                f"{where}: got {entry!r}, expected {BUILTIN!r}, 'module:function' or 'path/to/file.py:function'"
            )
    if len(set(entries)) != len(entries):
        raise ValueError(f"{where}: got {list(entries)}, expected each function once (weigh it with rewards.weights)")


def resolve(entry: str) -> Callable[..., Any]:
    """Import a user entry's function; a missing module, file or name is a UsageError."""
    match = _ENTRY.match(entry)
    assert match is not None, entry  # check_entries ran when the config was parsed
    where, name = match["where"], match["name"]
    module = _load_file(entry, where) if where.endswith(".py") else _import(entry, where)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UsageError(
            f"reward function {entry!r}: got no callable {name!r} in {module.__name__}, "
            "expected a function fn(problem=, response=, answer=, fields=)"
        )
    return fn


def _import(entry: str, module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is None or not module_name.startswith(e.name):
            raise  # the module exists but imports something missing: its own traceback says what
        raise UsageError(
            f"reward function {entry!r}: got no module {module_name!r} on the path, expected an importable "
            "module (set PYTHONPATH on every node, or name a file: path/to/file.py:function)"
        ) from None


def _load_file(entry: str, path_text: str):
    path = Path(path_text).resolve()
    if not path.is_file():
        raise UsageError(
            f"reward function {entry!r}: got no file {path} (from {Path.cwd()}), expected a Python file; "
            "relative paths are read from each process's working directory, on every node"
        )
    name = f"dynamo_async_reward_{abs(hash(str(path)))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
