"""A run directory as arrays per learner step, for the figures of ``dynamo-async plot``.

From ``metrics.jsonl``: the learner's rows (one per step; after a resume the last row of a
step wins) and its held-out evaluations (rows with ``"eval": true``). From the Arrow store
(``buffer/store.py``): rollouts per prompt of every group the learner trained on (table
``batches``) and the staleness of every group and the dropped groups (table ``steps``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from buffer.store import read_table, store_dir
from dynamo_async.errors import UsageError


@dataclass(frozen=True)
class RunData:
    run_dir: Path
    steps: list[dict]  # learner rows, ordered by step
    evals: list[dict]  # held-out evaluation rows, in order
    config: dict  # the resolved config (RUN_DIR/config.yaml), {} if absent
    group_sizes: dict[int, np.ndarray] | None = None  # step -> rollouts per prompt (store)
    staleness: dict[int, np.ndarray] | None = None  # step -> staleness per group (store)
    dropped: dict[int, tuple[int, int]] | None = None  # step -> (stale, zero-variance) groups (store)
    # step -> [groups, 2]: each group's prompt's success rate over its earlier trained groups
    # (NaN: first time), and the group's rollouts (store)
    allocation_points: dict[int, np.ndarray] | None = None

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of a numeric metric; steps without it are left out."""
        pairs = [(r["step"], r[key]) for r in self.steps if isinstance(r.get(key), (int, float))]
        if not pairs:
            return np.zeros(0), np.zeros(0)
        x, y = zip(*pairs)
        return np.asarray(x, dtype=float), np.asarray(y, dtype=float)

    def has(self, key: str) -> bool:
        return any(key in r for r in self.steps)


def load_run(run_dir: Path) -> RunData:
    """Read what ``dynamo-async plot`` needs; a directory without metrics is an error."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise UsageError(
            f"got RUN_DIR {str(run_dir)!r} without metrics.jsonl, expected the directory of a run "
            "(the --run-dir given to dynamo-async run or learner)"
        )
    by_step: dict[int, dict] = {}
    evals = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue  # the learner died while writing its last line
            raise UsageError(f"{path}, line {number}: got invalid JSON, expected one object per line") from None
        if row.get("eval"):
            evals.append(row)
        elif "step" in row:
            by_step[int(row["step"])] = row
    if not by_step:
        raise UsageError(f"{path}: got no learner steps, expected at least one (has the run trained a step?)")
    steps = [by_step[s] for s in sorted(by_step)]
    store = _store_arrays(run_dir) if store_dir(run_dir).is_dir() else {}
    return RunData(run_dir, steps, evals, _config(run_dir), **store)


def _config(run_dir: Path) -> dict:
    import yaml

    path = run_dir / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _store_arrays(run_dir: Path) -> dict:
    """Per learner step: group sizes, staleness, dropped groups. Each learner batch wrote
    ``num_samples`` rows to ``batches`` (column ``step``) and then one row to ``steps``. A step
    written again after a resume replaces the earlier write: its rows are the last
    ``num_samples`` rows of that step (rows left by a crash before the steps row are ignored
    the same way). The store numbers steps as ``metrics.jsonl`` does, from 1."""
    steps = read_table(
        run_dir, "steps", ["step", "num_samples", "staleness", "dropped_stale", "dropped_zero_variance"]
    ).to_pydict()
    table = read_table(run_dir, "batches", ["step", "group_id", "prompt_id", "acc"])
    step_col, groups = table.column("step").to_numpy(), table.column("group_id").to_numpy()
    prompts, accs = table.column("prompt_id").to_pylist(), table.column("acc").to_numpy()
    last = {int(step): i for i, step in enumerate(steps["step"])}  # the final write of each step
    sizes, staleness, dropped, points = {}, {}, {}, {}
    seen: dict[str, list[int]] = {}  # prompt -> [successes, attempts] over earlier trained groups
    for step, i in sorted(last.items()):
        rows = np.flatnonzero(step_col == step)
        rows = rows[max(0, len(rows) - int(steps["num_samples"][i])) :]
        ids, first, per_group = np.unique(groups[rows], return_index=True, return_counts=True)
        sizes[step] = per_group
        staleness[step] = np.asarray(steps["staleness"][i], dtype=float)
        dropped[step] = (int(steps["dropped_stale"][i]), int(steps["dropped_zero_variance"][i]))
        points[step] = _allocation_points(rows, ids, first, per_group, groups, prompts, accs, seen)
    return {"group_sizes": sizes, "staleness": staleness, "dropped": dropped, "allocation_points": points}


def _allocation_points(rows, ids, first, sizes, groups, prompts, accs, seen) -> np.ndarray:
    """(earlier success rate of the group's prompt, its rollouts) per group; updates ``seen``."""
    out = np.empty((len(ids), 2))
    for k, (g, f, n) in enumerate(zip(ids, first, sizes)):
        prompt = prompts[rows[f]]
        wins, tries = seen.get(prompt, (0, 0))
        out[k] = (wins / tries if tries else np.nan, n)
        won = int(accs[rows[groups[rows] == g]].sum())
        seen[prompt] = [wins + won, tries + int(n)]
    return out
