"""Worker side of the weight sync: a thread that joins every broadcast and stages the weights.

It follows the learner's sync offers (``dynamo_async/weights/join.py``) in order from the
latest one at start-up. It answers an offer that names this worker, carries the token of its
Welcome and a version above the one it holds: it joins, waits for the plan and, if the plan
names it (it replied in time), joins that generation's process group (built once per
generation; never the default group), receives the flat buckets into fresh staging buffers,
and publishes ``(version, {name: view})``. Any other offer or plan (a wrong token, an old
version, a value that does not decode) is ignored, counted in ``rejected_plans`` and warned
about on stderr; the weights stay as they are. The engine takes the staged weights at its next
safe point (between decode steps or batches) with ``take_staged()``, copies them into its model
and bumps its policy version. A broadcast that fails (timeout, the learner gave up on a dead
peer) is counted in ``failures`` and skipped: the receiver waits for the next offer. An offer
that does not name this worker, or whose plan is out already (this worker was stopped or slow),
is skipped too; the learner offers the weights again.
"""

from __future__ import annotations

import sys
import threading
import time

import torch
import torch.distributed as dist

from dynamo_async.weights.buckets import unpack_bucket
from dynamo_async.weights.group import (
    ACK_KEY,
    LATEST_KEY,
    OFFER_KEY,
    PLAN_KEY,
    SyncOffer,
    SyncPlan,
    SyncReply,
    broadcast,
    make_group,
    open_store,
)
from dynamo_async.weights.join import await_plan, read, send_reply, token_matches, window_closed


