"""Weight sync: the bucket wire format, and a WeightSender broadcasting to WeightReceivers that
run in separate (spawned) processes over gloo on 127.0.0.1.

Each receiver process reports what it staged as per-tensor checksums (dtype, shape, sha256 of
the bytes) through a multiprocessing queue, so the test compares exactly what arrived with
what was sent. Every process a test starts is stopped by its Process object, and the test
checks that it left no child behind.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import queue
import random
import signal
import time

import psutil
import pytest
import torch

from dynamo_async.weights.buckets import DTYPES, Manifest, pack_bucket, plan_manifest, unpack_bucket
from dynamo_async.weights.group import PLAN_KEY, decode_plan
from dynamo_async.weights.sender import WeightSender
from workers.receiver import WeightReceiver, load_staged

TIMEOUT_S = 3.0  # collective / rendezvous timeout of sender and receivers in the process tests


# ---------------------------------------------------------------------------------- helpers


def checksums(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[str, tuple[int, ...], str]]:
    out = {}
    for name, t in tensors.items():
        raw = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        out[name] = (str(t.dtype), tuple(t.shape), hashlib.sha256(raw).hexdigest())
    return out


def mixed_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """Mixed dtypes, a tensor larger than the test bucket size, and tied weights (two names, one storage)."""
    g = torch.Generator().manual_seed(seed)
    tied = torch.randn(16, 8, generator=g)
    tensors = {
        "embed.weight": tied,
        "lm_head.weight": tied,  # tied: same storage as embed.weight
        "layer0.w": torch.randn(8, 8, generator=g),
        "layer0.w_bf16": torch.randn(5, 7, generator=g).to(torch.bfloat16),
        "layer0.w_fp16": torch.randn(3, 9, generator=g).to(torch.float16),
        "layer0.count": torch.randint(-(1 << 40), 1 << 40, (6,), generator=g, dtype=torch.int64),
        "big.weight": torch.randn(64, 40, generator=g),  # 10240 bytes > BUCKET
        "layer1.bias": torch.randn(11, generator=g),
        "layer1.w_bf16": torch.randn(33, generator=g).to(torch.bfloat16),
        "layer1.step": torch.arange(3, dtype=torch.int64),
    }
    assert tensors["embed.weight"].data_ptr() == tensors["lm_head.weight"].data_ptr()
    return tensors


BUCKET = 1024  # bytes


def round_trip(tensors: dict[str, torch.Tensor], manifest: Manifest) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for b in range(len(manifest.bucket_bytes)):
        flat = pack_bucket(manifest, b, tensors)
        # a fresh buffer, as a receiver has: nothing is shared with the sender's tensors
        out.update(unpack_bucket(manifest, b, flat.clone()))
    return out


def _receiver_main(worker_id: str, port: int, timeout_s: float, out, stop) -> None:
    """A spawned receiver process: stage every broadcast it is named in and report checksums."""
    torch.set_num_threads(1)
    rx = WeightReceiver(worker_id, "127.0.0.1", port, "gloo", timeout_s=timeout_s, poll_s=0.01)
    rx.start()
    out.put(("ready", worker_id, -1, None))
    failures = 0
    while not stop.is_set():
        staged = rx.wait_for_version(0, timeout_s=0.05)
        if staged is not None:
            version, tensors = staged
            out.put(("staged", worker_id, version, checksums(tensors)))
        if rx.failures != failures:
            failures = rx.failures
            out.put(("failed", worker_id, failures, None))
    rx.stop()  # (no join: the receiver thread is a daemon, and the process ends here)


class Receivers:
    """Receiver processes of one test, their report queues, and clean-up by Process object.

    Each process has a queue of its own: a process killed while writing to a shared queue could
    leave that queue's lock held and silence the others."""

    def __init__(self, port: int):
        self.ctx = mp.get_context("spawn")
        self.port = port
        self.stop = self.ctx.Event()
        self.procs: dict[str, mp.Process] = {}
        self.queues: dict[str, object] = {}
        self.seen: list[tuple] = []

    def start(self, *worker_ids: str, wait_s: float = 60.0) -> None:
        for w in worker_ids:
            self.queues[w] = self.ctx.Queue()
            p = self.ctx.Process(
                target=_receiver_main,
                args=(w, self.port, TIMEOUT_S, self.queues[w], self.stop),
                name=f"rx-{w}",
                daemon=True,
            )
            p.start()
            self.procs[w] = p
        for w in worker_ids:
            self.expect("ready", w, wait_s=wait_s)

    def _next(self, worker: str, deadline: float) -> tuple | None:
        try:
            msg = self.queues[worker].get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            return None
        self.seen.append(msg)
        return msg

    def expect(self, kind: str, worker: str, version: int | None = None, wait_s: float = 20.0) -> tuple:
        """The first (already seen or next) message of ``kind`` from ``worker`` (of ``version``)."""

        def match(m):
            return m[0] == kind and m[1] == worker and (version is None or m[2] == version)

        for m in self.seen:
            if match(m):
                return m
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            m = self._next(worker, deadline)
            if m is not None and match(m):
                return m
        raise AssertionError(f"no {kind!r} from {worker} (version {version}) within {wait_s} s; got {self.seen}")

    def drain(self, wait_s: float) -> list[tuple]:
        deadline = time.monotonic() + wait_s
        for w, p in self.procs.items():
            if p.is_alive():
                while self._next(w, deadline) is not None:
                    pass
        return self.seen

    def staged_versions(self, worker: str) -> list[int]:
        return [m[2] for m in self.seen if m[0] == "staged" and m[1] == worker]

    def kill(self, worker: str) -> None:
        p = self.procs[worker]
        children = psutil.Process(p.pid).children(recursive=True)
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        assert not p.is_alive()
        _, alive = psutil.wait_procs(children, timeout=5)
        assert not alive, f"killed receiver {worker} left children {alive}"

    def close(self) -> None:
        self.stop.set()
        for w, p in self.procs.items():
            if p.is_alive():
                children = psutil.Process(p.pid).children(recursive=True)
                p.join(3 * TIMEOUT_S)
                if p.is_alive():
                    p.kill()
                    p.join(5)
                _, alive = psutil.wait_procs(children, timeout=5)
                assert not alive, f"receiver {w} left children {alive}"
            assert not p.is_alive(), f"receiver process {w} (pid {p.pid}) still alive"
        for q in self.queues.values():
            q.cancel_join_thread()
            q.close()


