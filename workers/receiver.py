"""Worker side of the weight sync: a thread that joins every broadcast and stages the weights.

It follows the learner's sync plans (``dynamo_async.weights.group``) in order from the
latest one at start-up. For each plan that names this worker it joins that generation's
process group (built once per generation; never the default group), receives the flat
buckets into fresh staging buffers, and publishes ``(version, {name: view})``. The engine
takes the staged weights at its next safe point (between decode steps or batches) with
``take_staged()``, copies them into its model and bumps its policy version. A broadcast
that fails (timeout, the learner gave up on a dead peer) is counted and skipped: the
receiver waits for the next plan. A plan that does not name this worker (it joined after
the plan was made) is skipped too; the learner includes it in the next one.
"""

from __future__ import annotations

import threading
import time

import torch
import torch.distributed as dist

from dynamo_async.weights.buckets import unpack_bucket
from dynamo_async.weights.group import (
    ACK_KEY, LATEST_KEY, PLAN_KEY, SyncPlan, broadcast, decode_plan, make_group, open_store,
)


class WeightReceiver(threading.Thread):
    """Daemon thread; ``stop()`` ends it within ``poll_s``."""

    def __init__(self, worker_id: str, host: str, port: int, backend: str = "gloo",
                 timeout_s: float = 60.0, device: str = "cpu", poll_s: float = 0.02):
        super().__init__(name=f"weight-receiver-{worker_id}", daemon=True)
        self.worker_id, self.backend, self.timeout_s, self.device, self.poll_s = (
            worker_id, backend, timeout_s, device, poll_s)
        self.store = open_store(host, port, False, timeout_s)
        self.failures = 0
        self.received = 0
        self._next_plan = int(self.store.get(LATEST_KEY)) + 1 if self.store.check([LATEST_KEY]) else 0
        self._groups: dict[int, dist.ProcessGroup] = {}
        self._staged: tuple[int, dict[str, torch.Tensor]] | None = None
        self._lock = threading.Lock()
        self._new = threading.Condition(self._lock)
        self._halt = threading.Event()

    def take_staged(self) -> tuple[int, dict[str, torch.Tensor]] | None:
        """The newest staged (version, tensors), once; None if nothing new arrived."""
        with self._lock:
            staged, self._staged = self._staged, None
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
            staged, self._staged = self._staged, None
            return staged

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        while not self._halt.is_set():
            key = PLAN_KEY.format(self._next_plan)
            if not self.store.check([key]):
                time.sleep(self.poll_s)
                continue
            plan = decode_plan(self.store.get(key))
            self._next_plan += 1
            if self.worker_id in plan.ranks:
                self._receive(plan)

    def _receive(self, plan: SyncPlan) -> None:
        try:
            pg = self._group(plan)
            tensors: dict[str, torch.Tensor] = {}
            for b, nbytes in enumerate(plan.manifest.bucket_bytes):
                flat = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
                broadcast(pg, flat, self.timeout_s)
                tensors.update(unpack_bucket(plan.manifest, b, flat))
        except RuntimeError:  # DistError, gloo timeout: the learner gave up on this plan
            self.failures += 1
            self._groups.pop(plan.generation, None)
            return
        with self._new:
            self._staged = (plan.manifest.version, tensors)
            self._new.notify_all()
        self.received += 1
        self.store.set(ACK_KEY.format(plan.plan, self.worker_id), str(plan.manifest.version))

    def _group(self, plan: SyncPlan) -> dist.ProcessGroup:
        for gen in [g for g in self._groups if g != plan.generation]:
            del self._groups[gen]  # membership changed: the old generation is finished
        if plan.generation not in self._groups:
            self._groups[plan.generation] = make_group(self.store, plan.generation, plan.ranks[self.worker_id],
                                                       plan.world_size, self.backend, self.timeout_s)
        return self._groups[plan.generation]


def load_staged(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> int:
    """Copy staged tensors into ``model`` by parameter/buffer name; returns how many were set.

    Names the model lacks are an error (the learner and worker disagree on the architecture);
    tied weights appear once in ``named_parameters`` and are set once.
    """
    params = dict(model.named_parameters(remove_duplicate=False))  # tied weights under every name
    params.update(dict(model.named_buffers()))
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise ValueError(f"staged weights: got names the model lacks ({unknown[:5]}), expected the "
                         "learner and the workers to load the same model")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)
    return len(tensors)
