"""The weight-sync group: a private TCPStore rendezvous, sync offers and plans, process groups.

The learner's rank 0 is the store's master; the store listens only on the address the learner
was given (``--host``; ``0.0.0.0`` is every interface, the user's explicit choice): torch's
TCPStore master binds the wildcard address whatever its ``host_name``, so ``open_store`` binds
a listening socket itself and hands it over (``master_listen_fd``, libuv backend).

Each broadcast ``k`` (k = 0, 1, 2, ...) is announced by a ``SyncOffer`` under
``wsync/offer/<k>``; the members that take it reply, and the learner then writes the
``SyncPlan`` under ``wsync/plan/<k>``: who takes part (worker id -> rank; the learner is rank 0),
the process-group generation and the bucket manifest (``join.py`` describes the exchange).
Both carry this learner start's token; a receiver ignores what does not. Membership changes
start a new generation: a fresh process group built over ``PrefixStore("wsync/gen/<g>/")``.
The group is never the default process group (FSDP owns that one), and every rendezvous and
collective has a timeout, so a dead worker fails one broadcast instead of hanging the learner.
See docs/design.md section 7.
"""

from __future__ import annotations

import datetime
import os
import socket
from typing import Literal

import msgspec
import torch
import torch.distributed as dist

from dynamo_async.gpu_share import SHARED_GPU_ENV
from dynamo_async.weights.buckets import Manifest

OFFER_KEY = "wsync/offer/{}"
REPLY_KEY = "wsync/reply/{}/{}"
PLAN_KEY = "wsync/plan/{}"
LATEST_KEY = "wsync/latest"
ACK_KEY = "wsync/ack/{}/{}"


class SyncOffer(msgspec.Struct, frozen=True):
    """Learner -> store: broadcast ``plan`` will carry ``version`` to those of ``members`` that
    reply within ``join_timeout_s``."""

    plan: int
    version: int
    members: tuple[str, ...]
    join_timeout_s: float
    token: str = ""


class SyncReply(msgspec.Struct, frozen=True):
    """Receiver -> store, for one offer: "join" (send me the weights) or "have" (I hold that
    version already); ``generation``: the group generation the receiver still holds (-1: none)."""

    kind: Literal["join", "have"]
    generation: int = -1


class SyncPlan(msgspec.Struct, frozen=True):
    """Learner -> store, after the join window of offer ``plan``: the members that joined."""

    plan: int
    generation: int
    ranks: dict[str, int]
    manifest: Manifest
    token: str = ""

    @property
    def world_size(self) -> int:
        return 1 + len(self.ranks)


def open_store(host: str, port: int, is_master: bool, timeout_s: float) -> dist.TCPStore:
    """The rendezvous store (``port`` 0 on the master picks a free port: ``store.port``); the
    master listens on ``host`` only (``"0.0.0.0"`` or ``""``: every interface)."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if not is_master:
        return dist.TCPStore(host, port, is_master=False, timeout=timeout, use_libuv=True)
    sock = listen_socket(host, port)
    store = dist.TCPStore(
        host or "0.0.0.0",
        sock.getsockname()[1],
        is_master=True,
        wait_for_workers=False,
        timeout=timeout,
        master_listen_fd=sock.fileno(),
        use_libuv=True,
    )
    sock.detach()  # the store's server owns the descriptor now (it closes it)
    return store


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port`` (``host`` a name or an IPv4/IPv6 address)."""
    wildcard = host in ("", "0.0.0.0")
    family = socket.AF_INET if wildcard else socket.AF_UNSPEC
    try:
        infos = socket.getaddrinfo(None if wildcard else host, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ValueError(f"weight-sync host: got {host!r} ({err}), expected an address of this machine") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(addr)
    sock.listen(socket.SOMAXCONN)
    return sock


def collective_backend(device: str) -> str:
    """The torch.distributed backend for tensors on ``device``: NCCL on GPUs, gloo on CPUs (the
    one place this choice is made: learner ranks, weight sync, workers)."""
    return "nccl" if device.startswith("cuda") else "gloo"


def sync_backend(device: str) -> str:
    """The weight sync's backend: ``collective_backend(device)``, except gloo when the launcher
    put the learner and its workers on one GPU (``SHARED_GPU_ENV``, dynamo_async/gpu_share.py):
    NCCL refuses two ranks of a group on one device, gloo broadcasts CUDA tensors through host memory."""
    if os.environ.get(SHARED_GPU_ENV) == "1":
        return "gloo"
    return collective_backend(device)


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