@pytest.fixture
def sender():
    s = WeightSender("127.0.0.1", 0, backend="gloo", timeout_s=TIMEOUT_S, bucket_bytes=BUCKET, join_timeout_s=1.0)
    yield s
    del s


@pytest.fixture
def receivers(sender):
    r = Receivers(sender.port)
    yield r
    r.close()


def plan_of(sender: WeightSender, plan: int):
    return decode_plan(sender.store.get(PLAN_KEY.format(plan)))


# ---------------------------------------------------------------------------- wire format


def test_manifest_round_trip_mixed_dtypes_shuffled_order_big_tensor_and_tied_weights():
    tensors = mixed_tensors()
    names = list(tensors)
    random.Random(7).shuffle(names)
    shuffled = {n: tensors[n] for n in names}
    manifest = plan_manifest(((n, t.dtype, t.shape) for n, t in shuffled.items()), version=3, bucket_bytes=BUCKET)

    assert manifest.version == 3
    assert [e.name for e in manifest.entries] == names  # the sender's order is kept
    got = round_trip(shuffled, manifest)
    assert set(got) == set(tensors)
    for name, t in tensors.items():
        assert got[name].dtype == t.dtype and got[name].shape == t.shape, name
        assert torch.equal(got[name], t), name
    assert checksums(got) == checksums(tensors)
    # tied weights travel under both names with equal contents
    assert torch.equal(got["embed.weight"], got["lm_head.weight"])
    # the tensor larger than a bucket got a bucket of its own
    big = next(e for e in manifest.entries if e.name == "big.weight")
    assert big.nbytes > BUCKET
    assert [e.name for e in manifest.bucket_entries(big.bucket)] == ["big.weight"]
    assert manifest.bucket_bytes[big.bucket] == big.nbytes


def test_manifest_buckets_are_dtype_homogeneous_bounded_and_non_overlapping():
    tensors = mixed_tensors(1)
    names = list(tensors)
    random.Random(3).shuffle(names)
    manifest = plan_manifest(((n, tensors[n].dtype, tensors[n].shape) for n in names), 0, bucket_bytes=BUCKET)
    assert len(manifest.bucket_bytes) > 4  # the test exercises several buckets
    for b, size in enumerate(manifest.bucket_bytes):
        entries = manifest.bucket_entries(b)
        assert entries, f"bucket {b} is empty"
        assert len({e.dtype for e in entries}) == 1, f"bucket {b} mixes dtypes {[e.dtype for e in entries]}"
        assert size <= BUCKET or len(entries) == 1, f"bucket {b} of {size} bytes holds {len(entries)} tensors"
        spans = sorted((e.offset, e.offset + e.nbytes) for e in entries)
        assert spans[0][0] == 0 and spans[-1][1] == size
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert end == start, f"bucket {b}: gap or overlap between tensors"
        elem = torch.empty((), dtype=DTYPES[entries[0].dtype]).element_size()
        assert all(e.offset % elem == 0 for e in entries), "a tensor is not aligned to its element size"


