"""Per-step metrics: handed to every metric sink (``sinks.py``: RUN_DIR/metrics.jsonl always,
TensorBoard / W&B / the status endpoint as configured), and shown on a progress bar."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from dynamo_async.learner.sinks import JsonlSink, MetricSink

BAR_KEYS = ("accuracy", "reward", "entropy", "grad_norm", "staleness_mean")


class MetricsLog:
    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        start_step: int = 0,
        show: bool = True,
        sinks: list[MetricSink] | None = None,
    ):
        self.sinks = sinks if sinks is not None else [JsonlSink(Path(run_dir) / "metrics.jsonl")]
        self._bar = tqdm(total=total_steps, initial=start_step, desc="learner", disable=not show, dynamic_ncols=True)

    def write(self, row: dict) -> None:
        for sink in self.sinks:
            sink.write(row)
        self._bar.set_postfix({k: f"{row[k]:.3g}" for k in BAR_KEYS if isinstance(row.get(k), (int, float))})
        self._bar.update(1)

    def write_eval(self, row: dict) -> None:
        """An evaluation row; does not advance the progress bar."""
        for sink in self.sinks:
            sink.write_eval(row)

    def note(self, text: str) -> None:
        """A line for the person watching, above the progress bar."""
        self._bar.write(text)

    def close(self) -> None:
        self._bar.close()
        for sink in self.sinks:
            sink.close()
