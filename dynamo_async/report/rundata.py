"""A run directory as arrays per learner step, for the figures of ``dynamo-async plot``.

From ``metrics.jsonl``: the learner's rows (one per step; after a resume the last row of a
step wins) and its held-out evaluations (rows with ``"eval": true``). From the Arrow store
(``buffer/store.py``): rollouts per prompt of every group the learner trained on (table
``batches``) and the staleness of every sample and the dropped groups (table ``steps``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from buffer.store import read_table, store_dir


@dataclass(frozen=True)
class RunData:
    run_dir: Path
    steps: list[dict]            # learner rows, ordered by step
    evals: list[dict]            # held-out evaluation rows, in order
    config: dict                 # the resolved config (RUN_DIR/config.yaml), {} if absent
    group_sizes: dict[int, np.ndarray] | None = None   # step -> rollouts per prompt (store)
    staleness: dict[int, np.ndarray] | None = None     # step -> staleness per sample (store)
    dropped: dict[int, tuple[int, int]] | None = None  # step -> (stale, zero-variance) groups (store)

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
        raise ValueError(f"got RUN_DIR {str(run_dir)!r} without metrics.jsonl, expected the directory of a run "
                         "(the --run-dir given to dynamo-async run or learner)")
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
            raise ValueError(f"{path}, line {number}: got invalid JSON, expected one object per line") from None
        if row.get("eval"):
            evals.append(row)
        elif "step" in row:
            by_step[int(row["step"])] = row
    if not by_step:
        raise ValueError(f"{path}: got no learner steps, expected at least one (has the run trained a step?)")
    steps = [by_step[s] for s in sorted(by_step)]
    store = _store_arrays(run_dir) if store_dir(run_dir).is_dir() else {}
    return RunData(run_dir, steps, evals, _config(run_dir), **store)


def _config(run_dir: Path) -> dict:
    import yaml

    path = run_dir / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _store_arrays(run_dir: Path) -> dict:
    """Per learner step: group sizes, staleness, dropped groups. Each learner batch wrote
    ``num_samples`` rows to ``batches`` and one row to ``steps``, in the same order, so the
    steps rows partition the batches rows; a step written again after a resume replaces the
    earlier one. Batch k trains learner step k + 1."""
    steps = read_table(run_dir, "steps", ["step", "num_samples", "staleness", "dropped_stale",
                                          "dropped_zero_variance"]).to_pydict()
    groups = read_table(run_dir, "batches", ["group_id"]).column("group_id").to_numpy()
    sizes, staleness, dropped = {}, {}, {}
    start = 0
    for i, step in enumerate(steps["step"]):
        count = int(steps["num_samples"][i])
        if start + count > len(groups):
            break  # the store was cut short inside this batch
        _, per_group = np.unique(groups[start:start + count], return_counts=True)
        start += count
        sizes[int(step) + 1] = per_group
        staleness[int(step) + 1] = np.asarray(steps["staleness"][i], dtype=float)
        dropped[int(step) + 1] = (int(steps["dropped_stale"][i]), int(steps["dropped_zero_variance"][i]))
    return {"group_sizes": sizes, "staleness": staleness, "dropped": dropped}
