"""The buffer service: prompt pool, budgets, leases, staleness gate, and learner batches.

    workers --Completion (PUSH->PULL)-->  add_completion  --> groups --READY--> pull_batch --> learner
    workers <--WorkItem (ROUTER/DEALER)-- request_work    <-- scheduler: pool + water_fill + gate

Backpressure, stated once:
- A worker asks for work only when its engine has room; the buffer answers only while the
  staleness gate (``gate.py``) admits new groups, so generation never runs more than
  ``max_staleness`` learner versions ahead.
- The learner waits for a full batch of ready groups; it never waits for a particular worker.
- Weight broadcasts do not pass through here: a new version only moves the gate (``set_version``).

Group lifecycle (``lifecycle.py``): WAITING -> IN_FLIGHT -> READY -> CONSUMED | DROPPED.
Every method is thread-safe: the network thread (``server.py``) and the learner thread call in.
Bad input is rejected and counted by reason, never raised into the caller's loop: a completion
must fit its group and lease (``groups.py``) and have sane values (``validate.py``: finite
log-probs, token ids in the vocabulary, token versions no newer than now nor too old).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from buffer.assembly import Assembly
from buffer.batch import LearnerBatch
from buffer.gate import admission_room
from buffer.groups import Group
from buffer.leases import LeaseTable
from buffer.lifecycle import GroupState
from buffer.persist import restore_state, save_state
from buffer.planner import Planner
from buffer.pool import PoolPrompt, PromptPool
from buffer.status import build_status, numeric
from buffer.validate import allowed_versions, check_vocab_size, value_rejections
from dynamo_async.config.schema import RunConfig
from dynamo_async.protocol import Completion, NoWork, Status, WorkItem, pack_i32


class BufferService:
    """All buffer state behind one lock; see the module docstring for the data flow."""

    def __init__(
        self,
        cfg: RunConfig,
        prompts: Sequence[PoolPrompt],
        store=None,
        clock: Callable[[], float] = time.monotonic,
        vocab_size: int | None = None,
    ):
        """``vocab_size``: the model's; completions with a token id at or above it are rejected
        (None: ids are only checked to be >= 0, for tests and a buffer without the model)."""
        self.cfg = cfg
        self.vocab_size = check_vocab_size(vocab_size)
        self.pool = PromptPool(prompts, cfg.trainer.seed)
        self.planner = Planner(self.pool, cfg.allocation)
        self.store = store
        self.clock = clock
        self.version = 0
        self.step = 0
        self.groups: dict[int, Group] = {}
        self.leases = LeaseTable()
        self.counts: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self._cond = threading.Condition()
        self._next_group = 0
        self.assembly = Assembly(cfg)
        self._receivers: dict[str, tuple[str, ...]] = {}
        self._idle: dict[str, float] = {}
        self._closed = False
        self.started = clock()
        self.by_worker: Counter[str] = Counter()  # completions accepted per worker
        self.last_step: dict[str, float] = {}
        self.last_eval: dict[str, float] = {}

    # ------------------------------------------------------------------ workers

    def request_work(self, worker_id: str, capacity: int) -> list[WorkItem] | NoWork:
        """Leases for up to ``capacity`` samples, or why there are none."""
        with self._cond:
            now = self.clock()
            self.leases.seen(worker_id, now)
            self._expire(now)
            if self._closed:
                return NoWork(reason="shutdown", retry_after_s=0.0)
            items: list[WorkItem] = []
            left = capacity
            while left > 0 and (group := self._open_group()) is not None:
                samples = group.take(left)
                items.append(self._lease(worker_id, group, samples, now))
                left -= len(samples)
            if items:
                return items
            reason = "staleness" if self._gate_room() == 0 else "empty"
            return NoWork(reason=reason, retry_after_s=0.2)

    def add_completion(self, c: Completion) -> str | None:
        """Accept a completion into its group; returns the rejection reason, or None."""
        return self.add_completions([c])[0]

    def add_completions(self, batch: list[Completion]) -> list[str | None]:
        """Accept completions (one lock for the lot); the rejection reason of each, or None."""
        with self._cond:
            now, wall = self.clock(), time.time()
            groups = [self.groups.get(c.sample.group_id) for c in batch]  # add() keeps them in place
            values = value_rejections([c.sample for c in batch], [self._versions(g) for g in groups], self.vocab_size)
            reasons = [self._accept(c, g, now, v) for c, g, v in zip(batch, groups, values)]
            if self.store is not None:
                self.store.append_completions([c for c, r in zip(batch, reasons) if r is None], wall, self.version)
            return reasons

    def _versions(self, group: Group | None) -> tuple[int, int]:
        """The token versions ``group`` allows (any, for an unknown group: rejected anyway)."""
        if group is None:
            return 0, self.version + 1
        return allowed_versions(group.created_version, self.version, self.cfg.buffer.max_staleness)

    def _accept(self, c: Completion, group: Group | None, now: float, value_reason: str | None) -> str | None:
        s = c.sample
        reason = self._rejection(c, group, value_reason)
        if reason is not None:
            self.rejected[reason] += 1
            return reason
        self.leases.seen(s.worker_id, now)
        self.leases.settle(c.lease_id, s.group_id, s.sample_index)
        self.counts["completions"] += 1
        self.counts["completion_tokens"] += s.num_tokens
        self.by_worker[s.worker_id] += 1
        if group.add(s):
            self.pool.complete(group.prompt_idx, group.correct, group.n, self.version)
            self.counts["groups_ready"] += 1
            self._cond.notify_all()
        return None

    def _rejection(self, c: Completion, group: Group | None, value_reason: str | None) -> str | None:
        """Why ``c`` cannot join ``group``, or None: first where it belongs (``groups.py``), then
        its values (``value_reason``, from ``validate.value_rejections``)."""
        if group is None:
            return "unknown_group"
        reason = group.rejection(c.sample, c.lease_id)
        if reason is None and value_reason is not None:
            self._retry(c, group)
            return value_reason
        return reason

    def _retry(self, c: Completion, group: Group) -> None:
        """A sample of its own lease came with bad values: its worker has let it go, so unless the
        lease was revoked meanwhile (which requeued it) it is handed out again now rather than when
        the lease lapses (``lease_timeout_s``)."""
        s = c.sample
        lease = self.leases.leases.get(c.lease_id)
        if lease is not None and s.sample_index in lease.samples:
            self.leases.settle(c.lease_id, s.group_id, s.sample_index)
            self.counts["samples_redispatched"] += group.give_back({s.sample_index})

    def reject(self, reason: str) -> None:
        """Count a message the transport could not even decode."""
        with self._cond:
            self.rejected[reason] += 1

    def heartbeat(self, worker_id: str, idle_seconds: float | None = None, lease_ids: Sequence[int] = ()) -> int:
        """The worker is alive and still holds ``lease_ids``: each of them that is its own gets a
        new deadline ``lease_timeout_s`` from now (see ``leases.py``); returns how many did."""
        with self._cond:
            now = self.clock()
            self.leases.seen(worker_id, now)
            renewed = self.leases.renew(worker_id, lease_ids, now + self.cfg.buffer.lease_timeout_s, now)
            if idle_seconds is not None:
                self._idle[worker_id] = max(self._idle.get(worker_id, 0.0), idle_seconds)
            return renewed

    def worker_idle_seconds(self) -> float:
        """Seconds all workers ever reported waiting for work (grows monotonically)."""
        with self._cond:
            return sum(self._idle.values())

    def register_worker(self, worker_id: str, receivers: tuple[str, ...]) -> None:
        """A worker said hello: remember its weight receivers for the next broadcasts."""
        with self._cond:
            self.leases.seen(worker_id, self.clock())
            self._receivers[worker_id] = tuple(receivers)

    def live_workers(self) -> list[str]:
        """Workers heard from within ``buffer.worker_timeout_s``."""
        with self._cond:
            self._expire(self.clock())
            return sorted(self.leases.last_seen)

    def live_receivers(self) -> list[str]:
        """Weight receivers of the workers present now (silent ones are expired first)."""
        with self._cond:
            self._expire(self.clock())
            return sorted(r for w, rs in self._receivers.items() if w in self.leases.last_seen for r in rs)

    def worker_left(self, worker_id: str) -> int:
        """A worker said goodbye or crashed: hand its unfinished samples out again."""
        with self._cond:
            self._receivers.pop(worker_id, None)
            return self._give_back(self.leases.revoke_worker(worker_id))

    def expire(self) -> int:
        """Revoke leases past their deadline or of silent workers; returns samples requeued."""
        with self._cond:
            return self._expire(self.clock())

    # ------------------------------------------------------------------ learner

    def set_version(self, version: int) -> None:
        """The learner published weights of ``version``: the gate moves, batches age."""
        with self._cond:
            assert version >= self.version, "policy versions only grow"
            self.version = version
            self._cond.notify_all()

    def pull_batch(self, timeout: float | None = None) -> LearnerBatch | None:
        """The next ``gen_batch_prompts`` ready groups (waits up to ``timeout``; None if short)."""
        need = self.cfg.allocation.gen_batch_prompts
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                self.assembly.collect(self, need)
                if self.assembly.has(need):
                    return self.assembly.hand_out(self, need)
                left = None if deadline is None else deadline - time.monotonic()
                if self._closed or (left is not None and left <= 0):
                    return None
                self._cond.wait(left)

    def flush(self) -> None:
        """Write buffered store rows (called by the server on idle ticks)."""
        if self.store is not None:
            self.store.flush()

    def close(self) -> None:
        """Stop handing out work and wake a waiting learner."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def status(self) -> Status:
        """A snapshot for the status endpoint (``buffer/status.py`` builds it)."""
        with self._cond:
            return build_status(self, self.clock())

    def record_step(self, row: dict) -> None:
        """The learner's figures of its last step, served on the status endpoint."""
        with self._cond:
            self.last_step = numeric(row)

    def record_eval(self, row: dict) -> None:
        """The learner's last held-out evaluation, served on the status endpoint."""
        with self._cond:
            self.last_eval = numeric(row)

    # ------------------------------------------------------------------ checkpoints

    def save_state(self, directory: str | Path) -> None:
        """Statistics, counters and the prompts to generate again (``buffer/persist.py``)."""
        with self._cond:
            save_state(self, Path(directory))

    def restore_state(self, directory: str | Path) -> None:
        with self._cond:
            restore_state(self, Path(directory))

    # ------------------------------------------------------------------ internals

    def _open_group(self) -> Group | None:
        for group in self.groups.values():
            if group.pending:
                return group
        created = self._admit()
        return created[0] if created else None

    def _gate_room(self) -> int:
        live = sum(1 for g in self.groups.values() if g.state in (GroupState.WAITING, GroupState.IN_FLIGHT))
        ready = sum(1 for g in self.groups.values() if g.state is GroupState.READY)
        return admission_room(
            self.version,
            self.cfg.buffer.max_staleness,
            self.cfg.allocation.gen_batch_prompts,
            self.counts["consumed"],
            ready,
            live,
        )

    def _admit(self) -> list[Group]:
        """As many planned prompts as the gate has room for, each with the budget it got when its
        whole generation batch was water-filled (``planner.py``)."""
        created = []
        for idx, n in self.planner.admit(self._gate_room()):
            group = Group(self._next_group, idx, self.pool.prompts[idx].prompt_id, int(n), self.version)
            self.groups[group.group_id] = group
            self._next_group += 1
            created.append(group)
        self.counts["groups_created"] += len(created)
        return created

    def _lease(self, worker_id: str, group: Group, samples: list[int], now: float) -> WorkItem:
        lease_s = self.cfg.buffer.lease_timeout_s
        lease = self.leases.grant(worker_id, group.group_id, samples, now + lease_s)
        group.note_lease(lease.lease_id, samples)
        prompt = self.pool.prompts[group.prompt_idx]
        return WorkItem(
            lease_id=lease.lease_id,
            group_id=group.group_id,
            prompt_id=prompt.prompt_id,
            prompt=prompt.text,
            prompt_token_ids=pack_i32(prompt.token_ids),
            answer=prompt.answer,
            sample_indices=tuple(samples),
            seed=self.cfg.rollout.seed * 1_000_003 + group.group_id,
            lease_s=lease_s,
            source=prompt.source,
            fields=prompt.fields,
        )

    def _expire(self, now: float) -> int:
        return self._give_back(self.leases.revoke_expired(now, self.cfg.buffer.worker_timeout_s))

    def _give_back(self, leases) -> int:
        back = 0
        for lease in leases:
            group = self.groups.get(lease.group_id)
            if group is not None and group.state in (GroupState.WAITING, GroupState.IN_FLIGHT):
                back += group.give_back(lease.samples)
        self.counts["samples_redispatched"] += back
        return back
