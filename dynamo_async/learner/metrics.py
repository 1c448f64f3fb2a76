"""Per-step metrics: handed to every metric sink (``sinks.py``: RUN_DIR/metrics.jsonl always,
TensorBoard / W&B / the status endpoint as configured), and shown to the person watching.

On a terminal (stdout and stderr both TTYs) that is a tqdm progress bar; otherwise (output
redirected to a file, a pipe, a cluster's log) one plain line per step on stdout, which a log
keeps readable where a bar would be one endless line::

    step 12/600  reward 0.412  acc 0.375  8.21 s/step  eta 1h20m31s

(``s/step``: the step's own time, ``step_s``; the ETA comes from the recent step rate,
``progress.py``.)
"""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from dynamo_async.learner.progress import StepRate, duration
from dynamo_async.learner.sinks import JsonlSink, MetricSink

BAR_KEYS = ("accuracy", "reward", "entropy", "grad_norm", "staleness_mean")


def on_terminal() -> bool:
    """Whether the bar would be seen as a bar: stdout and stderr (tqdm's stream) both TTYs."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def plain_line(row: dict, total_steps: int, eta_s: float | None) -> str:
    """One step as a log line (see the module docstring); figures a row lacks are left out."""
    parts = [f"step {row.get('step', '?')}/{total_steps}"]
    for key, label in (("reward", "reward"), ("accuracy", "acc")):
        if isinstance(row.get(key), (int, float)):
            parts.append(f"{label} {row[key]:.3f}")
    if isinstance(row.get("step_s"), (int, float)):
        parts.append(f"{row['step_s']:.2f} s/step")
    parts.append(f"eta {duration(eta_s)}" if eta_s is not None else "eta ?")
    return "  ".join(parts)


class MetricsLog:
    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        start_step: int = 0,
        show: bool = True,
        sinks: list[MetricSink] | None = None,
        plain: bool | None = None,
    ):
        """``show``: show progress at all; ``plain``: lines instead of the bar (None: when not
        ``on_terminal()``)."""
        self.sinks = sinks if sinks is not None else [JsonlSink(Path(run_dir) / "metrics.jsonl")]
        self.total_steps = total_steps
        self.plain = show and (not on_terminal() if plain is None else plain)
        self.rate = StepRate(total_steps, start_step)
        self._bar = tqdm(
            total=total_steps, initial=start_step, desc="learner", disable=not show or self.plain, dynamic_ncols=True
        )

    def write(self, row: dict) -> None:
        for sink in self.sinks:
            sink.write(row)
        progress = self.rate.tick(int(row["step"]))
        if self.plain:
            print(plain_line(row, self.total_steps, progress.eta_s), flush=True)
            return
        self._bar.set_postfix({k: f"{row[k]:.3g}" for k in BAR_KEYS if isinstance(row.get(k), (int, float))})
        self._bar.update(1)

    def write_eval(self, row: dict) -> None:
        """An evaluation row; does not advance the progress bar."""
        for sink in self.sinks:
            sink.write_eval(row)

    def write_samples(self, rows: list[dict]) -> None:
        """The decoded samples of one step (``samples.py``); nothing when there are none."""
        if rows:
            for sink in self.sinks:
                sink.write_samples(rows)

    def note(self, text: str) -> None:
        """A line for the person watching, above the progress bar (or among the plain lines)."""
        if self.plain:
            print(text, flush=True)
        else:
            self._bar.write(text)

    def close(self) -> None:
        self._bar.close()
        for sink in self.sinks:
            sink.close()
