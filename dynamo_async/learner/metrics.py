"""Per-step metrics: one JSON object per line in RUN_DIR/metrics.jsonl, and a progress bar."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm import tqdm


class MetricsLog:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int = 0, show: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a")
        self._bar = tqdm(total=total_steps, initial=start_step, desc="learner", disable=not show,
                         dynamic_ncols=True)

    def write(self, row: dict) -> None:
        row = {"time": time.time(), **row}
        self._file.write(json.dumps(row, default=float) + "\n")
        self._file.flush()
        keys = ("accuracy", "reward", "entropy", "grad_norm", "staleness_mean")
        self._bar.set_postfix({k: f"{row[k]:.3g}" for k in keys if isinstance(row.get(k), (int, float))})
        self._bar.update(1)

    def write_eval(self, row: dict) -> None:
        """An evaluation row (marked ``"eval": true``); does not advance the progress bar."""
        self._file.write(json.dumps({"time": time.time(), "eval": True, **row}, default=float) + "\n")
        self._file.flush()

    def note(self, text: str) -> None:
        """A line for the person watching, above the progress bar."""
        self._bar.write(text)

    def close(self) -> None:
        self._bar.close()
        self._file.close()