def test_unpacked_tensors_are_views_of_the_bucket():
    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4)}
    manifest = plan_manifest(((n, t.dtype, t.shape) for n, t in tensors.items()), 0, bucket_bytes=1 << 10)
    flat = pack_bucket(manifest, 0, tensors)
    views = unpack_bucket(manifest, 0, flat)
    flat.zero_()
    assert torch.equal(views["a"], torch.zeros(2, 3)) and torch.equal(views["b"], torch.zeros(4))


def test_plan_manifest_rejects_unsupported_dtype_and_empty_bucket_size():
    with pytest.raises(ValueError):
        plan_manifest([("x", torch.float64, (2,))], 0)
    with pytest.raises(ValueError):
        plan_manifest([("x", torch.float32, (2,))], 0, bucket_bytes=0)


# ------------------------------------------------------------------------------ load_staged


def _small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 2))
    m.register_buffer("scale", torch.ones(2))
    return m


def test_load_staged_sets_by_name_including_buffers_without_copying():
    model = _small_model()
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    new = {"0.weight": torch.full((3, 4), 0.5), "2.bias": torch.tensor([1.0, -1.0]), "scale": torch.tensor([2.0, 3.0])}
    param = model[0].weight
    assert load_staged(model, new) == 3
    state = model.state_dict()
    for name, value in new.items():
        assert torch.equal(state[name], value), name
    for name in set(before) - set(new):
        assert torch.equal(state[name], before[name]), f"{name} changed although not staged"
    # the parameter object is kept and now serves from the staged buffer: no copy (the receiver
    # keeps that staging slot intact while the engine uses it)
    assert model[0].weight is param and param.data_ptr() == new["0.weight"].data_ptr()
    odd = {"0.weight": torch.full((3, 4), 1.5, dtype=torch.float64)}  # another dtype: copied in
    load_staged(model, odd)
    assert param.dtype == torch.float32 and torch.equal(param, torch.full((3, 4), 1.5))


def test_load_staged_rejects_unknown_names_and_changes_nothing():
    model = _small_model()
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    with pytest.raises(ValueError, match="nope.weight"):
        load_staged(model, {"0.weight": torch.zeros(3, 4), "nope.weight": torch.zeros(1)})
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed by a rejected load"


def test_load_staged_accepts_a_tied_models_full_state_dict():
    """A tied-embedding model's ``state_dict()`` names the tied weight twice (embed and lm_head);
    the learner broadcasting ``model.state_dict()`` (the sender's documented usage) must load."""
    from dynamo_async.models import load_model

    src = load_model("builtin:tiny")
    dst = load_model("builtin:tiny")
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.1)
    state = {n: t.clone() for n, t in src.state_dict().items()}
    assert "lm_head.weight" in state and "lm_head.weight" not in dict(dst.named_parameters())
    load_staged(dst, state)
    for name, value in dst.state_dict().items():
        assert torch.equal(value, src.state_dict()[name]), name


# --------------------------------------------------------------- sender -> receiver processes


def test_broadcast_to_two_receiver_processes_checksums_equal(sender, receivers):
    receivers.start("w0", "w1")
    tensors = mixed_tensors(2)
    report = sender.broadcast(tensors, version=1, members=["w1", "w0"])
    assert report.error is None, report.error
    assert report.members == ("w0", "w1") and report.version == 1
    assert report.bytes == sum(plan_of(sender, report.plan).manifest.bucket_bytes) > 0
    want = checksums(tensors)
    for w in ("w0", "w1"):
        _, _, version, got = receivers.expect("staged", w, 1)
        assert got == want, f"{w} staged different weights"
        assert sender.store.get(f"wsync/ack/{report.plan}/{w}") == b"1"

    # a second broadcast over the same group (same generation) delivers the new weights
    tensors2 = mixed_tensors(3)
    report2 = sender.broadcast(tensors2, version=2, members=["w0", "w1"])
    assert report2.error is None, report2.error
    assert plan_of(sender, report2.plan).generation == plan_of(sender, report.plan).generation
    for w in ("w0", "w1"):
        assert receivers.expect("staged", w, 2)[3] == checksums(tensors2)


