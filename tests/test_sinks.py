"""Metric sinks behind one interface: metrics.jsonl, TensorBoard (for real), W&B (the real
package in offline mode, and a stand-in module that records the calls), and the status
endpoint. No test makes a network call."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from buffer.pool import PoolPrompt
from buffer.service import BufferService
from dynamo_async.config import load_config
from dynamo_async.config.schema import MetricsConfig
from dynamo_async.learner.metrics import MetricsLog
from dynamo_async.learner.sinks import JsonlSink, StatusSink, TensorBoardSink, WandbSink, make_sinks

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
ROW = {
    "step": 3,
    "version": 3,
    "accuracy": 0.25,
    "grad_norm": 1.5,
    "sync_error": None,
    "allocation_hist": {"4": 2, "6": 1},
    "beta_stab_hist": [0, 3, 5],
}


class Recorder:
    def __init__(self):
        self.rows, self.evals, self.closed = [], [], False

    def write(self, row):
        self.rows.append(row)

    def write_eval(self, row):
        self.evals.append(row)

    def close(self):
        self.closed = True


def test_metrics_log_hands_every_row_to_every_sink(tmp_path):
    a, b = Recorder(), Recorder()
    log = MetricsLog(tmp_path, total_steps=5, show=False, sinks=[a, b])
    log.write(ROW)
    log.write_eval({"step": 3, "eval/synthetic": 0.5})
    log.close()
    for sink in (a, b):
        assert sink.rows == [ROW] and sink.evals == [{"step": 3, "eval/synthetic": 0.5}] and sink.closed


def test_default_sinks_are_metrics_jsonl_only(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "accu')  # a learner killed mid-line
    sinks = make_sinks(MetricsConfig(), tmp_path, {})
    assert [type(s) for s in sinks] == [JsonlSink]
    sinks[0].write(ROW)
    sinks[0].write_eval({"step": 3, "eval/synthetic": 0.5})
    sinks[0].close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0] == {"step": 1}  # the torn line was cut; the resumed learner starts a fresh one
    assert rows[1]["allocation_hist"] == {"4": 2, "6": 1} and "time" in rows[1]
    assert rows[2]["eval"] is True and rows[2]["eval/synthetic"] == 0.5


def test_tensorboard_sink_writes_scalars_and_the_allocation_histogram(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (sink,) = [s for s in make_sinks(MetricsConfig(tensorboard=True), tmp_path, {}) if isinstance(s, TensorBoardSink)]
    sink.write(ROW)
    sink.write({**ROW, "step": 4, "accuracy": 0.5})
    sink.write_eval({"step": 4, "version": 4, "label": "after", "eval/synthetic": 0.75})
    sink.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"histograms": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/accuracy")] == [(3, 0.25), (4, 0.5)]
    assert [(e.step, e.value) for e in events.Scalars("eval/synthetic")] == [(4, 0.75)]
    assert "eval/version" not in events.Tags()["scalars"]
    assert "train/version" in events.Tags()["scalars"] and "train/sync_error" not in events.Tags()["scalars"]
    (hist, _) = events.Histograms("train/allocation_group_size")
    assert hist.step == 3 and hist.histogram_value.num == 3 and hist.histogram_value.sum == 4 + 4 + 6


def _fake_wandb(calls: list):
    class Run:
        def log(self, data, step=None):
            calls.append(("log", data, step))

        def define_metric(self, name, step_metric=None):
            calls.append(("define_metric", name, step_metric))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return Run()

    return types.SimpleNamespace(init=init, Histogram=lambda seq: ("histogram", list(seq)))


def test_wandb_sink_logs_steps_and_a_resumed_run_continues_the_same_wandb_run(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "wandb", _fake_wandb(calls))
    cfg = MetricsConfig(wandb=True, wandb_project="proj", wandb_mode="offline")
    (sink,) = [s for s in make_sinks(cfg, tmp_path, {"method": "dynamo"}) if isinstance(s, WandbSink)]
    sink.write(ROW)
    sink.write_eval({"step": 3, "eval/synthetic": 0.5})
    sink.close()
    init = calls[0][1]
    assert init["project"] == "proj" and init["mode"] == "offline" and init["resume"] == "allow"
    assert init["name"] == tmp_path.name and init["config"] == {"method": "dynamo"} and init["entity"] is None
    _, data, step = calls[1]  # W&B's own step is the learner step
    assert step == 3 and data["train/accuracy"] == 0.25
    assert data["train/allocation_group_size"] == ("histogram", [4, 4, 6])
    assert calls[2] == ("log", {"eval/synthetic": 0.5}, 3) and calls[3] == ("finish",)
    WandbSink(cfg, tmp_path, {}, start_step=3).close()  # a learner resumed after a clean stop
    assert calls[4][1]["id"] == init["id"] and calls[4][1]["resume"] == "allow"


def test_a_run_resumed_after_a_kill_rewinds_its_wandb_run_to_the_checkpoint(tmp_path, monkeypatch):
    """The killed run logged steps 5-7 after its step-4 checkpoint: the resumed run rewinds the
    same W&B run to step 4 (W&B would otherwise ignore its rows for steps 5-7); once it has
    passed step 7, a later resume continues without a rewind."""
    from buffer import history

    calls: list = []
    monkeypatch.setitem(sys.modules, "wandb", _fake_wandb(calls))
    cfg = MetricsConfig(wandb=True, wandb_mode="offline")
    lines = [json.dumps({"step": s}) for s in range(1, 8)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    WandbSink(cfg, tmp_path, {}).close()
    run_id = calls[0][1]["id"]
    history.cut_metrics(tmp_path, 4)
    assert history.rewinds(tmp_path, 4) and not history.rewinds(tmp_path, 0)
    make_sinks(cfg, tmp_path, {}, start_step=4, rewind=True)[-1].close()
    resumed = calls[2][1]
    assert resumed["resume_from"] == f"{run_id}?_step=4" and "id" not in resumed and "resume" not in resumed
    assert not history.rewinds(tmp_path, 9)  # resumed later at step 9: no rewind


def test_wandb_sink_runs_offline_with_the_real_package_and_resumes_the_same_run(tmp_path):
    import wandb

    cfg = MetricsConfig(wandb=True, wandb_mode="offline")
    for step in (3, 4):  # a run, then the resumed run
        sinks = make_sinks(cfg, tmp_path, {"method": "dynamo"})
        sinks[-1].write({**ROW, "step": step})
        sinks[-1].write_eval({"step": step, "eval/synthetic": 0.5})
        for sink in sinks:
            sink.close()
    wandb.teardown()  # stops the W&B service process this test started
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    runs = sorted((tmp_path / "wandb").glob(f"offline-run-*-{run_id}*"))
    assert len(runs) == 2, runs
    for run in runs:
        data = (run / f"run-{run_id}.wandb").read_bytes()
        assert b"train/accuracy" in data and b"train/allocation_group_size" in data and b"eval/synthetic" in data


@pytest.mark.parametrize("field, module", [("wandb", "wandb"), ("tensorboard", "torch.utils.tensorboard")])
def test_a_sink_asked_for_without_its_package_is_an_error_naming_the_fix(tmp_path, monkeypatch, field, module):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(
        ValueError,
        match=rf"metrics.{field}: got true, but the {field} package is missing; "
        rf"expected `pip install -e '.\[{field}\]'`",
    ):
        make_sinks(MetricsConfig(**{field: True}), tmp_path, {})


def test_status_sink_serves_the_last_step_and_eval_on_the_status_snapshot():
    prompts = [PoolPrompt(f"p{i}", "q", "1", np.array([1, 2], dtype=np.int32)) for i in range(8)]
    service = BufferService(load_config(TINY), prompts)
    sink = StatusSink(service)
    sink.write(ROW)
    sink.write_eval({"step": 3, "label": "after", "eval/synthetic": 0.5})
    status = service.status()
    assert status.last_step == {"step": 3.0, "version": 3.0, "accuracy": 0.25, "grad_norm": 1.5}
    assert status.last_eval == {"step": 3.0, "eval/synthetic": 0.5}
    assert status.max_staleness == load_config(TINY).buffer.max_staleness
