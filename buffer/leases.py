"""Leases on handed-out work: which worker holds which samples, and until when.

A lease covers some sample indices of one group. A completion removes its sample from the
lease. A worker's heartbeats list the leases it still holds, and each heartbeat renews those
of them that are its own (a new deadline of ``lease_timeout_s`` from now), so a generation
longer than the lease timeout keeps its lease while its worker is alive and working. A lease
whose deadline passes without a renewal, or whose worker stops sending heartbeats, is
revoked: its remaining samples go back to the group and are handed out again. A late
completion of a revoked sample is still accepted if that sample has not arrived yet, and a
second arrival of a sample is rejected as a duplicate, so nothing is lost or counted twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Lease:
    lease_id: int
    worker_id: str
    group_id: int
    samples: set[int]
    deadline: float


@dataclass
class LeaseTable:
    """Live leases by id, and the workers' last sign of life."""

    leases: dict[int, Lease] = field(default_factory=dict)
    last_seen: dict[str, float] = field(default_factory=dict)
    _next_id: int = 1

    def grant(self, worker_id: str, group_id: int, samples: list[int], deadline: float) -> Lease:
        lease = Lease(self._next_id, worker_id, group_id, set(samples), deadline)
        self.leases[lease.lease_id] = lease
        self._next_id += 1
        return lease

    def settle(self, lease_id: int, group_id: int, sample_index: int) -> None:
        """A sample of the lease arrived; the lease ends when all of its samples did. A lease id
        that names another group's lease is ignored (it cannot settle that group's samples)."""
        lease = self.leases.get(lease_id)
        if lease is None or lease.group_id != group_id:
            return
        lease.samples.discard(sample_index)
        if not lease.samples:
            del self.leases[lease_id]

    def renew(self, worker_id: str, lease_ids: Iterable[int], deadline: float, now: float) -> int:
        """Move the deadline of each named lease that ``worker_id`` holds to ``deadline``; returns
        how many. Ids of unknown leases or of another worker's are ignored (a worker never keeps
        someone else's work), and so is a lease already past its deadline: it is revoked at the
        next expiry check, however late that check runs."""
        renewed = 0
        for lease_id in set(lease_ids):
            lease = self.leases.get(lease_id)
            if lease is not None and lease.worker_id == worker_id and lease.deadline >= now:
                lease.deadline = deadline
                renewed += 1
        return renewed

    def seen(self, worker_id: str, now: float) -> None:
        self.last_seen[worker_id] = now

    def revoke_expired(self, now: float, worker_timeout: float) -> list[Lease]:
        """Remove and return leases past their deadline or held by silent workers."""
        gone = {w for w, t in self.last_seen.items() if now - t > worker_timeout}
        for w in gone:
            del self.last_seen[w]
        out = [lease for lease in self.leases.values() if lease.deadline < now or lease.worker_id in gone]
        for lease in out:
            del self.leases[lease.lease_id]
        return out

    def revoke_worker(self, worker_id: str) -> list[Lease]:
        """Remove and return every lease of ``worker_id`` (it said goodbye or was declared dead)."""
        self.last_seen.pop(worker_id, None)
        out = [lease for lease in self.leases.values() if lease.worker_id == worker_id]
        for lease in out:
            del self.leases[lease.lease_id]
        return out

    @property
    def workers(self) -> int:
        return len(self.last_seen)