def test_membership_change_new_generation_new_member_receives_unnamed_receiver_skips(sender, receivers):
    receivers.start("w0", "w1")
    t1 = mixed_tensors(4)
    r1 = sender.broadcast(t1, version=1, members=["w0"])  # w1 is present but not named
    assert r1.error is None, r1.error
    assert receivers.expect("staged", "w0", 1)[3] == checksums(t1)

    t2 = mixed_tensors(5)
    r2 = sender.broadcast(t2, version=2, members=["w0", "w1"])  # w1 joins: a new generation
    assert r2.error is None, r2.error
    p1, p2 = plan_of(sender, r1.plan), plan_of(sender, r2.plan)
    assert p2.generation == p1.generation + 1
    assert p2.ranks == {"w0": 1, "w1": 2}
    for w in ("w0", "w1"):
        assert receivers.expect("staged", w, 2)[3] == checksums(t2)

    # a member that starts after plans exist follows from the next plan on
    receivers.start("w2")
    t3 = mixed_tensors(6)
    r3 = sender.broadcast(t3, version=3, members=["w0", "w1", "w2"])
    assert r3.error is None, r3.error
    assert plan_of(sender, r3.plan).generation == p2.generation + 1
    for w in ("w0", "w1", "w2"):
        assert receivers.expect("staged", w, 3)[3] == checksums(t3)

    seen = receivers.drain(0.3)
    assert receivers.staged_versions("w1") == [2, 3], "w1 staged a plan it was not named in"
    assert receivers.staged_versions("w2") == [3]
    assert not [m for m in seen if m[0] == "failed"], f"a receiver counted a failure: {seen}"


def test_a_dead_member_misses_the_broadcast_and_the_survivors_get_it_within_the_join_timeout(sender, receivers):
    receivers.start("w0", "w1")
    t1 = mixed_tensors(7)
    r1 = sender.broadcast(t1, version=1, members=["w0", "w1"])
    assert r1.error is None, r1.error
    receivers.expect("staged", "w1", 1)
    receivers.expect("staged", "w0", 1)

    receivers.kill("w1")
    t2 = mixed_tensors(8)
    start = time.monotonic()
    r2 = sender.broadcast(t2, version=2, members=["w0", "w1"])
    elapsed = time.monotonic() - start
    assert r2.error is None and r2.missed == ("w1",) and r2.bytes > 0, r2
    assert elapsed < 1.0 + 3.0, f"the broadcast took {elapsed:.1f} s with a 1 s join timeout"
    assert receivers.expect("staged", "w0", 2)[3] == checksums(t2)

    t3 = mixed_tensors(9)
    r3 = sender.broadcast(t3, version=3, members=["w0"])
    assert r3.error is None, r3.error
    assert plan_of(sender, r3.plan).generation == plan_of(sender, r2.plan).generation  # w0's group, reused
    assert receivers.expect("staged", "w0", 3)[3] == checksums(t3)


def test_receiver_thread_stops_and_joins(sender):
    """``stop()`` ends the receiver thread within ``poll_s``; joining it and asking whether it is
    alive must work (``threading.Thread`` calls its own ``_stop()`` method in ``join``)."""
    rx = WeightReceiver("w0", "127.0.0.1", sender.port, "gloo", timeout_s=TIMEOUT_S, poll_s=0.01)
    rx.start()
    assert rx.is_alive()
    rx.stop()
    rx.join(timeout=2.0)
    assert not rx.is_alive()


def test_broadcast_with_no_members_reports_an_error_at_once(sender):
    report = sender.broadcast(mixed_tensors(), version=1, members=[])
    assert report.error and report.members == () and report.bytes == 0


def test_member_that_never_joins_fails_the_broadcast_within_timeout(sender):
    start = time.monotonic()
    report = sender.broadcast(mixed_tensors(), version=1, members=["ghost"])
    elapsed = time.monotonic() - start
    assert report.error, "a broadcast to a member that never joined reported success"
    assert elapsed < TIMEOUT_S + 3.0, f"took {elapsed:.1f} s with a {TIMEOUT_S} s timeout"


def test_a_stopped_member_misses_the_broadcast_without_holding_it_up(sender, receivers):
    receivers.start("w0", "w1")
    assert sender.broadcast(mixed_tensors(10), version=1, members=["w0", "w1"]).error is None
    receivers.expect("staged", "w1", 1)
    receivers.expect("staged", "w0", 1)
    hung = receivers.procs["w1"]
    os.kill(hung.pid, signal.SIGSTOP)  # alive but silent: it cannot answer the offer
    try:
        big = {"big": torch.zeros(16 << 20, dtype=torch.uint8)}  # more than the socket buffers hold
        start = time.monotonic()
        report = sender.broadcast(big, version=2, members=["w0", "w1"])
        elapsed = time.monotonic() - start
    finally:
        os.kill(hung.pid, signal.SIGCONT)
    assert report.error is None and report.missed == ("w1",), report
    assert elapsed < 1.0 + 3.0, f"took {elapsed:.1f} s with a 1 s join timeout"
    receivers.kill("w1")
    t3 = mixed_tensors(11)
    report3 = sender.broadcast(t3, version=3, members=["w0"])
    assert report3.error is None, report3.error
    assert receivers.expect("staged", "w0", 3)[3] == checksums(t3)
