"""Leases renewed by heartbeats (buffer/leases.py): a worker's heartbeat names the leases it holds,
and the buffer gives each of them that is the worker's own a new deadline, so a generation longer
than ``buffer.lease_timeout_s`` is not handed out again while its worker is alive and working.

Unit tests drive ``BufferService`` with a fake clock; the integration test runs real
``RolloutWorker`` loops with their ``Heartbeats`` threads against a real ``BufferServer``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
from test_buffer_service import FakeClock

from buffer.client import BufferClient
from buffer.leases import LeaseTable
from buffer.pool import PoolPrompt
from buffer.server import BufferServer
from buffer.service import BufferService
from dynamo_async.config import load_config
from dynamo_async.protocol import Completion, Heartbeat, NoWork, WorkItem
from dynamo_async.rewards.messages import ScoreResult
from workers.engine import GenResult
from workers.worker import Heartbeats, RolloutWorker

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def make_prompts(n: int) -> list[PoolPrompt]:
    return [
        PoolPrompt(f"p{i}", f"What is {i}+{i}?", str(2 * i), np.array([1, 100 + i, 7], dtype=np.int32))
        for i in range(n)
    ]


def make_service(*overrides: str, clock: FakeClock) -> BufferService:
    return BufferService(load_config(TINY, list(overrides)), make_prompts(16), clock=clock)


def items_of(got) -> list[WorkItem]:
    assert not isinstance(got, NoWork), f"expected work, got {got}"
    return got


def held_samples(svc: BufferService, worker_id: str) -> set[tuple[int, int]]:
    """(group, sample) pairs that ``worker_id``'s live leases cover."""
    return {
        (lease.group_id, s)
        for lease in svc.leases.leases.values()
        if lease.worker_id == worker_id
        for s in lease.samples
    }


# ----------------------------------------------------------------------------- LeaseTable, service


def test_lease_table_renews_only_its_workers_live_leases():
    table = LeaseTable()
    a = table.grant("A", 0, [0, 1], deadline=10.0)
    b = table.grant("B", 1, [0], deadline=10.0)
    assert table.renew("A", [a.lease_id, b.lease_id, 999], deadline=15.0, now=5.0) == 1
    assert (a.deadline, b.deadline) == (15.0, 10.0)
    assert table.renew("B", [b.lease_id], deadline=21.0, now=11.0) == 0, "a lease past its deadline is not revived"
    assert b.deadline == 10.0
    assert [lease.lease_id for lease in table.revoke_expired(12.0, worker_timeout=100.0)] == [b.lease_id]


def test_lease_renewed_by_heartbeats_past_its_deadline_is_kept_and_one_not_renewed_is_revoked():
    clock = FakeClock()
    svc = make_service("buffer.lease_timeout_s=10", "buffer.worker_timeout_s=20", clock=clock)
    items = items_of(svc.request_work("A", 8))
    assert len(items) >= 2, "needs two leases of one worker"
    kept, dropped = items[0], items[1]
    for _ in range(6):  # 30 s in all, three times the lease timeout
        clock.t += 5
        assert svc.heartbeat("A", lease_ids=(kept.lease_id,)) == 1
        svc.expire()
        assert kept.lease_id in svc.leases.leases, f"a renewed lease was revoked at t+{clock.t - 1000:g}"
    assert dropped.lease_id not in svc.leases.leases, "a lease not renewed outlived its deadline"
    assert held_samples(svc, "A") == {(kept.group_id, s) for s in kept.sample_indices}
    assert svc.counts["samples_redispatched"] == len(dropped.sample_indices)
    regranted = items_of(svc.request_work("B", 16))
    got = {(it.group_id, s) for it in regranted for s in it.sample_indices}
    assert {(dropped.group_id, s) for s in dropped.sample_indices} <= got
    assert not {(kept.group_id, s) for s in kept.sample_indices} & got, "a renewed lease's samples went to B"


def test_heartbeat_naming_another_workers_lease_does_not_extend_it():
    clock = FakeClock()
    svc = make_service("buffer.lease_timeout_s=10", "buffer.worker_timeout_s=20", clock=clock)
    a_item = items_of(svc.request_work("A", 4))[0]
    clock.t += 6
    assert svc.heartbeat("B", lease_ids=(a_item.lease_id,)) == 0
    assert svc.heartbeat("A") == 0  # A is alive, but does not name its lease
    clock.t += 6  # 12 s after the grant
    assert svc.expire() == len(a_item.sample_indices)
    assert a_item.lease_id not in svc.leases.leases
    assert svc.leases.last_seen.keys() == {"A", "B"}, "both workers are alive; only the lease ran out"


