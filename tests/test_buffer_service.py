"""Buffer service in process (docs/design.md section 6): budgets, statistics, rejection, leases, staleness gate,
zero-variance filtering, checkpoints, status. No sockets; a fake clock drives the timeouts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sample_records import sample_record

from buffer.pool import PoolPrompt
from buffer.service import BufferService
from dynamo_async.algo.allocation import allocation_priority, water_fill
from dynamo_async.config import load_config
from dynamo_async.protocol import Completion, NoWork, WorkItem

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_cfg(*overrides: str):
    return load_config(TINY, list(overrides))


def make_prompts(n: int) -> list[PoolPrompt]:
    return [
        PoolPrompt(f"p{i}", f"What is {i}+{i}?", str(2 * i), np.array([1, 100 + i, 7], dtype=np.int32))
        for i in range(n)
    ]


def make_service(*overrides: str, prompts: int = 16, clock=None, store=None) -> BufferService:
    return BufferService(
        make_cfg(*overrides), make_prompts(prompts), store=store, clock=clock if clock is not None else FakeClock()
    )


def tokens_for(group_id: int, sample_index: int, length: int = 3) -> np.ndarray:
    return np.arange(length, dtype=np.int32) + 1000 * group_id + 10 * sample_index


def make_completion(
    item: WorkItem,
    sample_index: int,
    worker_id: str = "w0",
    acc: int = 1,
    version: int | np.ndarray = 0,
    length: int = 3,
    **changes,
) -> Completion:
    versions = np.broadcast_to(np.asarray(version, dtype=np.int32), (length,))
    lease_id = changes.pop("lease_id", item.lease_id)
    sample = sample_record(
        changes.pop("group_id", item.group_id),
        changes.pop("prompt_id", item.prompt_id),
        sample_index,
        tokens_for(item.group_id, sample_index, length),
        np.full(length, -0.5),
        versions,
        worker_id=worker_id,
        acc=acc,
        reward=2.0 * acc - 1.0,
        gen_seconds=0.1,
        score_seconds=0.01,
        **changes,  # the record's fields
    )
    return Completion(lease_id=lease_id, sample=sample)


def items_of(got) -> list[WorkItem]:
    assert not isinstance(got, NoWork), f"expected work, got {got}"
    return got


def complete_items(svc: BufferService, items, worker_id="w0", acc=lambda g, i: i % 2, version=0) -> None:
    for item in items:
        for i in item.sample_indices:
            assert svc.add_completion(make_completion(item, i, worker_id, acc(item.group_id, i), version)) is None


# --------------------------------------------------------------------------- budgets


def test_dynamo_budgets_are_water_filled_within_range():
    svc = make_service(
        "allocation.gen_batch_prompts=6", "allocation.avg_rollouts=8", "allocation.g_min=2", "allocation.g_max=16"
    )
    # Give the prompts different histories so the priorities differ (and some are 0).
    rng = np.random.default_rng(0)
    svc.pool.attempts[:] = 10
    svc.pool.successes[:] = rng.integers(0, 11, len(svc.pool))
    svc.pool.successes[:3] = [0, 5, 10]
    items_of(svc.request_work("w0", 1))
    groups = list(svc.groups.values())
    assert len(groups) == 6
    counts = np.array([g.n for g in groups])
    assert counts.sum() == 8 * 6
    assert counts.min() >= 2 and counts.max() <= 16
    assert len(set(counts.tolist())) > 1, "priorities differ, so must the budgets"
    idxs = [g.prompt_idx for g in groups]
    expected = water_fill(
        allocation_priority(svc.pool.successes[idxs], svc.pool.attempts[idxs], 0.25, 1.0), 8 * 6, 2, 16
    )
    np.testing.assert_array_equal(counts, expected)
    # Budgets follow the variance: a zero-variance prompt never gets more than a p=0.5 one.
    by_prompt = {g.prompt_idx: g.n for g in groups}
    p = allocation_priority(svc.pool.successes, svc.pool.attempts)
    for a in idxs:
        for b in idxs:
            if p[a] > p[b]:
                assert by_prompt[a] >= by_prompt[b]


def test_budgets_of_prompts_admitted_one_at_a_time_equal_those_admitted_together(monkeypatch):
    """The gate's room does not change a prompt's budget: a generation batch is water-filled
    whole and admitted as room opens (buffer/planner.py)."""
    overrides = (
        "allocation.gen_batch_prompts=6",
        "allocation.avg_rollouts=8",
        "allocation.g_min=2",
        "allocation.g_max=16",
    )
    budgets = []
    for room in (None, 1):
        svc = make_service(*overrides)
        rng = np.random.default_rng(0)
        svc.pool.attempts[:] = 10
        svc.pool.successes[:] = rng.integers(0, 11, len(svc.pool))
        if room is not None:  # the gate has room for one group at a time (e.g. after each drop)
            monkeypatch.setattr(svc, "_gate_room", lambda room=room: room)
        while len(svc.groups) < 6:
            before = len(svc.groups)
            svc._admit()
            assert len(svc.groups) - before == (6 if room is None else 1)
        budgets.append({g.prompt_id: g.n for g in svc.groups.values()})
    assert budgets[0] == budgets[1]
    assert len(set(budgets[1].values())) > 1, "a prompt admitted alone once always got avg_rollouts"


def test_a_checkpoint_requeues_planned_prompts_not_yet_admitted(tmp_path, monkeypatch):
    svc = make_service("allocation.gen_batch_prompts=6")
    monkeypatch.setattr(svc, "_gate_room", lambda: 2)
    svc._admit()
    planned = svc.planner.planned_prompt_ids()
    assert len(planned) == 4 and not set(planned) & {g.prompt_id for g in svc.groups.values()}
    svc.save_state(tmp_path)
    again = make_service("allocation.gen_batch_prompts=6")
    again.restore_state(tmp_path)
    again._admit()
    assert {g.prompt_id for g in again.groups.values()} == {g.prompt_id for g in svc.groups.values()} | set(planned)


@pytest.mark.parametrize(
    "overrides",
    [("method=grpo",), ("method=w_reinforce",), ("allocation.dynamic=false",)],
    ids=["grpo", "w_reinforce", "dynamic_off"],
)
def test_baselines_and_static_allocation_get_uniform_budgets(overrides):
    svc = make_service("allocation.gen_batch_prompts=6", "allocation.avg_rollouts=5", *overrides)
    svc.pool.attempts[:] = 10
    svc.pool.successes[:] = np.arange(len(svc.pool)) % 11
    items_of(svc.request_work("w0", 1))
    assert [g.n for g in svc.groups.values()] == [5] * 6


# --------------------------------------------------------------------------- statistics


def test_statistics_updated_exactly_once_when_a_group_completes():
    svc = make_service()
    items = items_of(svc.request_work("w0", 4))  # tiny: 4 rollouts per prompt at first
    assert len(items) == 1 and len(items[0].sample_indices) == 4
    item = items[0]
    idx = svc.pool.index[item.prompt_id]
    accs = [1, 0, 1, 1]
    for i in item.sample_indices[:3]:
        assert svc.add_completion(make_completion(item, i, acc=accs[i])) is None
        assert (svc.pool.successes[idx], svc.pool.attempts[idx]) == (0, 0), "not before the group completes"
    assert svc.add_completion(make_completion(item, 3, acc=accs[3])) is None
    assert (svc.pool.successes[idx], svc.pool.attempts[idx]) == (3, 4)
    # A duplicate, a late copy, another pull: nothing changes the statistics again.
    assert svc.add_completion(make_completion(item, 3, acc=0)) is not None
    assert svc.add_completion(make_completion(item, 0, acc=1)) is not None
    svc.pull_batch(timeout=0)
    assert (svc.pool.successes[idx], svc.pool.attempts[idx]) == (3, 4)
    others = np.delete(np.arange(len(svc.pool)), idx)
    assert svc.pool.attempts[others].sum() == 0


# --------------------------------------------------------------------------- rejection


def test_bad_completions_rejected_with_reason_counted_once_and_kept_out():
    svc = make_service()
    items = items_of(svc.request_work("w0", 8))
    item, other = items[0], items[1]
    group = svc.groups[item.group_id]
    assert svc.add_completion(make_completion(item, 0)) is None
    before = dict(group.received)
    cases = [
        ("unknown_group", make_completion(item, 1, group_id=10_000)),
        ("wrong_prompt", make_completion(item, 1, prompt_id=other.prompt_id)),
        ("wrong_prompt", make_completion(item, 1, prompt_id="no-such-prompt")),
        ("bad_sample_index", make_completion(item, group.n)),
        ("bad_sample_index", make_completion(item, group.n + 5)),
        ("duplicate", make_completion(item, 0, acc=0)),
    ]
    expected = Counter()
    for reason, c in cases:
        assert svc.add_completion(c) == reason
        expected[reason] += 1
        assert dict(svc.rejected) == dict(expected)
        assert group.received == before
    assert svc.status().rejected == dict(expected)
    assert svc.status().completions == 1
    assert svc.groups[other.group_id].received == {}
    # The one accepted copy of sample 0 is the first one (acc=1), not the duplicate.
    assert group.received[0].acc == 1


def test_completion_for_a_finished_group_is_rejected():
    svc = make_service()
    item = items_of(svc.request_work("w0", 4))[0]
    complete_items(svc, [item])
    assert svc.add_completion(make_completion(item, 0)) is not None
    assert svc.status().completions == 4
    assert sum(svc.rejected.values()) == 1


# --------------------------------------------------------------------------- leases


def _groups_complete_once(batch_groups, expected_sizes) -> None:
    for g in batch_groups:
        assert [s.sample_index for s in g.samples] == list(range(expected_sizes[g.group_id]))


def test_expired_lease_is_redispatched_late_completion_accepted_once():
    clock = FakeClock()
    svc = make_service("buffer.lease_timeout_s=10", "buffer.worker_timeout_s=20", clock=clock)
    a_items = items_of(svc.request_work("A", 4))
    item_a = a_items[0]
    assert item_a.sample_indices == (0, 1, 2, 3)
    assert svc.add_completion(make_completion(item_a, 0, "A")) is None
    clock.t += 5
    # Not expired yet: B gets another group.
    b_first = items_of(svc.request_work("B", 1))[0]
    assert b_first.group_id != item_a.group_id
    svc.heartbeat("A")
    clock.t += 6  # past A's lease deadline (10 s after the grant), although A is alive
    b_items = items_of(svc.request_work("B", 3))
    assert [(it.group_id, it.sample_indices) for it in b_items] == [(item_a.group_id, (1, 2, 3))]
    item_b = b_items[0]
    # A's late completion of revoked sample 1 is still accepted, once.
    assert svc.add_completion(make_completion(item_a, 1, "A", acc=0)) is None
    # B's re-dispatched copy of sample 1 is then a counted duplicate.
    assert svc.add_completion(make_completion(item_b, 1, "B", acc=1)) == "duplicate"
    assert svc.add_completion(make_completion(item_b, 2, "B")) is None
    assert svc.add_completion(make_completion(item_b, 3, "B")) is None
    assert svc.rejected == Counter(duplicate=1)
    group_received = {i: c.worker_id for i, c in svc.groups[item_a.group_id].received.items()}
    assert group_received == {0: "A", 1: "A", 2: "B", 3: "B"}
    idx = svc.pool.index[item_a.prompt_id]
    # acc of the accepted copies: A's 1 (sample 0) and 0 (sample 1), B's 1 and 1; B's duplicate 1 is not counted.
    assert (svc.pool.successes[idx], svc.pool.attempts[idx]) == (3, 4)


def test_silent_worker_samples_go_to_another_worker():
    clock = FakeClock()
    svc = make_service("buffer.lease_timeout_s=1000", "buffer.worker_timeout_s=5", clock=clock)
    item_a = items_of(svc.request_work("A", 4))[0]
    assert svc.add_completion(make_completion(item_a, 2, "A")) is None
    clock.t += 3
    svc.heartbeat("A")  # alive at t+3
    clock.t += 4  # 4 s since A's last sign of life: still within worker_timeout
    b1 = items_of(svc.request_work("B", 4))
    assert all(it.group_id != item_a.group_id for it in b1), "a live worker keeps its lease"
    clock.t += 2  # now 6 s of silence from A
    b2 = items_of(svc.request_work("B", 3))
    assert [(it.group_id, it.sample_indices) for it in b2] == [(item_a.group_id, (0, 1, 3))]
    assert svc.status().workers == 1  # A is gone
    for i in (0, 1, 3):
        assert svc.add_completion(make_completion(b2[0], i, "B")) is None
    group = svc.groups[item_a.group_id]
    assert sorted(group.received) == [0, 1, 2, 3]
    assert group.received[2].worker_id == "A"
    assert svc.counts["samples_redispatched"] == 3


def test_worker_left_requeues_at_once():
    svc = make_service()  # default timeouts (900 s lease, 30 s worker): only the goodbye can requeue
    items_a = items_of(svc.request_work("A", 6))
    assert [it.sample_indices for it in items_a] == [(0, 1, 2, 3), (0, 1)]
    assert svc.add_completion(make_completion(items_a[0], 1, "A")) is None
    assert svc.worker_left("A") == 5
    got = items_of(svc.request_work("B", 5))
    held = [(it.group_id, it.sample_indices) for it in got]
    assert held == [(items_a[0].group_id, (0, 2, 3)), (items_a[1].group_id, (0, 1))]
    assert svc.worker_left("nobody") == 0


def test_completion_with_another_groups_lease_id_does_not_lose_that_groups_sample():
    """A completion naming the wrong lease must not settle a sample of another group's lease:
    otherwise that sample is never handed out again when its worker vanishes."""
    svc = make_service()
    item_a = items_of(svc.request_work("A", 4))[0]
    item_b = items_of(svc.request_work("B", 4))[0]
    assert item_a.group_id != item_b.group_id
    # A reports its sample 0 (right group, prompt, index) but with B's lease id.
    svc.add_completion(make_completion(item_a, 0, "A", lease_id=item_b.lease_id))
    back = svc.worker_left("B")
    assert back == 4, f"B held 4 unfinished samples of group {item_b.group_id}, {back} were requeued"


# --------------------------------------------------------------------------- staleness gate (property)


class _Learner:
    def __init__(self):
        self.batches = []
        self.trained = 0  # batches whose update finished (version bumps)


def _gate_run(svc: BufferService, ops, eta: int, k: int, num_workers: int, seed: int):
    """Drive ``svc`` through ``ops``; check the invariants after every operation."""
    B = svc.cfg.allocation.gen_batch_prompts
    rng = np.random.default_rng(seed)
    held: dict[int, list[tuple[WorkItem, int, int]]] = {w: [] for w in range(num_workers)}
    sent: dict[tuple[int, int], Completion] = {}
    leased_sizes: dict[int, int] = {}
    learner = _Learner()

    def check():
        live = len(svc.groups)
        consumed = svc.status().groups.get("consumed", 0)
        assert consumed + live <= (svc.version + eta + 1) * B, "gate limit exceeded"
        st_ = svc.status()
        assert svc.counts["groups_created"] == sum(st_.groups.values()) + st_.dropped_groups, "conservation"
        assert st_.groups.get("consumed", 0) == sum(len(b.groups) for b in learner.batches)

    def worker_version(w):
        return max(0, svc.version - int(rng.integers(0, k + 1)))

    def request(w, cap):
        got = svc.request_work(f"w{w}", cap)
        if isinstance(got, NoWork):
            return
        v = worker_version(w)
        for item in got:
            leased_sizes[item.group_id] = svc.groups[item.group_id].n
            held[w].extend((item, i, v) for i in item.sample_indices)

    def complete(w, count):
        for _ in range(min(count, len(held[w]))):
            item, i, v0 = held[w].pop(int(rng.integers(0, len(held[w]))))
            v1 = max(v0, worker_version(w))
            versions = np.linspace(v0, v1, 4).round().astype(np.int32)  # tokens span the weight swaps
            c = make_completion(item, i, f"w{w}", acc=int(rng.integers(0, 2)), version=versions, length=4)
            if svc.add_completion(c) is None:
                assert (item.group_id, i) not in sent
                sent[(item.group_id, i)] = c

    def pull():
        if len(learner.batches) > learner.trained:  # still training the last batch
            learner.trained += 1
            svc.set_version(learner.trained)
            return
        batch = svc.pull_batch(timeout=0)
        if batch is None:
            return
        assert batch.policy_version == svc.version
        seen = {g.group_id for b in learner.batches for g in b.groups}
        for g, staleness in zip(batch.groups, batch.staleness):
            assert g.group_id not in seen, "a group consumed twice"
            assert batch.policy_version - g.oldest_version <= eta, "too stale a group reached the learner"
            assert staleness == batch.policy_version - g.oldest_version
            assert [s.sample_index for s in g.samples] == list(range(leased_sizes[g.group_id]))
            for s in g.samples:
                c = sent[(g.group_id, s.sample_index)].sample
                assert c.prompt_id == g.prompt_id
                assert s == c  # the record that arrived is the record the learner gets
                np.testing.assert_array_equal(s.token_array, c.arrays()[0])
                np.testing.assert_array_equal(s.version_array, c.arrays()[2])
        learner.batches.append(batch)

    for op, w, n in ops:
        w %= num_workers
        if op == "request":
            request(w, n)
        elif op == "complete":
            complete(w, n)
        else:
            pull()
        check()

    # Workers keep working (still lagging): the invariants keep holding over many learner steps.
    for _ in range(12):
        for w in range(num_workers):
            request(w, int(rng.integers(1, 9)))
            complete(w, int(rng.integers(1, 9)))
        pull()
        check()
    # Liveness: with workers up to date and working, the learner keeps getting batches.
    k = 0
    before = len(learner.batches)
    for _ in range(200):
        for w in range(num_workers):
            request(w, 8)
            complete(w, 100)
        pull()
        check()
        if len(learner.batches) >= before + 3:
            break
    assert len(learner.batches) >= before + 3, f"deadlock: status {svc.status()}"


_OPS = st.lists(
    st.tuples(st.sampled_from(["request", "complete", "pull"]), st.integers(0, 3), st.integers(1, 12)),
    min_size=10,
    max_size=120,
)


@settings(max_examples=60, deadline=None)
@given(
    ops=_OPS,
    eta=st.integers(0, 3),
    k=st.integers(0, 4),
    seed=st.integers(0, 2**16),
    method=st.sampled_from(["dynamo", "grpo"]),
)
def test_staleness_gate_property(ops, eta, k, seed, method):
    svc = make_service(
        f"buffer.max_staleness={eta}",
        "buffer.stale_groups=drop",
        f"method={method}",
        "allocation.gen_batch_prompts=3",
        "allocation.avg_rollouts=3",
        *(("allocation.g_min=1", "allocation.g_max=6") if method == "dynamo" else ()),  # read by DRA only
        prompts=12,
    )
    _gate_run(svc, ops, eta, k, num_workers=3, seed=seed)


def test_group_assembled_before_a_version_bump_is_not_handed_out_stale():
    """pull_batch(timeout) that comes back short keeps its partial batch; if the learner's version
    moves on before the batch is complete, the kept groups must be re-checked against the drop rule."""
    svc = make_service(
        "buffer.max_staleness=0",
        "allocation.gen_batch_prompts=2",
        "allocation.avg_rollouts=1",
        "allocation.g_min=1",
        "allocation.g_max=1",
    )
    first = items_of(svc.request_work("w", 1))[0]
    complete_items(svc, [first], version=0)
    assert svc.pull_batch(timeout=0) is None  # one ready group of two: short
    svc.set_version(1)  # e.g. the previous step's weights were published meanwhile
    second = items_of(svc.request_work("w", 1))[0]
    complete_items(svc, [second], version=1)
    third = items_of(svc.request_work("w", 1))
    complete_items(svc, third, version=1)
    batch = svc.pull_batch(timeout=0)
    assert batch is not None
    for g in batch.groups:
        assert batch.policy_version - g.oldest_version <= 0, (
            f"group {g.group_id} with tokens of version {g.oldest_version} handed out at version "
            f"{batch.policy_version} although max_staleness=0"
        )


def test_stale_groups_dropped_and_counted():
    svc = make_service("buffer.max_staleness=1", "allocation.gen_batch_prompts=2")
    items = items_of(svc.request_work("w", 16))  # 4 groups of 4
    assert len(items) == 4
    complete_items(svc, items[:2], version=0)
    svc.set_version(2)
    complete_items(svc, items[2:], version=1)
    batch = svc.pull_batch(timeout=0)
    assert batch is not None and batch.dropped_stale == 2
    assert [g.group_id for g in batch.groups] == [items[2].group_id, items[3].group_id]
    assert batch.staleness == (1, 1)
    assert svc.status().dropped_groups == 2


def test_stale_groups_kept_when_configured():
    svc = make_service("buffer.max_staleness=0", "buffer.stale_groups=keep", "allocation.gen_batch_prompts=2")
    items = items_of(svc.request_work("w", 8))
    complete_items(svc, items, version=0)
    svc.set_version(3)
    batch = svc.pull_batch(timeout=0)
    assert batch is not None and batch.dropped_stale == 0 and batch.staleness == (3, 3)


def test_gate_refuses_work_beyond_the_limit_and_reopens_with_the_version():
    svc = make_service("buffer.max_staleness=1", "allocation.gen_batch_prompts=2")
    items = items_of(svc.request_work("w", 100))
    assert len(items) == (0 + 1 + 1) * 2
    refused = svc.request_work("w", 1)
    assert isinstance(refused, NoWork) and refused.reason == "staleness"
    complete_items(svc, items)
    assert svc.pull_batch(timeout=0) is not None and svc.pull_batch(timeout=0) is not None
    assert isinstance(svc.request_work("w", 1), NoWork), "consumed groups still count until the version moves"
    svc.set_version(1)
    more = items_of(svc.request_work("w", 100))
    assert len(more) == 2


# --------------------------------------------------------------------------- zero-variance filter


@pytest.mark.parametrize("filtered", [True, False])
def test_zero_variance_groups_dropped_and_counted_when_filtered(filtered):
    svc = make_service(f"advantage.filter_zero_variance={str(filtered).lower()}", "allocation.gen_batch_prompts=2")
    items = items_of(svc.request_work("w", 16))  # 4 groups of 4
    gids = [it.group_id for it in items]
    pattern = {gids[0]: lambda i: 1, gids[1]: lambda i: 0, gids[2]: lambda i: i % 2, gids[3]: lambda i: int(i == 0)}
    complete_items(svc, items, acc=lambda g, i: pattern[g](i))
    batch = svc.pull_batch(timeout=0)
    assert batch is not None
    if filtered:
        assert [g.group_id for g in batch.groups] == gids[2:]
        assert batch.dropped_zero_variance == 2
        assert not any(g.zero_variance for g in batch.groups)
        assert svc.status().dropped_groups == 2
        assert svc.pull_batch(timeout=0) is None
    else:
        assert [g.group_id for g in batch.groups] == gids[:2]
        assert batch.dropped_zero_variance == 0 and all(g.zero_variance for g in batch.groups)
        assert svc.status().dropped_groups == 0
    # The statistics count every completed group, filtered or not.
    assert svc.pool.attempts.sum() == 16
    assert svc.pool.successes.sum() == 4 + 0 + 2 + 1


# --------------------------------------------------------------------------- checkpoints


def test_save_and_restore_state_continue_the_run(tmp_path):
    overrides = (
        "allocation.gen_batch_prompts=4",
        "allocation.avg_rollouts=4",
        "allocation.g_min=2",
        "allocation.g_max=8",
    )
    svc = make_service(*overrides, prompts=10)
    for step in range(2):
        items = items_of(svc.request_work("w", 16))
        assert sum(len(it.sample_indices) for it in items) == 16 and len(items) == 4
        complete_items(svc, items, acc=lambda g, i: int(i < g % 4))
        assert svc.pull_batch(timeout=0) is not None
        svc.set_version(step + 1)
    # Mid-epoch: 8 of 10 prompts drawn.
    assert svc.pool.position == (0, 8)
    svc.save_state(tmp_path / "ckpt")

    restored = make_service(*overrides, prompts=10)
    restored.restore_state(tmp_path / "ckpt")
    np.testing.assert_array_equal(restored.pool.successes, svc.pool.successes)
    np.testing.assert_array_equal(restored.pool.attempts, svc.pool.attempts)
    np.testing.assert_array_equal(restored.pool.last_version, svc.pool.last_version)
    assert restored.pool.attempts.sum() > 0
    assert (restored.step, restored.version, restored.pool.position) == (2, 2, (0, 8))
    assert restored.status().groups.get("consumed") == 8

    # Both continue identically: same prompts drawn next, same water-filled budgets, same step.
    a = items_of(svc.request_work("w", 1000))
    b = items_of(restored.request_work("w", 1000))
    assert [(it.prompt_id, it.sample_indices) for it in a] == [(it.prompt_id, it.sample_indices) for it in b]
    assert [g.n for g in svc.groups.values()] == [g.n for g in restored.groups.values()]
    complete_items(restored, b)
    batch = restored.pull_batch(timeout=0)
    assert batch is not None and batch.step == 3 and batch.policy_version == 2


# --------------------------------------------------------------------------- status


def test_status_counts():
    svc = make_service("allocation.gen_batch_prompts=4")
    items = items_of(svc.request_work("A", 9))  # groups 0, 1 full and one sample of group 2
    assert [len(it.sample_indices) for it in items] == [4, 4, 1]
    svc.heartbeat("B")
    complete_items(svc, items[:1], worker_id="A")
    assert svc.add_completion(make_completion(items[1], 0, "A")) is None
    assert svc.add_completion(make_completion(items[1], 0, "A")) == "duplicate"
    svc.reject("malformed")
    st_ = svc.status()
    assert st_.groups == {"ready": 1, "in_flight": 2, "waiting": 1, "consumed": 0}
    assert st_.workers == 2
    assert st_.completions == 5
    assert st_.rejected == {"duplicate": 1, "malformed": 1}
    assert st_.dropped_groups == 0
    assert st_.policy_version == 0
    # per worker: samples still leased, completions accepted; tokens of accepted completions
    by_id = {w.worker_id: w for w in st_.worker_list}
    assert (by_id["A"].samples_leased, by_id["A"].completions) == (9 - 5, 5)
    assert (by_id["B"].samples_leased, by_id["B"].completions) == (0, 0)
    assert st_.completion_tokens == 5 * 3
    assert st_.max_staleness == svc.cfg.buffer.max_staleness and st_.step == 0
    svc.clock.t += 2.5
    assert svc.status().worker_list[0].last_seen_s == pytest.approx(2.5)
    assert svc.status().uptime_s == pytest.approx(2.5)
    svc.set_version(3)
    assert svc.status().policy_version == 3


def test_worker_idle_seconds_from_heartbeats_sum_over_workers():
    svc = make_service()
    svc.heartbeat("a", 1.5)
    svc.heartbeat("b", 2.0)
    svc.heartbeat("a", 3.0)  # cumulative per worker: the latest value counts
    svc.heartbeat("b")  # a heartbeat without a figure leaves it alone
    assert svc.worker_idle_seconds() == 5.0
