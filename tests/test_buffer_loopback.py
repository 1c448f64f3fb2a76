"""Buffer over real ZeroMQ sockets on 127.0.0.1: workers in threads, each with its own BufferClient.

Every fake completion carries a fingerprint of what its worker was given (group id, sample index,
a checksum of the prompt id), so the learner side can prove that each response stayed with its own
prompt, even for groups of unequal size, interleaved across workers in random order.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import yaml
import zmq
from sample_records import sample_record

from buffer.client import BufferClient, query_status
from buffer.pool import PoolPrompt
from buffer.server import BufferServer
from buffer.service import BufferService
from dynamo_async.config import config_from_dict, load_config
from dynamo_async.protocol import (
    Completion,
    Heartbeat,
    NoWork,
    WorkGrant,
    WorkItem,
    WorkRequest,
    decode,
    encode,
)

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def make_prompts(n: int) -> list[PoolPrompt]:
    return [
        PoolPrompt(f"p{i}", f"What is {i}+{i}?", str(2 * i), np.arange(2 + i % 5, dtype=np.int32) * 10 + i)
        for i in range(n)
    ]


PROMPTS = make_prompts(24)
BY_ID = {p.prompt_id: p for p in PROMPTS}


def make_service(*overrides: str, unequal: bool = True) -> BufferService:
    cfg = load_config(
        TINY,
        [
            "allocation.gen_batch_prompts=4",
            "allocation.avg_rollouts=4",
            "allocation.g_min=1",
            "allocation.g_max=9",
            *overrides,
        ],
    )
    svc = BufferService(cfg, PROMPTS)
    if unequal:  # histories with different variances -> water-filled budgets of unequal size
        svc.pool.attempts[:] = 10
        svc.pool.successes[:] = np.arange(len(PROMPTS)) % 11
    return svc


def fingerprint(prompt_id: str) -> int:
    return zlib.crc32(prompt_id.encode()) & 0x7FFFFFFF


def fake_completion(
    item: WorkItem, sample_index: int, worker_id: str, version: int, rng: np.random.Generator
) -> Completion:
    n = int(rng.integers(3, 40))
    tokens = rng.integers(0, 50_000, n).astype(np.int32)
    tokens[:3] = [item.group_id, sample_index, fingerprint(item.prompt_id)]
    acc = (item.group_id * 7 + sample_index) % 3 == 0
    sample = sample_record(
        item.group_id,
        item.prompt_id,
        sample_index,
        tokens,
        -rng.random(n),
        np.full(n, version),
        worker_id=worker_id,
        acc=int(acc),
        reward=2.0 * acc - 1.0,
    )
    return Completion(lease_id=item.lease_id, sample=sample)


class Leases:
    """What every worker was handed: (worker, group, sample) rows, and what each item said."""

    def __init__(self):
        self.lock = threading.Lock()
        self.rows: list[tuple[str, int, int]] = []
        self.items: dict[int, WorkItem] = {}

    def add(self, worker_id: str, item: WorkItem) -> None:
        with self.lock:
            self.items[item.lease_id] = item
            self.rows.extend((worker_id, item.group_id, i) for i in item.sample_indices)

    def by_group(self) -> dict[int, set[int]]:
        out: dict[int, set[int]] = {}
        with self.lock:
            for _, g, i in self.rows:
                out.setdefault(g, set()).add(i)
        return out


class Worker(threading.Thread):
    """Asks for work with its capacity, answers every sample in a random order, until stopped."""

    def __init__(self, server: BufferServer, worker_id: str, capacity: int, leases: Leases, seed: int):
        super().__init__(name=f"fake-worker-{worker_id}", daemon=True)
        self.ep, self.worker_id, self.capacity, self.leases = server.endpoints, worker_id, capacity, leases
        self.service = server.service
        self.rng = np.random.default_rng(seed)
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.sent = 0

    def run(self) -> None:
        try:
            with BufferClient(self.ep.host, self.ep.work, self.ep.completions, self.worker_id, timeout_s=5) as client:
                client.hello("fake", self.capacity)
                while not self.stop_event.is_set():
                    version = self.service.version
                    got = client.request_work(self.capacity, version)
                    if isinstance(got, NoWork):
                        client.send(Heartbeat(worker_id=self.worker_id, lease_ids=(), policy_version=version))
                        self.stop_event.wait(0.02)
                        continue
                    samples = []
                    for item in got.items:
                        self.leases.add(self.worker_id, item)
                        samples.extend((item, i) for i in item.sample_indices)
                    assert sum(len(it.sample_indices) for it in got.items) <= self.capacity
                    self.rng.shuffle(samples)
                    for item, i in samples:
                        client.send(fake_completion(item, i, self.worker_id, version, self.rng))
                        self.sent += 1
        except BaseException as err:  # reported by the test
            self.error = err

    def halt(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)
        assert not self.is_alive(), f"worker {self.worker_id} did not stop"
        assert self.error is None, f"worker {self.worker_id} failed: {self.error!r}"


def check_groups(batches, leases: Leases) -> None:
    """Every group carries its own prompt, and every sample is the one generated for it."""
    by_group = leases.by_group()
    items_by_group: dict[int, list[WorkItem]] = {}
    for it in leases.items.values():
        items_by_group.setdefault(it.group_id, []).append(it)
    for batch in batches:
        for group in batch.groups:
            _check_group(group, items_by_group.get(group.group_id, []), by_group[group.group_id])


def _check_group(group, items: list[WorkItem], leased: set[int]) -> None:
    prompt = BY_ID[group.prompt_id]
    np.testing.assert_array_equal(group.prompt_token_ids, prompt.token_ids)
    assert group.answer == prompt.answer
    assert items, f"group {group.group_id} reached the learner but was never leased"
    for it in items:
        assert it.prompt_id == group.prompt_id and it.answer == prompt.answer
        np.testing.assert_array_equal(np.frombuffer(it.prompt_token_ids, "<i4"), prompt.token_ids)
    assert [s.sample_index for s in group.samples] == sorted(leased)
    for s in group.samples:
        assert s.token_array[:3].tolist() == [group.group_id, s.sample_index, fingerprint(group.prompt_id)]
        assert len(s.logprob_array) == len(s.version_array) == len(s.token_array)
        assert s.acc == int((group.group_id * 7 + s.sample_index) % 3 == 0)


def learner_loop(svc: BufferService, until, deadline_s: float) -> list:
    """Pull batches (bumping the version after each) until ``until(batches)`` or the deadline."""
    batches = []
    deadline = time.monotonic() + deadline_s
    while not until(batches) and time.monotonic() < deadline:
        batch = svc.pull_batch(timeout=0.2)
        if batch is not None:
            batches.append(batch)
            svc.set_version(svc.version + 1)
    return batches


def test_unequal_groups_from_interleaved_workers_stay_with_their_prompts():
    svc = make_service()
    leases = Leases()
    with BufferServer(svc) as server:
        workers = [Worker(server, f"w{j}", cap, leases, seed=j) for j, cap in enumerate([1, 3, 7, 13])]
        for w in workers:
            w.start()
        try:
            batches = learner_loop(svc, lambda b: len(b) >= 6, deadline_s=20)
        finally:
            for w in workers:
                w.halt()
        status = query_status(server.endpoints.host, server.endpoints.status)
    assert len(batches) >= 6, f"only {len(batches)} batches; status {status}"
    check_groups(batches, leases)
    sizes = Counter()
    delivered = Counter()
    for batch in batches:
        assert len(batch.groups) == 4
        for g in batch.groups:
            sizes[len(g.samples)] += 1
            delivered.update((g.group_id, s.sample_index) for s in g.samples)
    assert len(sizes) >= 2, f"expected groups of unequal sizes, got sizes {dict(sizes)}"
    assert max(delivered.values()) == 1
    # Samples of several workers were mixed within groups (the interleaving really happened).
    mixed = [g for b in batches for g in b.groups if len({s.worker_id for s in g.samples}) > 1]
    assert mixed, "no group had samples from more than one worker"
    assert status.rejected == {}


def _vanishing_worker(server: BufferServer, leases: Leases, worker_id: str, capacity: int, answer: int):
    """Takes work over raw sockets, answers ``answer`` samples, then disappears without a goodbye."""
    ep = server.endpoints
    ctx = zmq.Context()
    dealer, push = ctx.socket(zmq.DEALER), ctx.socket(zmq.PUSH)
    try:
        dealer.connect(ep.url(ep.work))
        push.connect(ep.url(ep.completions))
        dealer.send(encode(WorkRequest(worker_id=worker_id, capacity=capacity, policy_version=0)))
        assert dealer.poll(5000), "no answer to the work request"
        grant = decode(dealer.recv())
        assert isinstance(grant, WorkGrant), grant
        samples = []
        for item in grant.items:
            leases.add(worker_id, item)
            samples.extend((item, i) for i in item.sample_indices)
        rng = np.random.default_rng(99)
        rng.shuffle(samples)
        done = samples[:answer]
        for item, i in done:
            push.send(encode(fake_completion(item, i, worker_id, 0, rng)))
        return {(it.group_id, i) for it, i in done}, {(it.group_id, i) for it, i in samples[answer:]}
    finally:
        push.close(linger=2000)  # the answered samples are delivered; then silence, no Goodbye
        dealer.close(linger=0)
        ctx.term()


def test_vanished_worker_samples_handed_to_others_nothing_lost_or_double_counted():
    # stale_groups=keep: the ghost's groups wait for the timeout while the learner moves on; kept,
    # every group reaches the learner, so the comparison below covers all of them.
    svc = make_service("buffer.worker_timeout_s=0.5", "buffer.stale_groups=keep")
    leases = Leases()
    with BufferServer(svc, expire_every_s=0.05) as server:
        answered, unanswered = _vanishing_worker(server, leases, "ghost", capacity=10, answer=4)
        assert len(unanswered) == 6
        ghost_groups = {g for g, _ in answered | unanswered}
        assert {g for g, _ in answered} & {g for g, _ in unanswered}, "the ghost must vanish mid-group"
        workers = [Worker(server, f"w{j}", cap, leases, seed=10 + j) for j, cap in enumerate([2, 5, 3])]
        for w in workers:
            w.start()

        def ghost_groups_consumed(batches):
            return ghost_groups <= {g.group_id for b in batches for g in b.groups} and len(batches) >= 3

        try:
            batches = learner_loop(svc, ghost_groups_consumed, deadline_s=20)
        finally:
            for w in workers:
                w.halt()
    assert ghost_groups_consumed(batches), f"ghost's groups never completed: {svc.status()}"
    check_groups(batches, leases)
    delivered = Counter()
    by_sample = {}
    for b in batches:
        for g in b.groups:
            for s in g.samples:
                delivered[(g.group_id, s.sample_index)] += 1
                by_sample[(g.group_id, s.sample_index)] = s.worker_id
    consumed_groups = {g for g, _ in delivered}
    leased = {(g, i) for _, g, i in leases.rows if g in consumed_groups}
    assert delivered == Counter(leased), "delivered samples differ from the leased ones"
    for key in answered:
        assert by_sample[key] == "ghost"
    for key in unanswered:
        assert by_sample[key] != "ghost"
        takers = {w for w, g, i in leases.rows if (g, i) == key and w != "ghost"}
        assert takers, f"sample {key} was never handed to another worker"
    assert svc.counts["samples_redispatched"] >= len(unanswered)


def test_goodbye_redispatches_at_once():
    # One group at a time (B=1, max_staleness=0); default timeouts (worker 30 s, lease 900 s).
    svc = make_service("allocation.gen_batch_prompts=1", "buffer.max_staleness=0", unequal=False)
    with BufferServer(svc) as server:
        ep = server.endpoints
        a = BufferClient(ep.host, ep.work, ep.completions, "A", timeout_s=5)
        b = BufferClient(ep.host, ep.work, ep.completions, "B", timeout_s=5)
        try:
            grant = a.request_work(4, 0)
            assert isinstance(grant, WorkGrant) and len(grant.items) == 1
            item = grant.items[0]
            assert item.sample_indices == (0, 1, 2, 3)
            refused = b.request_work(4, 0)
            assert isinstance(refused, NoWork) and refused.reason == "staleness"
            rng = np.random.default_rng(0)
            a.send(fake_completion(item, 1, "A", 0, rng))
            t0 = time.monotonic()
            a.close()  # Goodbye
            got = None
            while time.monotonic() - t0 < 3.0:
                reply = b.request_work(4, 0)
                if isinstance(reply, WorkGrant):
                    got = reply
                    break
                time.sleep(0.01)
            assert got is not None, "the goodbye did not hand A's samples out again within 3 s"
            assert [(it.group_id, it.sample_indices) for it in got.items] == [(item.group_id, (0, 2, 3))]
            for i in (0, 2, 3):
                b.send(fake_completion(got.items[0], i, "B", 0, rng))
            batch = svc.pull_batch(timeout=5)
        finally:
            a.close()
            b.close()
    assert batch is not None
    (group,) = batch.groups
    assert [(s.sample_index, s.worker_id) for s in group.samples] == [(0, "B"), (1, "A"), (2, "B"), (3, "B")]


def test_status_endpoint_answers_with_counts():
    svc = make_service("allocation.gen_batch_prompts=2", unequal=False)
    with BufferServer(svc) as server:
        ep = server.endpoints
        with (
            BufferClient(ep.host, ep.work, ep.completions, "A", timeout_s=5) as a,
            BufferClient(ep.host, ep.work, ep.completions, "B", timeout_s=5) as b,
        ):
            b.hello("fake", 1)
            grant = a.request_work(5, 0)  # a whole group of 4 and one sample of the next
            assert isinstance(grant, WorkGrant)
            rng = np.random.default_rng(0)
            first, second = grant.items
            for i in first.sample_indices:
                a.send(fake_completion(first, i, "A", 0, rng))
            a.send(fake_completion(second, 0, "A", 0, rng))
            a.send(fake_completion(second, 0, "A", 0, rng))  # duplicate
            svc.set_version(2)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                status = query_status(ep.host, ep.status)
                if status.completions == 5 and status.rejected:
                    break
                time.sleep(0.02)
    assert status.completions == 5
    assert status.rejected == {"duplicate": 1}
    assert status.groups == {"ready": 1, "in_flight": 1, "consumed": 0}
    assert status.workers == 2
    assert status.policy_version == 2
    assert status.dropped_groups == 0


def test_hello_gets_welcome_with_the_resolved_config():
    svc = make_service("buffer.worker_timeout_s=7.5", "rollout.seed=123", unequal=False)
    svc.set_version(3)
    with BufferServer(svc) as server:
        ep = server.endpoints
        with BufferClient(ep.host, ep.work, ep.completions, "w-hello", timeout_s=5) as client:
            welcome = client.hello("fake", 4)
            status = query_status(ep.host, ep.status)
    assert welcome.worker_id == "w-hello"
    assert welcome.policy_version == 3
    cfg = config_from_dict(yaml.safe_load(welcome.config_yaml))
    assert cfg == svc.cfg
    assert cfg.buffer.worker_timeout_s == 7.5 and cfg.rollout.seed == 123 and cfg.allocation.g_max == 9
    assert status.workers == 1
