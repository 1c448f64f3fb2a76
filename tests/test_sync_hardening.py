"""Weight-sync hardening (docs/design.md section 7, ``dynamo_async/weights/join.py``): the store
listens on the learner's host only, plans carry the learner start's token, and no member, fake,
stopped or dead, holds a broadcast longer than the join timeout (or, once joined, the collective
timeout).

Real receivers run in spawned processes over gloo on 127.0.0.1 and report digests of what they
staged through their own queue; each test stops exactly the processes it started, by their
Process objects.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import queue
import signal
import socket
import time
from types import SimpleNamespace

import msgspec
import psutil
import pytest
import torch

from dynamo_async.config import load_config
from dynamo_async.learner.loop import Learner
from dynamo_async.protocol import Welcome, decode, encode
from dynamo_async.weights.buckets import plan_manifest
from dynamo_async.weights.group import (
    LATEST_KEY,
    OFFER_KEY,
    PLAN_KEY,
    REPLY_KEY,
    SyncOffer,
    SyncPlan,
    SyncReply,
    make_group,
    open_store,
)
from dynamo_async.weights.sender import SyncReport, WeightSender
from workers.receiver import WeightReceiver

TOKEN = "5ec7e7" * 5
JOIN_S = 1.0  # join timeout of the senders here
TIMEOUT_S = 3.0  # collective / rendezvous timeout of senders and receivers here
SLACK_S = 1.5  # scheduling on a loaded 2-core machine


def tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(32, 8, generator=g), "b": torch.randn(8, generator=g).to(torch.bfloat16)}


def digest(named: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(named):
        h.update(name.encode() + named[name].detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _receiver_main(worker_id: str, port: int, token: str, out, stop) -> None:
    """A spawned receiver process: report ("staged", version, digest) for each broadcast."""
    torch.set_num_threads(1)
    rx = WeightReceiver(worker_id, "127.0.0.1", port, "gloo", timeout_s=TIMEOUT_S, poll_s=0.01, token=token)
    rx.start()
    out.put(("ready", -1, ""))
    while not stop.is_set():
        staged = rx.wait_for_version(0, timeout_s=0.05)
        if staged is not None:
            out.put(("staged", staged[0], digest(staged[1])))
    rx.stop()


class Procs:
    """The receiver processes of one test, stopped by their Process objects."""

    def __init__(self, port: int):
        self.ctx = mp.get_context("spawn")
        self.port, self.stop = port, self.ctx.Event()
        self.procs: dict[str, mp.Process] = {}
        self.queues: dict[str, object] = {}
        self.staged: dict[str, dict[int, str]] = {}

    def start(self, *ids: str) -> None:
        for w in ids:
            self.queues[w], self.staged[w] = self.ctx.Queue(), {}
            p = self.ctx.Process(target=_receiver_main, args=(w, self.port, TOKEN, self.queues[w], self.stop))
            p.daemon = True
            p.start()
            self.procs[w] = p
        for w in ids:
            assert self.queues[w].get(timeout=60)[0] == "ready", w

    def digest_of(self, worker: str, version: int, wait_s: float = 20.0) -> str:
        """The digest ``worker`` staged for ``version`` (waits for it)."""
        deadline = time.monotonic() + wait_s
        while version not in self.staged[worker]:
            try:
                _, v, d = self.queues[worker].get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{worker} staged no version {version} in {wait_s} s") from None
            self.staged[worker][v] = d
        return self.staged[worker][version]

    def close(self) -> None:
        self.stop.set()
        for w, p in self.procs.items():
            if p.is_alive():
                os.kill(p.pid, signal.SIGCONT)  # a test may have stopped it
            p.join(3 * TIMEOUT_S)
            if p.is_alive():
                p.kill()
                p.join(5)
            assert not p.is_alive(), f"receiver {w} (pid {p.pid}) still alive"
        for q in self.queues.values():
            q.cancel_join_thread()
            q.close()


@pytest.fixture
def sender():
    return WeightSender("127.0.0.1", 0, "gloo", timeout_s=TIMEOUT_S, token=TOKEN, join_timeout_s=JOIN_S)


@pytest.fixture
def procs(sender):
    p = Procs(sender.port)
    yield p
    p.close()


def timed(fn, *args) -> tuple[SyncReport, float]:
    start = time.monotonic()
    out = fn(*args)
    return out, time.monotonic() - start


# ----------------------------------------------------------------------- where the store listens


def _listening(port: int) -> set[str]:
    return {
        c.laddr.ip for c in psutil.Process().net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port
    }


def _other_address() -> str | None:
    """This machine's address on its default route, if it has one besides loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.254", 9))  # no packet is sent: this only picks the route
        except OSError:
            return None
        ip = s.getsockname()[0]
    return None if ip.startswith("127.") else ip


