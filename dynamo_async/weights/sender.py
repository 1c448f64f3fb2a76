"""Learner side of the weight sync: offer a broadcast, form the group of those who join, send.

    sender = WeightSender("10.0.0.5", port=0, token=secrets.token_hex(16), join_timeout_s=5.0)
    report = sender.broadcast(model.state_dict(), version=7, members=["w0", "w1"])

``members`` are the receivers that should get the weights (the buffer's live receivers). Only
those that join within ``join_timeout_s`` take part (the protocol: ``join.py``); the others are
reported in ``report.missed`` for the learner to offer the weights again later. When the
members that joined differ from the last group's, a new process-group generation is formed. A
broadcast whose collective fails (a member died or stopped mid-way) returns a report with the
error and resets the group, so the next broadcast re-forms it. A broadcast takes at most the
join timeout plus the collective timeout (``timeout_s``); the learner never hangs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import msgspec
import torch
import torch.distributed as dist

from dynamo_async.weights.buckets import Manifest, pack_bucket, plan_manifest, unpack_bucket
from dynamo_async.weights.group import SyncOffer, SyncPlan, SyncReply, broadcast, make_group, open_store
from dynamo_async.weights.join import collect_replies, publish_offer, publish_plan


class SyncReport(msgspec.Struct, frozen=True):
    """Outcome of one broadcast: ``members`` took part, ``missed`` did not join in time,
    ``current`` held the version already; ``bytes`` is 0 when nothing was sent."""

    plan: int
    version: int
    members: tuple[str, ...]
    bytes: int
    seconds: float
    error: str | None = None
    missed: tuple[str, ...] = ()
    current: tuple[str, ...] = ()


class WeightSender:
    """Rank 0 of the weight-sync group; hosts the rendezvous store on ``host``.

    ``token`` goes into every offer and plan; receivers accept only their Welcome's (the learner
    passes a fresh random one per start; "" is for tests on one machine)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        backend: str = "gloo",
        timeout_s: float = 60.0,
        bucket_bytes: int = 1 << 30,
        device: str = "cpu",
        token: str = "",
        join_timeout_s: float = 5.0,
    ):
        for name, value in (("timeout_s", timeout_s), ("join_timeout_s", join_timeout_s)):
            if not value > 0:
                raise ValueError(f"weight sync {name}: got {value}, expected > 0 seconds")
        self.backend, self.timeout_s, self.bucket_bytes, self.device = backend, timeout_s, bucket_bytes, device
        self.token, self.join_timeout_s = token, join_timeout_s
        self.store = open_store(host, port, True, timeout_s)
        self._plan = 0
        self._generation = -1
        self._members: tuple[str, ...] = ()
        self._laggards: set[str] = set()  # members that missed their last offer (join.py, step 3)
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
        """Send every tensor (fixed order: the mapping's) to those of ``members`` that join."""
        start = time.perf_counter()
        members = tuple(sorted(set(members)))
        if not members:
            return SyncReport(self._plan, version, (), 0, 0.0, error="no workers present")
        manifest = plan_manifest(((n, t.dtype, t.shape) for n, t in tensors.items()), version, self.bucket_bytes)
        k, self._plan = self._plan, self._plan + 1
        publish_offer(self.store, SyncOffer(k, version, members, self.join_timeout_s, self.token))
        replies = collect_replies(self.store, k, members, self._laggards, self.join_timeout_s)
        joined = tuple(m for m in members if m in replies and replies[m].kind == "join")
        current = tuple(m for m in members if m in replies and replies[m].kind == "have")
        missed = tuple(m for m in members if m not in replies)
        self._laggards = (self._laggards & set(members)) - set(replies) | set(missed)
        plan = self._plan_for(k, joined, replies, manifest)
        publish_plan(self.store, plan)
        if not joined:
            error = None if current else f"no member joined within {self.join_timeout_s} s"
            return SyncReport(k, version, (), 0, time.perf_counter() - start, error, missed, current)
        try:
            if self._pg is None:
                self._pg = make_group(self.store, plan.generation, 0, plan.world_size, self.backend, self.timeout_s)
            for b, flat in enumerate(self._bucket_buffers(manifest.bucket_bytes)):
                broadcast(self._pg, pack_bucket(manifest, b, tensors, out=flat), self.timeout_s)
        except RuntimeError as err:  # DistError and gloo timeouts: a member died or stopped
            self._pg, self._members = None, ()
            seconds = time.perf_counter() - start
            return SyncReport(k, version, joined, 0, seconds, str(err)[:500], missed, current)
        seconds = time.perf_counter() - start
        return SyncReport(k, version, joined, sum(manifest.bucket_bytes), seconds, None, missed, current)

    def _plan_for(self, k: int, joined: tuple[str, ...], replies: dict[str, SyncReply], manifest: Manifest) -> SyncPlan:
        """The plan of the members that joined: the last group's generation when they are its
        members and each still holds it, else the next generation (a new group)."""
        if not joined:
            return SyncPlan(k, self._generation, {}, manifest, self.token)
        held = all(replies[m].generation == self._generation for m in joined)
        if joined != self._members or self._pg is None or not held:
            self._generation += 1
            self._members, self._pg = joined, None
        return SyncPlan(k, self._generation, {w: i + 1 for i, w in enumerate(joined)}, manifest, self.token)