def test_heartbeat_with_unknown_or_settled_lease_ids_renews_nothing():
    clock = FakeClock()
    svc = make_service("buffer.lease_timeout_s=10", "buffer.worker_timeout_s=20", clock=clock)
    item = items_of(svc.request_work("A", 4))[0]
    deadline = svc.leases.leases[item.lease_id].deadline
    assert svc.heartbeat("A", lease_ids=(item.lease_id + 1000, -1)) == 0
    assert svc.leases.leases[item.lease_id].deadline == deadline
    clock.t += 3
    assert svc.heartbeat("A", lease_ids=(item.lease_id, item.lease_id)) == 1  # a repeated id counts once
    assert svc.leases.leases[item.lease_id].deadline == clock.t + 10


def test_silent_worker_loses_renewed_leases():
    """Renewal needs heartbeats: once they stop for ``worker_timeout_s``, the work goes out again."""
    clock = FakeClock()
    svc = make_service("buffer.lease_timeout_s=10", "buffer.worker_timeout_s=20", clock=clock)
    item = items_of(svc.request_work("A", 4))[0]
    clock.t += 8
    assert svc.heartbeat("A", lease_ids=(item.lease_id,)) == 1  # deadline now t+18
    clock.t += 9  # t+17: within the renewed deadline, A silent 9 s
    assert svc.expire() == 0
    clock.t += 2  # t+19: past the renewed deadline
    assert svc.expire() == len(item.sample_indices)


def test_late_heartbeat_does_not_revive_an_expired_lease():
    """A lease past its deadline is revoked at the next expiry check even if a heartbeat named it
    in between: when the check runs does not decide whether work is handed out again."""
    clock = FakeClock()
    svc = make_service("buffer.lease_timeout_s=10", "buffer.worker_timeout_s=25", clock=clock)
    item = items_of(svc.request_work("A", 4))[0]
    clock.t += 11
    assert svc.heartbeat("A", lease_ids=(item.lease_id,)) == 0
    assert svc.expire() == len(item.sample_indices)


def test_config_rejects_a_lease_timeout_not_longer_than_the_heartbeat_interval():
    with pytest.raises(ValueError, match=r"got lease_timeout_s=10.0 <= worker_timeout_s / 3 = 10"):
        load_config(TINY, ["buffer.lease_timeout_s=10", "buffer.worker_timeout_s=30"])
    assert (
        load_config(TINY, ["buffer.lease_timeout_s=10.5", "buffer.worker_timeout_s=30"]).buffer.lease_timeout_s == 10.5
    )


# ------------------------------------------------------------------------------------ worker side


class FakeTokenizer:
    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))


class FakeScorer:
    """Futures the test resolves itself (``resolve``), or already resolved (``ready``)."""

    def __init__(self, ready: bool = True):
        self.ready, self.futures = ready, []

    def submit(self, text: str, answer: str, problem: str = "", source: str = "", fields: bytes = b"") -> Future:
        future = Future()
        if self.ready:
            future.set_result(ScoreResult(acc=len(text) % 2, status="ok", reward=float(len(text) % 2)))
        self.futures.append(future)
        return future

    def resolve(self, count: int) -> None:
        for future in [f for f in self.futures if not f.done()][:count]:
            future.set_result(ScoreResult(acc=1, status="ok", reward=1.0))


class CountingEngine:
    """Answers each request with its seed; counts requests by (prompt, seed), which names one
    (group, sample) of the buffer. ``sleep_s`` per generate() call stands for a long generation."""

    def __init__(self, sleep_s: float = 0.0, counts: Counter | None = None, lock: threading.Lock | None = None):
        self.sleep_s, self.policy_version = sleep_s, 0
        self.counts = Counter() if counts is None else counts
        self.lock = threading.Lock() if lock is None else lock
        self.calls = 0

    def generate(self, requests):
        with self.lock:
            self.counts.update((np.asarray(r.prompt_ids, "<i4").tobytes(), r.seed) for r in requests)
        self.calls += 1
        time.sleep(self.sleep_s)
        ids = [np.array([r.seed % 50_000, 2], np.int32) for r in requests]
        return [GenResult(t, np.full(len(t), -0.5, np.float32), np.zeros(len(t), np.int32), "stop") for t in ids]


class RecordingClient:
    worker_id = "w"

    def __init__(self):
        self.sent: list[Completion] = []

    def send(self, msg: Completion) -> None:
        self.sent.append(msg)


def test_worker_holds_a_lease_until_its_last_sample_is_pushed():
    clock = FakeClock()
    svc = make_service("buffer.lease_timeout_s=10", "buffer.worker_timeout_s=20", clock=clock)
    items = items_of(svc.request_work("w", 8))
    assert len(items) >= 2
    scorer = FakeScorer(ready=False)
    worker = RolloutWorker(svc.cfg, RecordingClient(), CountingEngine(), FakeTokenizer(), scorer, capacity=8)
    assert worker.held_leases == ()
    worker.generate(items)
    assert worker.held_leases == tuple(it.lease_id for it in items)
    first = len(items[0].sample_indices)
    scorer.resolve(first - 1)
    worker.push_scored(block=False)
    assert worker.held_leases == tuple(it.lease_id for it in items), "a lease with a sample unsent is still held"
    scorer.resolve(1)
    worker.push_scored(block=False)
    assert worker.held_leases == tuple(it.lease_id for it in items[1:])
    scorer.resolve(len(scorer.futures))
    worker.push_scored(block=True)
    assert worker.held_leases == ()
    assert len(worker.client.sent) == sum(len(it.sample_indices) for it in items)


