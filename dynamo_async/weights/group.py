"""The weight-sync group: a private TCPStore rendezvous, sync plans, and process groups.

The learner's rank 0 is the store's master. Each broadcast is announced by a ``SyncPlan``
written under ``wsync/plan/<k>`` (k = 0, 1, 2, ...): who takes part (worker id -> rank; the
learner is rank 0), the process-group generation and the bucket manifest. Membership changes
(a worker joined, left or died) start a new generation: a fresh process group built over
``PrefixStore("wsync/gen/<g>/")``. The group is never the default process group (FSDP owns
that one), and every rendezvous and collective has a timeout, so a dead worker fails one
broadcast instead of hanging the learner.
"""

from __future__ import annotations

import datetime

import msgspec
import torch
import torch.distributed as dist

from dynamo_async.weights.buckets import Manifest

PLAN_KEY = "wsync/plan/{}"
LATEST_KEY = "wsync/latest"
ACK_KEY = "wsync/ack/{}/{}"


class SyncPlan(msgspec.Struct, frozen=True):
    plan: int
    generation: int
    ranks: dict[str, int]
    manifest: Manifest

    @property
    def world_size(self) -> int:
        return 1 + len(self.ranks)


def open_store(host: str, port: int, is_master: bool, timeout_s: float) -> dist.TCPStore:
    """The rendezvous store (``port`` 0 on the master picks a free port: ``store.port``)."""
    return dist.TCPStore(
        host,
        port,
        is_master=is_master,
        wait_for_workers=False,
        timeout=datetime.timedelta(seconds=timeout_s),
        use_libuv=True,
    )


def collective_backend(device: str) -> str:
    """The torch.distributed backend for tensors on ``device``: NCCL on GPUs, gloo on CPUs (the
    one place this choice is made: learner ranks, weight sync, workers)."""
    return "nccl" if device.startswith("cuda") else "gloo"


def make_group(
    store: dist.Store, generation: int, rank: int, world: int, backend: str, timeout_s: float
) -> dist.ProcessGroup:
    """A standalone process group of one generation (blocks until all ranks arrive or times out)."""
    prefixed = dist.PrefixStore(f"wsync/gen/{generation}/", store)
    timeout = datetime.timedelta(seconds=timeout_s)
    if backend == "gloo":
        return dist.ProcessGroupGloo(prefixed, rank, world, timeout)
    if backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(prefixed, rank, world, opts)
    raise ValueError(f"weight-sync backend: got {backend!r}, expected 'gloo' or 'nccl'")


def broadcast(pg: dist.ProcessGroup, tensor: torch.Tensor, timeout_s: float) -> None:
    """Broadcast ``tensor`` from rank 0 of ``pg`` in place, within ``timeout_s``."""
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    opts.timeout = datetime.timedelta(seconds=timeout_s)
    pg.broadcast([tensor], opts).wait()


def encode_plan(plan: SyncPlan) -> bytes:
    return msgspec.msgpack.encode(plan)


def decode_plan(data: bytes) -> SyncPlan:
    return msgspec.msgpack.decode(data, type=SyncPlan)
