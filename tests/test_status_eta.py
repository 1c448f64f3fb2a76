"""``dynamo-async status``: total steps, the recent step rate and the ETA, from the learner's
step ends (learner/progress.py) through the status snapshot (buffer/status.py) to the view."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest

from buffer.pool import PoolPrompt
from buffer.service import BufferService
from dynamo_async.config import load_config
from dynamo_async.learner.progress import StepRate, duration
from dynamo_async.learner.sinks import StatusSink
from dynamo_async.protocol import Status, decode, encode
from dynamo_async.report.status import progress_line, render

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


class Clock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_the_eta_is_the_steps_left_over_the_recent_rate():
    clock = Clock()
    rate = StepRate(total_steps=100, start_step=0, window=3, clock=clock)
    assert rate.progress().eta_s is None and rate.progress().steps_per_s is None
    clock.t += 50.0  # the first step took 50 s (start-up counted): 99 steps left at 1/50 per s
    assert rate.tick(1).eta_s == pytest.approx(99 * 50.0)
    for step in (2, 3, 4, 5):  # then 2 s per step
        clock.t += 2.0
        p = rate.tick(step)
    assert p.steps_per_s == pytest.approx(0.5) and p.eta_s == pytest.approx(95 * 2.0)
    clock.t += 10.0  # a slow step (an evaluation): the window of the last 3 steps sees it
    p = rate.tick(6)
    assert p.steps_per_s == pytest.approx(3 / 14) and p.eta_s == pytest.approx(94 * 14 / 3)


def test_a_resumed_run_counts_from_its_start_step_and_ends_at_zero():
    clock = Clock()
    rate = StepRate(total_steps=10, start_step=8, clock=clock)
    clock.t += 4.0
    assert rate.tick(9).eta_s == pytest.approx(4.0)
    clock.t += 4.0
    assert rate.tick(10).eta_s == 0.0


def test_duration_formats_hours_minutes_seconds():
    assert (
        duration(3725) == "1h02m05s"
        and duration(125.4) == "2m05s"
        and duration(0.6) == "0m01s"
        and duration(0) == "0m00s"
    )


def _service(clock: Clock) -> BufferService:
    prompts = [PoolPrompt(f"p{i}", "q", "1", np.array([1, 2], dtype=np.int32)) for i in range(8)]
    return BufferService(load_config(TINY, ["trainer.total_steps=30"]), prompts, clock=clock)


def test_the_status_snapshot_carries_total_steps_and_the_eta_as_of_now():
    clock = Clock()
    service = _service(clock)
    st = service.status()
    assert st.total_steps == 30 and st.eta_s is None and st.steps_per_s is None and st.last_step_age_s is None
    sink = StatusSink(service, start_step=0)
    for step in range(1, 11):  # 3 s per step
        clock.t += 3.0
        sink.write({"step": step, "accuracy": 0.5})
    clock.t += 12.0  # 12 s after step 10 ended
    st = service.status()
    assert st.steps_per_s == pytest.approx(1 / 3) and st.last_step_age_s == pytest.approx(12.0)
    assert st.eta_s == pytest.approx(20 * 3.0 - 12.0)
    assert st.last_step == {"step": 10.0, "accuracy": 0.5}  # the progress keys moved to their fields
    again = decode(encode(st))  # on the wire
    assert isinstance(again, Status) and again.eta_s == st.eta_s and again.total_steps == 30
    clock.t += 1000.0  # far past the estimate: not negative
    assert service.status().eta_s == 0.0


def _status(**fields) -> Status:
    base = dict(policy_version=4, groups={}, workers=1, rejected={}, completions=0, dropped_groups=0)
    return msgspec.structs.replace(Status(**base), **fields)


def test_the_view_shows_step_of_total_rate_and_eta():
    st = _status(total_steps=30, last_step={"step": 10.0}, steps_per_s=1 / 3, eta_s=125.0, last_step_age_s=2.0, step=10)
    line = progress_line(st, wall=0.0)
    assert line.startswith("step 10/30 (33.3%)   3.00 s/step   eta 2m05s (about ")
    assert line.endswith("last step 0m02s ago")
    assert "progress    step 10/30 (33.3%)" in render(st, "127.0.0.1:5555", None, 0.0)
    fast = _status(total_steps=30, last_step={"step": 10.0}, steps_per_s=4.0, eta_s=5.0, last_step_age_s=0.0)
    assert "4.00 steps/s   eta 0m05s" in progress_line(fast, 0.0)


def test_the_view_before_the_first_step_and_after_the_last():
    assert progress_line(_status(total_steps=30), 0.0) == "step 0/30 (0.0%)   eta unknown (no step yet)"
    done = _status(total_steps=30, last_step={"step": 30.0}, steps_per_s=0.5, eta_s=0.0, last_step_age_s=1.0)
    assert "step 30/30 (100.0%)   2.00 s/step   done" in progress_line(done, 0.0)
    assert progress_line(_status(), 0.0) == "step 0"  # a lone buffer of an older learner: no total
