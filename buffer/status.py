"""The status snapshot the buffer serves on its status endpoint (``dynamo-async status``):
groups by lifecycle state, the staleness gate, workers, throughput counters, and the
learner's figures of its last step and last evaluation."""

from __future__ import annotations

from collections import Counter

from dynamo_async.protocol import Status, WorkerInfo


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
        last_step=dict(service.last_step),
        last_eval=dict(service.last_eval),
    )
