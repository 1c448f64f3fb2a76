"""A seeded synthetic arithmetic task with difficulty levels 1..5 (docs/design.md section 10, "Data").

The embedded default trains on it so that accuracy visibly rises within minutes on a CPU.
Levels: 1 = single-digit ``a + b``; 2 = two-digit addition or subtraction; 3 = single-digit
``a * b`` or ``a + b + c``; 4 = two-digit times one-digit, or ``(a + b) * c``; 5 = multi-step
expressions with two-digit operands (``a * b - c * d`` and similar). Answers are exact
integers written as strings (negatives allowed); the text reads "What is 7 + 5?".
Generation is deterministic for a seed (``random.Random``); levels are mixed round-robin.
Texts do not repeat while a level has unused ones; level 1 has only 100 distinct problems, so
larger sets repeat some (never one of the held-out texts).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from dynamo_async.config.schema import SyntheticConfig
from dynamo_async.data.problems import Problem
from dynamo_async.errors import UsageError

LEVELS = (1, 2, 3, 4, 5)
SOURCE = "synthetic"
_MAX_TRIES = 64  # draws per problem to find a text not used yet


Drawn = tuple[str, int]  # (expression text, its exact value)


def _level1(rng: random.Random) -> Drawn:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return f"{a} + {b}", a + b


def _level2(rng: random.Random) -> Drawn:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if rng.random() < 0.5:
        return f"{a} + {b}", a + b
    return f"{a} - {b}", a - b


def _level3(rng: random.Random) -> Drawn:
    if rng.random() < 0.5:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        return f"{a} * {b}", a * b
    a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
    return f"{a} + {b} + {c}", a + b + c


def _level4(rng: random.Random) -> Drawn:
    if rng.random() < 0.5:
        a, b = rng.randint(10, 99), rng.randint(2, 9)
        return f"{a} * {b}", a * b
    a, b, c = rng.randint(2, 30), rng.randint(2, 30), rng.randint(2, 9)
    return f"({a} + {b}) * {c}", (a + b) * c


def _level5(rng: random.Random) -> Drawn:
    a, b, c, d = (rng.randint(10, 99) for _ in range(4))
    form = rng.randrange(4)
    if form == 0:
        return f"{a} * {b} - {c} * {d}", a * b - c * d
    if form == 1:
        return f"{a} * {b} + {c} * {d}", a * b + c * d
    if form == 2:
        return f"({a} - {b}) * ({c} + {d})", (a - b) * (c + d)
    return f"{a} * ({b} + {c}) - {d}", a * (b + c) - d


_DRAW: dict[int, Callable[[random.Random], Drawn]] = {1: _level1, 2: _level2, 3: _level3, 4: _level4, 5: _level5}


def generate(n: int, levels: Sequence[int], seed: int) -> list[Problem]:
    """``n`` problems from ``levels`` (mixed round-robin), deterministic for ``seed``."""
    return _generate(n, levels, random.Random(seed), prefix="syn", exclude=frozenset())


def train_eval_split(cfg: SyntheticConfig) -> tuple[list[Problem], list[Problem]]:
    """``cfg.num_train`` training and ``cfg.num_eval`` held-out problems with disjoint texts.

    The held-out set is drawn first from its own stream, so it does not change with num_train.
    """
    eval_set = _generate(
        cfg.num_eval, cfg.levels, random.Random(f"{cfg.seed}-eval"), prefix="syn-eval", exclude=frozenset()
    )
    held_out = frozenset(p.problem for p in eval_set)
    train = _generate(cfg.num_train, cfg.levels, random.Random(f"{cfg.seed}-train"), prefix="syn", exclude=held_out)
    return train, eval_set


def _generate(n: int, levels: Sequence[int], rng: random.Random, prefix: str, exclude: frozenset[str]) -> list[Problem]:
    _check(n, levels)
    used: set[str] = set()
    problems = []
    for i in range(n):
        level = levels[i % len(levels)]
        text, value = _draw_new(level, rng, used, exclude)
        used.add(text)
        problems.append(
            Problem(id=f"{prefix}-L{level}-{i:06d}", problem=text, answer=str(value), source=SOURCE, level=level)
        )
    return problems


def _draw_new(level: int, rng: random.Random, used: set[str], exclude: frozenset[str]) -> Drawn:
    """(problem text, answer) not excluded and, while the level allows, not used yet."""
    fallback: Drawn | None = None
    for _ in range(_MAX_TRIES):
        expression, value = _DRAW[level](rng)
        text = f"What is {expression}?"
        if text in exclude:
            continue
        if text not in used:
            return text, value
        fallback = fallback or (text, value)
    if fallback is None:
        raise UsageError(
            f"synthetic level {level}: got no problem outside the held-out set in "
            f"{_MAX_TRIES} draws, expected fewer held-out problems for this level"
        )
    return fallback  # the level's distinct problems are used up: repeat one


def _check(n: int, levels: Sequence[int]) -> None:
    if n < 0:
        raise UsageError(f"number of problems: got {n}, expected >= 0")
    if not levels:
        raise UsageError("levels: got an empty sequence, expected at least one of 1..5")
    for level in levels:
        if level not in _DRAW:
            raise UsageError(f"level: got {level!r}, expected one of {LEVELS}")
