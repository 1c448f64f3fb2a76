"""Checks of a run's Arrow store that several end-to-end tests share."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from buffer.store import read_table


def assert_groups_complete(run_dir: Path) -> None:
    """Every trained group holds each of its sample indices exactly once (nothing lost or
    counted twice)."""
    batches = read_table(run_dir, "batches").to_pydict()
    per_group = Counter(zip(batches["group_id"], batches["sample_index"]))
    assert per_group and max(per_group.values()) == 1
    indices: dict[int, list[int]] = {}
    for g, i in per_group:
        indices.setdefault(g, []).append(i)
    assert all(sorted(v) == list(range(len(v))) for v in indices.values())
