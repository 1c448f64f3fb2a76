"""Metric sinks: where a learner's per-step figures go, behind one interface.

    MetricsLog.write(row) ──> JsonlSink        RUN_DIR/metrics.jsonl (always)
                         ├─> TensorBoardSink   RUN_DIR/tensorboard    (metrics.tensorboard)
                         ├─> WandbSink         Weights & Biases       (metrics.wandb)
                         └─> StatusSink        the buffer's status endpoint (dynamo-async status)

``make_sinks`` is the only place that reads ``cfg.metrics``; the learner hands rows to the
list it gets and never branches on which sinks are on. Scalars go to TensorBoard and W&B as
``train/<name>`` (step rows) or ``eval/<set>`` (held-out rows); the allocation histogram
(group size -> groups) goes as a histogram of group sizes. A step's decoded samples
(``samples.py``, ``metrics.log_samples``) go to TensorBoard as Markdown text (tag ``samples``)
and to W&B as a table (key ``samples``); metrics.jsonl leaves them to the Arrow store. A sink that is asked for but
whose package is missing is an error at start, not a silent no-op.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Protocol

import numpy as np

from dynamo_async.config.schema import MetricsConfig
from dynamo_async.errors import UsageError
from dynamo_async.learner.progress import StepRate
from dynamo_async.learner.samples import COLUMNS, markdown
from dynamo_async.lines import cut_torn_tail


class MetricSink(Protocol):
    def write(self, row: dict) -> None:
        """One training step's figures (``row["step"]`` is the step after the update)."""

    def write_eval(self, row: dict) -> None:
        """One held-out evaluation (keys ``eval/<set>``, plus ``step`` and ``label``)."""

    def write_samples(self, rows: list[dict]) -> None:
        """One step's decoded samples (rows of the store's ``samples`` table, at least one)."""

    def close(self) -> None:
        """Flush and release."""