class WeightReceiver(threading.Thread):
    """Daemon thread; ``stop()`` ends it within ``poll_s`` (and any broadcast in progress)."""

    def __init__(
        self,
        worker_id: str,
        host: str,
        port: int,
        backend: str = "gloo",
        timeout_s: float = 60.0,
        device: str = "cpu",
        poll_s: float = 0.005,
        token: str = "",
    ):
        super().__init__(name=f"weight-receiver-{worker_id}", daemon=True)
        self.worker_id, self.backend, self.timeout_s, self.device, self.poll_s = (
            worker_id,
            backend,
            timeout_s,
            device,
            poll_s,
        )
        self.token = token  # the Welcome's: offers and plans must carry it
        self.store = open_store(host, port, False, timeout_s)
        self.failures = 0
        self.received = 0
        self.rejected_plans = 0
        self.version = -1  # the newest version received; an offer must be above it
        self._next_plan = self._latest_offer()
        self._groups: dict[int, dist.ProcessGroup] = {}
        self._staged: tuple[int, dict[str, torch.Tensor]] | None = None
        # Three reusable sets of staging buffers: one being received, the staged one, and the
        # one whose views the engine may be serving from (``load_staged`` swaps by reference).
        self._slots: list[list[torch.Tensor]] = [[], [], []]
        self._staged_slot: int | None = None
        self._in_use_slot: int | None = None
        self._lock = threading.Lock()
        self._new = threading.Condition(self._lock)
        self._halt = threading.Event()

    def _latest_offer(self) -> int:
        """Where to start following: the newest offer (skipped if its window closed), else 0."""
        latest = self.store.get(LATEST_KEY) if self.store.check([LATEST_KEY]) else b"0"
        return int(latest) if latest.isdigit() else 0

    def take_staged(self) -> tuple[int, dict[str, torch.Tensor]] | None:
        """The newest staged (version, tensors), once; None if nothing new arrived."""
        with self._lock:
            return self._take()

    def _take(self) -> tuple[int, dict[str, torch.Tensor]] | None:
        staged, self._staged = self._staged, None
        if staged is not None:
            self._in_use_slot, self._staged_slot = self._staged_slot, None
        return staged

    def staged_version(self) -> int:
        """Version of the staged weights, or -1 when nothing new is staged (does not take them)."""
        with self._lock:
            return self._staged[0] if self._staged is not None else -1

    def wait_for_version(self, version: int, timeout_s: float) -> tuple[int, dict[str, torch.Tensor]] | None:
        """Block until weights of at least ``version`` are staged (a late joiner's first weights)."""
        deadline = time.monotonic() + timeout_s
        with self._new:
            while self._staged is None or self._staged[0] < version:
                left = deadline - time.monotonic()
                if left <= 0 or self._halt.is_set():
                    return None
                self._new.wait(left)
            return self._take()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        while not self._halt.is_set():
            key = OFFER_KEY.format(self._next_plan)
            try:
                offered = self.store.check([key])  # a cheap round trip; store.wait would log each timeout
            except dist.DistNetworkError:  # the learner is gone; a restarted one gets a new receiver
                print(f"weight receiver {self.worker_id}: the learner's weight-sync store closed; stopping", flush=True)
                return
            if not offered:
                self._halt.wait(self.poll_s)
                continue
            k, self._next_plan = self._next_plan, self._next_plan + 1
            offer = read(self.store, key, SyncOffer)
            if offer is None:
                self._reject(k, "the offer does not decode")
            elif self.worker_id in offer.members and not window_closed(self.store, k) and self._answer(k, offer):
                self._follow(k, offer)

    def _answer(self, k: int, offer: SyncOffer) -> bool:
        """Reply to offer ``k`` (join.py, step 2); True if this receiver joined."""
        if offer.plan != k or not token_matches(offer.token, self.token):
            return self._reject(k, "its token is not this learner start's")
        if offer.version <= self.version:
            if offer.version == self.version:  # the learner re-offers after a failed broadcast
                send_reply(self.store, k, self.worker_id, SyncReply("have"))
            return self._reject(k, f"version {offer.version} is not above the {self.version} held")
        send_reply(self.store, k, self.worker_id, SyncReply("join", max(self._groups, default=-1)))
        return True

    def _follow(self, k: int, offer: SyncOffer) -> None:
        """Wait for the plan of offer ``k``; receive the broadcast if it names this receiver."""
        wait_s = offer.join_timeout_s + self.timeout_s  # the window, and a slow learner
        if not await_plan(self.store, k, wait_s, self._halt, self.poll_s):
            self.failures += int(not self._halt.is_set())  # the learner never closed the window
            return
        plan = read(self.store, PLAN_KEY.format(k), SyncPlan)
        if plan is None or plan.plan != k or not token_matches(plan.token, self.token):
            self._reject(k, "the plan does not decode or its token is not this learner start's")
        elif plan.manifest.version != offer.version:
            self._reject(k, f"the plan's version {plan.manifest.version} is not the offer's {offer.version}")
        elif self.worker_id in plan.ranks:
            self._receive(plan)

    def _reject(self, k: int, why: str) -> bool:
        """Count and report an ignored offer or plan; False (for ``_answer``)."""
        self.rejected_plans += 1
        print(f"weight receiver {self.worker_id}: ignored sync plan {k}: {why}", file=sys.stderr, flush=True)
        return False

    def _receive(self, plan: SyncPlan) -> None:
        slot = self._free_slot(plan.manifest.bucket_bytes)
        try:
            pg = self._group(plan)
            tensors: dict[str, torch.Tensor] = {}
            for b, flat in enumerate(self._slots[slot]):
                broadcast(pg, flat, self.timeout_s)
                tensors.update(unpack_bucket(plan.manifest, b, flat))
        except RuntimeError:  # DistError, gloo timeout: the learner gave up on this plan
            self.failures += 1
            self._groups.pop(plan.generation, None)
            return
        with self._new:
            self._staged, self._staged_slot = (plan.manifest.version, tensors), slot
            self._new.notify_all()
        self.received += 1
        self.version = plan.manifest.version
        self.store.set(ACK_KEY.format(plan.plan, self.worker_id), str(plan.manifest.version))

    def _free_slot(self, sizes: tuple[int, ...]) -> int:
        """A staging slot neither staged nor in use, with buffers of ``sizes`` (reused if they fit)."""
        with self._lock:
            slot = next(i for i in range(3) if i not in (self._staged_slot, self._in_use_slot))
        if [t.numel() for t in self._slots[slot]] != list(sizes):
            self._slots[slot] = [torch.empty(n, dtype=torch.uint8, device=self.device) for n in sizes]
        return slot

    def _group(self, plan: SyncPlan) -> dist.ProcessGroup:
        for gen in [g for g in self._groups if g != plan.generation]:
            del self._groups[gen]  # membership changed: the old generation is finished
        if plan.generation not in self._groups:
            self._groups[plan.generation] = make_group(
                self.store, plan.generation, plan.ranks[self.worker_id], plan.world_size, self.backend, self.timeout_s
            )
        return self._groups[plan.generation]


def load_staged(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> int:
    """Point ``model``'s parameters/buffers at the staged tensors by name (no copy when device,
    dtype and shape match; a copy otherwise); returns how many were set.

    The receiver keeps a staged set intact while the engine serves from it (see ``_slots``).
    Names the model lacks are an error (the learner and worker disagree on the architecture);
    tied weights may come under either name.
    """
    params = dict(model.named_parameters(remove_duplicate=False))  # tied weights under every name
    params.update(dict(model.named_buffers()))
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise ValueError(
            f"staged weights: got names the model lacks ({unknown[:5]}), expected the "
            "learner and the workers to load the same model"
        )
    with torch.no_grad():
        for name, value in tensors.items():
            target = params[name]
            same = target.device == value.device and target.dtype == value.dtype and target.shape == value.shape
            if same:
                target.data = value
            else:
                target.copy_(value)
    return len(tensors)
