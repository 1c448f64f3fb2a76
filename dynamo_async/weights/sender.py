"""Learner side of the weight sync: announce a plan, then broadcast dtype-grouped buckets.

    sender = WeightSender("0.0.0.0", port=0, advertise="10.0.0.5")     # rank 0, store master
    report = sender.broadcast(model.state_dict(), version=7, members=["w0", "w1"])

``members`` is the set of workers present (the buffer's live workers). When it differs from
the last broadcast's, a new process-group generation is formed. A broadcast that fails (a
member died mid-way, a rendezvous timed out) returns a report with the error and resets the
group, so the next broadcast re-forms it for whoever is present; the learner never hangs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import msgspec
import torch
import torch.distributed as dist

from dynamo_async.weights.buckets import pack_bucket, plan_manifest, unpack_bucket
from dynamo_async.weights.group import LATEST_KEY, PLAN_KEY, SyncPlan, broadcast, encode_plan, make_group, open_store


class SyncReport(msgspec.Struct, frozen=True):
    """Outcome of one broadcast."""

    plan: int
    version: int
    members: tuple[str, ...]
    bytes: int
    seconds: float
    error: str | None = None


class WeightSender:
    """Rank 0 of the weight-sync group; hosts the rendezvous store."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        backend: str = "gloo",
        timeout_s: float = 60.0,
        bucket_bytes: int = 1 << 30,
        device: str = "cpu",
    ):
        self.backend, self.timeout_s, self.bucket_bytes, self.device = backend, timeout_s, bucket_bytes, device
        self.store = open_store(host, port, True, timeout_s)
        self._plan = 0
        self._generation = -1
        self._members: tuple[str, ...] = ()
        self._pg: dist.ProcessGroup | None = None
        self._buckets: list[torch.Tensor] = []  # reused between broadcasts of the same layout

    def bind(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Move ``tensors`` (e.g. the learner's parameters, in broadcast order) into the
        broadcast buckets, so that later broadcasts of them send without packing copies."""
        manifest = plan_manifest(((n, t.dtype, t.shape) for n, t in tensors.items()), 0, self.bucket_bytes)
        buffers = self._bucket_buffers(manifest.bucket_bytes)
        with torch.no_grad():
            for b, flat in enumerate(buffers):
                pack_bucket(manifest, b, tensors, out=flat)
                for name, view in unpack_bucket(manifest, b, flat).items():
                    tensors[name].data = view

    def _bucket_buffers(self, sizes: tuple[int, ...]) -> list[torch.Tensor]:
        if [t.numel() for t in self._buckets] != list(sizes):
            self._buckets = [torch.empty(n, dtype=torch.uint8, device=self.device) for n in sizes]
        return self._buckets

    @property
    def port(self) -> int:
        return self.store.port

    def broadcast(self, tensors: Mapping[str, torch.Tensor], version: int, members: Sequence[str]) -> SyncReport:
        """Send every tensor (fixed order: the mapping's) to ``members``; see the module docstring."""
        start = time.perf_counter()
        members = tuple(sorted(members))
        if not members:
            return SyncReport(self._plan, version, (), 0, 0.0, error="no workers present")
        if members != self._members or self._pg is None:
            self._generation += 1
            self._members, self._pg = members, None
        manifest = plan_manifest(((n, t.dtype, t.shape) for n, t in tensors.items()), version, self.bucket_bytes)
        plan = SyncPlan(self._plan, self._generation, {w: i + 1 for i, w in enumerate(members)}, manifest)
        self.store.set(PLAN_KEY.format(plan.plan), encode_plan(plan))
        self.store.set(LATEST_KEY, str(plan.plan))
        self._plan += 1
        try:
            if self._pg is None:
                self._pg = make_group(self.store, plan.generation, 0, plan.world_size, self.backend, self.timeout_s)
            for b, flat in enumerate(self._bucket_buffers(manifest.bucket_bytes)):
                broadcast(self._pg, pack_bucket(manifest, b, tensors, out=flat), self.timeout_s)
        except RuntimeError as err:  # DistError and gloo timeouts: a member died or never arrived
            self._pg, self._members = None, ()
            return SyncReport(plan.plan, version, members, 0, time.perf_counter() - start, error=str(err)[:500])
        return SyncReport(plan.plan, version, members, sum(manifest.bucket_bytes), time.perf_counter() - start)