class JsonlSink:
    """One JSON object per line; evaluation rows carry ``"eval": true``."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        cut_torn_tail(path)  # a learner killed mid-line; the resumed one starts on a fresh line
        self._file = path.open("a")

    def write(self, row: dict) -> None:
        self._line({"time": time.time(), **row})

    def write_eval(self, row: dict) -> None:
        self._line({"time": time.time(), "eval": True, **row})

    def write_samples(self, rows: list[dict]) -> None:
        pass  # kept in the Arrow store's samples table

    def close(self) -> None:
        self._file.close()

    def _line(self, row: dict) -> None:
        self._file.write(json.dumps(row, default=float) + "\n")
        self._file.flush()


def scalars(row: dict, prefix: str) -> dict[str, float]:
    """Numeric entries of ``row`` under ``prefix/`` (keys that already have a ``/`` keep theirs)."""
    out = {}
    for key, value in row.items():
        if isinstance(value, (int, float)) and key not in ("step", "time"):
            out[key if "/" in key else f"{prefix}/{key}"] = float(value)
    return out


def eval_scalars(row: dict) -> dict[str, float]:
    """The held-out figures of an evaluation row (``eval/<set>``), without its step or version."""
    return {k: float(v) for k, v in row.items() if k.startswith("eval/") and isinstance(v, (int, float))}


def group_sizes(row: dict) -> list[int]:
    """The allocation histogram ``{"8": 3, "16": 1}`` as one entry per group: [8, 8, 8, 16]."""
    hist = row.get("allocation_hist") or {}
    return [int(size) for size, count in hist.items() for _ in range(int(count))]


class TensorBoardSink:
    """Scalars and the allocation histogram as TensorBoard events. A resumed run (``purge_step``:
    the first step it trains) hides the events the killed run wrote from that step on."""

    def __init__(self, log_dir: Path, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UsageError(
                "metrics.tensorboard: got true, but the tensorboard package is missing; expected "
                "`pip install -e '.[tensorboard]'`, or set metrics.tensorboard=false"
            ) from None
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def write(self, row: dict) -> None:
        step = int(row["step"])
        for tag, value in scalars(row, "train").items():
            self.writer.add_scalar(tag, value, step)
        sizes = group_sizes(row)
        if sizes:
            self.writer.add_histogram("train/allocation_group_size", np.asarray(sizes), step)
        self.writer.flush()

    def write_eval(self, row: dict) -> None:
        for tag, value in eval_scalars(row).items():
            self.writer.add_scalar(tag, value, int(row["step"]))
        self.writer.flush()

    def write_samples(self, rows: list[dict]) -> None:
        self.writer.add_text("samples", markdown(rows), int(rows[0]["step"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """``wandb.init`` once per run directory: a resumed run continues the same W&B run (its id
    is kept in RUN_DIR/wandb_run_id). W&B's own step is the learner step. A run resumed after a
    kill (``rewind``: the killed run logged steps after its checkpoint, now superseded) rewinds
    the W&B run to the checkpoint's step (``resume_from="<id>?_step=<step>"``, W&B's rewind), so
    each step shows once; without a rewind W&B would ignore the resumed run's rows for those
    steps and keep the superseded ones."""

    def __init__(self, cfg: MetricsConfig, run_dir: Path, config: dict, start_step: int = 0, rewind: bool = False):
        try:
            import wandb
        except ImportError:
            raise UsageError(
                "metrics.wandb: got true, but the wandb package is missing; expected "
                "`pip install -e '.[wandb]'`, or set metrics.wandb=false"
            ) from None
        self.wandb = wandb
        id_file = run_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:16]
        id_file.write_text(run_id + "\n")
        where = {"resume_from": f"{run_id}?_step={start_step}"} if rewind else {"id": run_id, "resume": "allow"}
        self.run = wandb.init(
            project=cfg.wandb_project,
            entity=cfg.wandb_entity or None,
            name=cfg.wandb_name or run_dir.resolve().name,
            dir=str(run_dir),
            mode=cfg.wandb_mode,
            config=config,
            **where,
        )

    def write(self, row: dict) -> None:
        data: dict = scalars(row, "train")
        sizes = group_sizes(row)
        if sizes:
            data["train/allocation_group_size"] = self.wandb.Histogram(sizes)
        self.run.log(data, step=int(row["step"]))

    def write_eval(self, row: dict) -> None:
        self.run.log(eval_scalars(row), step=int(row["step"]))  # joins that step's training row

    def write_samples(self, rows: list[dict]) -> None:
        columns = [*COLUMNS, *(k for k in rows[0] if k not in COLUMNS)]
        table = self.wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])
        self.run.log({"samples": table}, step=int(rows[0]["step"]))

    def close(self) -> None:
        self.run.finish()


class StatusSink:
    """Hands each step's figures to the buffer service, which serves them on its status
    endpoint (``dynamo-async status``), with the run's progress (``progress.py``): the recent
    step rate, the ETA, and when (the service's clock) they were measured; ``buffer/status.py``
    moves these into the Status (``PROGRESS_KEYS``)."""

    def __init__(self, service, start_step: int = 0):
        self.service = service
        self.rate = StepRate(service.cfg.trainer.total_steps, start_step, clock=service.clock)

    def write(self, row: dict) -> None:
        p = self.rate.tick(int(row["step"]))
        progress = {"steps_per_s": p.steps_per_s, "eta_s": p.eta_s, "progress_at": self.service.clock()}
        self.service.record_step({**row, **progress})

    def write_eval(self, row: dict) -> None:
        self.service.record_eval(row)

    def write_samples(self, rows: list[dict]) -> None:
        pass

    def close(self) -> None:
        pass


def make_sinks(
    cfg: MetricsConfig, run_dir: Path, config: dict, start_step: int = 0, rewind: bool = False
) -> list[MetricSink]:
    """metrics.jsonl, plus the optional sinks ``cfg`` turns on (``config``: the run config as
    a plain mapping, for W&B; ``start_step``: the step a resumed run continues after;
    ``rewind``: rows after ``start_step`` were logged by a killed run and are superseded)."""
    sinks: list[MetricSink] = [JsonlSink(run_dir / "metrics.jsonl")]
    try:
        if cfg.tensorboard:
            sinks.append(TensorBoardSink(run_dir / "tensorboard", purge_step=start_step + 1 if start_step else None))
        if cfg.wandb:
            os.environ.setdefault("WANDB_SILENT", "true")
            sinks.append(WandbSink(cfg, run_dir, config, start_step, rewind))
    except Exception:
        for sink in sinks:  # close what was opened, then report why the next one failed
            sink.close()
        raise
    return sinks