def test_store_listens_only_on_the_given_host(sender):
    assert _listening(sender.port) == {"127.0.0.1"}
    ip = _other_address()
    if ip is not None:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((ip, sender.port), timeout=2).close()
    wild = WeightSender("0.0.0.0", 0, "gloo", timeout_s=TIMEOUT_S)  # every interface: the user's choice
    assert _listening(wild.port) == {"0.0.0.0"}
    with pytest.raises(ValueError, match="weight-sync host"):
        WeightSender("no-such-host.invalid", 0, "gloo")


# ----------------------------------------------------------------------------- forged plans


def _wait(condition, wait_s: float = 5.0) -> None:
    deadline = time.monotonic() + wait_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_forged_plans_are_ignored_counted_and_change_nothing(sender):
    rx = WeightReceiver("w0", "127.0.0.1", sender.port, "gloo", timeout_s=TIMEOUT_S, poll_s=0.01, token=TOKEN)
    rx.start()
    forger = open_store("127.0.0.1", sender.port, False, TIMEOUT_S)
    try:
        t1 = tensors(1)
        assert sender.broadcast(t1, 1, ["w0"]).members == ("w0",)
        version, staged = rx.wait_for_version(1, 10.0)
        assert version == 1 and digest(staged) == digest(t1)

        manifest = plan_manifest(((n, t.dtype, t.shape) for n, t in t1.items()), 777777)

        def forge(make, count: int) -> int:
            """Write the offer ``make(k)`` at the next index, as a peer of the store can."""
            k = int(forger.get(LATEST_KEY)) + 1
            offer = make(k)
            forger.set(OFFER_KEY.format(k), offer if isinstance(offer, bytes) else msgspec.msgpack.encode(offer))
            forger.set(LATEST_KEY, str(k))
            _wait(lambda: rx.rejected_plans == count)
            return k

        k = forge(lambda k: SyncOffer(k, 777777, ("w0",), 1.0, "not-the-token"), 1)
        assert not forger.check([REPLY_KEY.format(k, "w0")])
        k = forge(lambda k: SyncOffer(k, 1, ("w0",), 1.0, TOKEN), 2)  # right token, version not above 1
        assert msgspec.msgpack.decode(forger.get(REPLY_KEY.format(k, "w0")), type=SyncReply).kind == "have"
        k = forge(lambda k: SyncOffer(k, 0, ("w0",), 1.0, TOKEN), 3)  # right token, an older version
        assert not forger.check([REPLY_KEY.format(k, "w0")])
        forge(lambda k: b"\x93garbage", 4)
        # the tester's attack: a plan at version 777777, then a gloo broadcast of zeros
        k = forge(lambda k: SyncOffer(k, 777777, ("w0",), 1.0, "guess"), 5)
        forger.set(PLAN_KEY.format(k), msgspec.msgpack.encode(SyncPlan(k, 99, {"w0": 1}, manifest, "guess")))
        with pytest.raises(RuntimeError):  # the receiver never joins the forged group
            make_group(forger, 99, 0, 2, "gloo", 1.0)
        assert rx.version == 1 and rx.staged_version() == -1 and rx.received == 1

        # the learner's next broadcasts reach it again (the first may fall on a forged index)
        t2 = tensors(2)
        for _ in range(10):
            if "w0" in sender.broadcast(t2, 2, ["w0"]).members:
                break
        version, staged = rx.wait_for_version(2, 10.0)
        assert version == 2 and digest(staged) == digest(t2)
        assert rx.rejected_plans == 5 and rx.failures == 0
    finally:
        rx.stop()
        rx.join(timeout=5)
    assert not rx.is_alive()


def test_welcome_carries_the_sync_token():
    welcome = Welcome(worker_id="w", config_yaml="", sync_host="h", sync_port=1, policy_version=0, sync_token=TOKEN)
    assert decode(encode(welcome)).sync_token == TOKEN


# ---------------------------------------------------------------- members that do not join


def test_member_that_never_joins_is_dropped_within_the_join_timeout(sender, procs):
    procs.start("w0")
    t1 = tensors(3)
    report, elapsed = timed(sender.broadcast, t1, 1, ["ghost", "w0"])
    assert elapsed < JOIN_S + SLACK_S, f"took {elapsed:.1f} s with a {JOIN_S} s join timeout"
    assert report.error is None and report.members == ("w0",) and report.missed == ("ghost",)
    assert procs.digest_of("w0", 1) == digest(t1)
    # a laggard no longer holds the window open once the others replied
    t2 = tensors(4)
    report, elapsed = timed(sender.broadcast, t2, 2, ["ghost", "w0"])
    assert elapsed < 0.25 + SLACK_S / 2, f"the known laggard cost {elapsed:.2f} s"
    assert report.members == ("w0",) and report.missed == ("ghost",)
    assert procs.digest_of("w0", 2) == digest(t2)
    report, elapsed = timed(sender.broadcast, t2, 2, ["ghost"])  # only the ghost: skipped
    assert report.error and report.members == () and report.bytes == 0 and elapsed < JOIN_S + SLACK_S


