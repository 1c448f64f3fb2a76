"""How far a run is and when it will end: the recent step rate and the ETA from it.

    rate = (s_last - s_first) / (t_last - t_first)      over the last ``window`` steps' end times
    eta  = (total_steps - s_last) / rate

``t`` is the wall-clock (monotonic) time a step ended, so the rate includes everything between
steps: waiting for a batch, held-out evaluations, checkpoints. Until two steps have ended the
first point is the clock's start (the learner's start, or its resume), so the first step's ETA
also counts the time before it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    steps_per_s: float | None  # None: no step has ended yet, or no time went by
    eta_s: float | None  # seconds until total_steps at that rate; 0 once there


class StepRate:
    """The recent step rate of one learner run (see the module docstring)."""

    def __init__(
        self, total_steps: int, start_step: int = 0, window: int = 20, clock: Callable[[], float] = time.monotonic
    ):
        assert window >= 1, window
        self.total_steps, self.clock = total_steps, clock
        self._start = (clock(), start_step)
        self._ends: deque[tuple[float, int]] = deque(maxlen=window + 1)

    def tick(self, step: int) -> Progress:
        """Step ``step`` just ended: its progress, with the rate over the recent steps."""
        self._ends.append((self.clock(), step))
        return self.progress()

    def progress(self) -> Progress:
        points = list(self._ends) if len(self._ends) >= 2 else [self._start, *self._ends]
        (t0, s0), (t1, s1) = points[0], points[-1]
        rate = (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else None
        left = max(0, self.total_steps - s1)
        eta = 0.0 if not left else (left / rate if rate else None)
        return Progress(s1, self.total_steps, rate, eta)


def duration(seconds: float) -> str:
    """``3725`` -> ``1h02m05s``, ``125`` -> ``2m05s`` (to the nearest second)."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