def test_heartbeat_thread_sends_the_leases_it_is_given():
    """What ``Heartbeats`` puts on the wire: its ``leases()`` snapshot of the moment."""
    import zmq

    from dynamo_async.protocol import decode

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    held = [(3, 7)]
    beats = Heartbeats("127.0.0.1", port, "w", 0.02, lambda: 5, lambda: 1.5, lambda: held[0])
    beats.start()
    try:
        assert pull.poll(5000), "no heartbeat within 5 s"
        first = last = decode(pull.recv())
        held[0] = ()
        time.sleep(0.1)
        while pull.poll(0):
            last = decode(pull.recv())
    finally:
        beats.stop()
        beats.join(2.0)
        pull.close()
        ctx.term()
    assert isinstance(first, Heartbeat) and first.lease_ids == (3, 7)
    assert (first.worker_id, first.policy_version, first.idle_seconds) == ("w", 5, 1.5)
    assert last.lease_ids == ()


# --------------------------------------------------------------------------------- integration


def test_generation_slower_than_the_lease_is_done_once_while_heartbeats_renew_it():
    """Worker A's generate() takes 1.5 s, three lease timeouts (0.5 s); its heartbeats (every 0.1 s)
    renew the lease. Worker B is fast and asks for work every 0.2 s, so a lease that lapsed would
    reach B at once. Every (group, sample) must be generated exactly once and every group complete."""
    cfg_overrides = ["buffer.lease_timeout_s=0.5", "buffer.worker_timeout_s=1.2", "buffer.max_staleness=0"]
    svc = BufferService(load_config(TINY, cfg_overrides), make_prompts(16))
    counts: Counter = Counter()
    lock = threading.Lock()
    engines = {"A": CountingEngine(1.5, counts, lock), "B": CountingEngine(0.0, counts, lock)}
    with BufferServer(svc) as server:
        ep = server.endpoints
        workers, threads, beats = {}, [], []
        for name, capacity in (("A", 3), ("B", 4)):
            client = BufferClient(ep.host, ep.work, ep.completions, name, timeout_s=5)
            client.hello("fake", capacity)
            worker = RolloutWorker(svc.cfg, client, engines[name], FakeTokenizer(), FakeScorer(), capacity)
            workers[name] = worker
            beat = Heartbeats(ep.host, ep.completions, name, 0.1, lambda: 0, leases=lambda w=worker: w.held_leases)
            beat.start()
            beats.append(beat)
            thread = threading.Thread(target=worker.run, kwargs={"max_idle_s": 30.0}, daemon=True)
            thread.start()
            threads.append(thread)
            if name == "A":  # A holds its slow lease before B starts asking
                deadline = time.monotonic() + 5
                while not worker.held_leases and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert worker.held_leases, "worker A never got work"
                with svc._cond:
                    a_samples = held_samples(svc, "A")
        try:
            batch = svc.pull_batch(timeout=20)
        finally:
            for worker in workers.values():
                worker.stop.set()
            for thread in threads:
                thread.join(10)
            for beat in beats:
                beat.stop()
                beat.join(2)
            for worker in workers.values():
                worker.client.close()
    assert not any(t.is_alive() for t in threads)
    assert batch is not None, f"the groups did not complete; status {svc.status()}"
    assert engines["A"].calls >= 1 and engines["B"].calls >= 1
    seed0 = svc.cfg.rollout.seed * 1_000_003
    done = Counter()
    for g in batch.groups:
        assert [s.sample_index for s in g.samples] == list(range(len(g.samples))), f"group {g.group_id} incomplete"
        done.update(
            (np.asarray(g.prompt_token_ids, "<i4").tobytes(), seed0 + g.group_id + s.sample_index) for s in g.samples
        )
    assert len(batch.groups) == svc.cfg.allocation.gen_batch_prompts
    assert svc.counts["groups_created"] == len(batch.groups), "max_staleness 0: these are all the groups"
    assert max(done.values()) == 1, "two samples share a (prompt, seed): the engine count cannot tell them apart"
    twice = {k: n for k, n in counts.items() if n > 1}
    assert not twice, f"{len(twice)} samples generated more than once"
    assert counts == done, "the engines generated other samples than the groups hold"
    assert svc.counts["samples_redispatched"] == 0
    assert svc.rejected.get("duplicate", 0) == 0
    by_a = {(g.group_id, s.sample_index) for g in batch.groups for s in g.samples if s.worker_id == "A"}
    assert a_samples and a_samples <= by_a, "samples of worker A's renewed lease came from another worker"
