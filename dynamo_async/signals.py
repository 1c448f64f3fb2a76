"""The signals that stop a process cleanly: SIGTERM (kill, schedulers), SIGINT (Ctrl-C) and
SIGHUP (the terminal closed, an ssh session dropped). Each sets an event that the process polls,
so a learner finishes or abandons its step, checkpoints and tells its workers to stop, instead of
dying where it stands (docs/design.md section 9)."""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def stop_on_signals(stop: threading.Event | None = None) -> threading.Event:
    """Install handlers that set ``stop`` (a new event when None) on every stop signal; returns it."""
    stop = stop if stop is not None else threading.Event()
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda *_: stop.set())
    return stop
