"""Where builtin models live on disk, and how they get there safely.

Builtins (``builtin:tiny``, ``builtin:smollm2-135m-instruct``) are built once on first use
into ``cache_dir()``. Several processes (rollout workers, the learner) may start at the same
moment and all find the cache empty, so a build never writes into its target directly:

    build(tmp)  ->  rename(tmp, target)      (atomic on one file system)
                    target already there?  ->  discard tmp, use target

A directory that exists under its final name is therefore always complete.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

CACHE_ENV = "DYNAMO_ASYNC_CACHE"


def cache_dir() -> Path:
    """``$DYNAMO_ASYNC_CACHE`` if set, else ``~/.cache/dynamo-async`` (not created here)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "dynamo-async"


def build_once(target: Path, build: Callable[[Path], object]) -> Path:
    """Return ``target``, first running ``build(tmp)`` and renaming ``tmp`` to it if missing.

    ``build`` writes a complete directory into the (existing, empty) ``tmp`` it is given.
    ``tmp`` sits next to ``target`` so the rename stays on one file system. If another
    process renamed its own build into place meanwhile, ours is discarded.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        build(tmp)
        _publish(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    assert target.is_dir(), f"build of {target} left no directory"
    return target


def _publish(tmp: Path, target: Path) -> None:
    """Atomically rename ``tmp`` to ``target``; losing the race to another builder is fine."""
    try:
        os.rename(tmp, target)
    except OSError as err:
        lost_race = err.errno in (errno.EEXIST, errno.ENOTEMPTY) and target.is_dir()
        if not lost_race:
            raise