def test_stopped_receiver_holds_a_broadcast_at_most_the_join_timeout_and_catches_up(sender, procs):
    procs.start("w0", "w1")
    assert sender.broadcast(tensors(5), 1, ["w0", "w1"]).members == ("w0", "w1")
    procs.digest_of("w1", 1)
    stopped = procs.procs["w1"]
    os.kill(stopped.pid, signal.SIGSTOP)
    try:
        t2 = tensors(6)
        report, elapsed = timed(sender.broadcast, t2, 2, ["w0", "w1"])
        assert elapsed < JOIN_S + SLACK_S, f"a stopped receiver held the broadcast {elapsed:.1f} s"
        assert report.error is None and report.members == ("w0",) and report.missed == ("w1",)
        assert procs.digest_of("w0", 2) == digest(t2)
    finally:
        os.kill(stopped.pid, signal.SIGCONT)
    for _ in range(10):  # the learner's catch-up broadcasts, while it waits for a batch
        report = sender.broadcast(t2, 2, ["w1"])
        if report.members == ("w1",):
            break
        time.sleep(0.2)
    assert report.members == ("w1",), report
    assert procs.digest_of("w1", 2) == digest(t2)


def test_dead_member_is_dropped_within_the_join_timeout_and_the_survivor_gets_the_weights(sender, procs):
    procs.start("w0", "w1")
    assert sender.broadcast(tensors(7), 1, ["w0", "w1"]).error is None
    procs.digest_of("w0", 1)
    dead = procs.procs["w1"]
    dead.kill()
    dead.join(10)
    t2 = tensors(8)
    report, elapsed = timed(sender.broadcast, t2, 2, ["w0", "w1"])
    assert elapsed < JOIN_S + SLACK_S and report.members == ("w0",) and report.missed == ("w1",)
    assert procs.digest_of("w0", 2) == digest(t2)


def test_member_that_joins_but_never_arrives_fails_within_the_collective_timeout(sender, procs):
    procs.start("w0")
    fake = open_store("127.0.0.1", sender.port, False, TIMEOUT_S)
    fake.set(REPLY_KEY.format(0, "fake"), msgspec.msgpack.encode(SyncReply("join")))  # then silence
    report, elapsed = timed(sender.broadcast, tensors(9), 1, ["fake", "w0"])
    assert report.error and report.bytes == 0
    assert elapsed < TIMEOUT_S + SLACK_S, f"took {elapsed:.1f} s with a {TIMEOUT_S} s collective timeout"
    t2 = tensors(10)
    for _ in range(5):  # w0 may still be leaving the failed rendezvous
        report = sender.broadcast(t2, 2, ["w0"])
        if report.members == ("w0",) and report.error is None:
            break
    assert procs.digest_of("w0", 2) == digest(t2)


# ------------------------------------------------------------------- the learner's bookkeeping


def _learner(live, sent_to, report: SyncReport, calls: list) -> SimpleNamespace:
    """What ``Learner.broadcast`` reads, with a sender that records whom it was asked to reach."""
    return SimpleNamespace(
        service=SimpleNamespace(live_receivers=lambda: list(live)),
        _sent_to=tuple(sent_to),
        version=3,
        dist=SimpleNamespace(sharded=True),
        _weights={},
        sender=SimpleNamespace(broadcast=lambda weights, version, members: calls.append(members) or report),
    )


@pytest.mark.parametrize(
    "force, sent_to, report, targets, after",
    [
        (False, ("a",), SyncReport(0, 3, ("b",), 1, 0.1, missed=("c",)), ("b", "c"), ("a", "b")),
        (True, ("a", "b", "c"), SyncReport(0, 3, ("a",), 1, 0.1, missed=("b", "c")), ("a", "b", "c"), ("a",)),
        (True, (), SyncReport(0, 3, ("a", "b"), 0, 0.1, "timeout", current=("c",)), ("a", "b", "c"), ("c",)),
        (False, ("a", "x"), SyncReport(0, 3, (), 0, 0.1, "none joined", missed=("b", "c")), ("b", "c"), ("a",)),
    ],
    ids=["catch-up", "step-with-misses", "failed-collective", "nobody-joined"],
)
def test_learner_offers_only_members_without_the_version_and_never_counts_a_miss(
    force, sent_to, report, targets, after
):
    calls = []
    learner = _learner(("a", "b", "c"), sent_to, report, calls)
    Learner.broadcast(learner, force)
    assert calls == [targets]
    assert learner._sent_to == after


def test_weights_config_defaults_and_bounds():
    cfg = load_config(None, ["model.name=builtin:tiny"])
    assert cfg.weights.join_timeout_s == 5.0 and cfg.weights.timeout_s == 60.0
    assert load_config(None, ["model.name=builtin:tiny", "weights.join_timeout_s=0.5"]).weights.join_timeout_s == 0.5
    for bad in ("weights.join_timeout_s=0", "weights.timeout_s=-1"):
        with pytest.raises(ValueError, match="weights"):
            load_config(None, ["model.name=builtin:tiny", bad])
