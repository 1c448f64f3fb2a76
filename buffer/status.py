"""The status snapshot the buffer serves on its status endpoint (``dynamo-async status``):
groups by lifecycle state, the staleness gate, workers, throughput counters, the learner's
figures of its last step and last evaluation, and its progress: total steps, the recent step
rate and the ETA (``dynamo_async/learner/progress.py``; the learner's ``StatusSink`` adds them
to the step row as ``PROGRESS_KEYS``, and the snapshot moves them into their own fields).

The ETA in a snapshot is the one measured at the last step less the time since:
``eta = max(0, eta_at_step - (now - progress_at))``."""

from __future__ import annotations

from collections import Counter

from dynamo_async.protocol import Status, WorkerInfo

PROGRESS_KEYS = ("steps_per_s", "eta_s", "progress_at")  # service clock time they were measured at


def progress_fields(last_step: dict[str, float], now: float) -> dict:
    """The Status progress fields from the learner's last step row (see the module docstring)."""
    at = last_step.get("progress_at")
    age = None if at is None else max(0.0, now - at)
    eta = last_step.get("eta_s")
    return {
        "steps_per_s": last_step.get("steps_per_s"),
        "eta_s": None if eta is None or age is None else max(0.0, eta - age),
        "last_step_age_s": age,
    }


def numeric(row: dict) -> dict[str, float]:
    """The finite-or-not numeric entries of a metrics row (bools and nested values left out)."""
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def build_status(service, now: float) -> Status:
    """Called with the service's lock held."""
    states = Counter(g.state.value for g in service.groups.values())
    states["consumed"] = service.counts["consumed"]
    leased = Counter()
    for lease in service.leases.leases.values():
        leased[lease.worker_id] += len(lease.samples)
    workers = [
        WorkerInfo(
            worker_id=w, last_seen_s=round(now - t, 3), samples_leased=leased[w], completions=service.by_worker[w]
        )
        for w, t in sorted(service.leases.last_seen.items())
    ]
    counts = service.counts
    last_step = {k: v for k, v in service.last_step.items() if k not in PROGRESS_KEYS}
    return Status(
        policy_version=service.version,
        groups=dict(states),
        workers=service.leases.workers,
        rejected=dict(service.rejected),
        completions=counts["completions"],
        dropped_groups=counts["dropped_stale"] + counts["dropped_zero_variance"],
        step=service.step,
        max_staleness=service.cfg.buffer.max_staleness,
        gate_room=service._gate_room(),
        completion_tokens=counts["completion_tokens"],
        uptime_s=now - service.started,
        worker_list=workers,
        last_step=last_step,
        last_eval=dict(service.last_eval),
        total_steps=service.cfg.trainer.total_steps,
        **progress_fields(service.last_step, now),
    )
