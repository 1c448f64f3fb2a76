"""One rollout worker process: ask for work, generate, score beside generation, push.

    hello -> Welcome(config, weight-sync rendezvous, version)
    loop:  push scored completions -> WorkRequest -> WorkGrant | NoWork
           engine.generate(samples)            (swaps staged weights between decode steps)
           scorer.submit(response, gold, ...)  (reward function processes; not awaited here)

Scoring runs in the math-verify process pool while the engine generates the next batch;
completions are pushed as their scores arrive, tagged with each token's policy version. A
heartbeat thread (its own socket) keeps the worker's leases alive during long generations: each
heartbeat names the leases granted and not yet fully pushed, and the buffer renews them.
The worker stops on SIGTERM, SIGINT or SIGHUP, when the buffer answers "shutdown", or when its parent
(the launcher) is gone; it then says goodbye so its unfinished work is handed out again.
An engine that dies or hangs (``EngineFailure``) mid-generation: the worker pushes what was
already scored, says goodbye (the buffer hands out the failed batch's leases again at once),
restarts the engine, joins the weight sync under new receiver names, loads the learner's
current weights and goes on; after ``rollout.engine_restarts`` restarts it exits with one line.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import zmq

from buffer.client import BufferClient, parse_address
from buffer.curve import ClientKeys
from dynamo_async.config import config_from_dict, parse_yaml
from dynamo_async.config.schema import RunConfig
from dynamo_async.protocol import Completion, Heartbeat, NoWork, WorkItem, encode, pack_f32, pack_i32
from dynamo_async.sample import SampleRecord
from dynamo_async.signals import stop_on_signals
from workers.engine import EngineFailure, GenRequest, GenResult


@dataclass(frozen=True)
class _Pending:
    item: WorkItem
    sample_index: int
    result: GenResult
    gen_seconds: float
    future: object
    submitted: float


class Heartbeats(threading.Thread):
    """Sends a Heartbeat every ``interval_s`` on a socket of its own (ZeroMQ sockets are not
    shared between threads), naming the leases that ``leases()`` says the worker holds, so the
    buffer renews them while a generation runs longer than ``buffer.lease_timeout_s``. The
    callables are read from this thread: each must return a snapshot (e.g. an immutable tuple)."""

    def __init__(
        self,
        host: str,
        port: int,
        worker_id: str,
        interval_s: float,
        version: Callable[[], int],
        idle: Callable[[], float] = lambda: 0.0,
        leases: Callable[[], tuple[int, ...]] = tuple,
        keys: ClientKeys | None = None,
    ):
        super().__init__(name="heartbeats", daemon=True)
        self.host, self.port, self.worker_id, self.interval_s, self.version = host, port, worker_id, interval_s, version
        self.idle, self.leases, self.keys = idle, leases, keys
        self._halt = threading.Event()

    def run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        if self.keys is not None:
            self.keys.apply(sock)
        sock.connect(f"tcp://{self.host}:{self.port}")
        while not self._halt.wait(self.interval_s):
            beat = Heartbeat(
                worker_id=self.worker_id,
                lease_ids=self.leases(),
                policy_version=self.version(),
                idle_seconds=self.idle(),
            )
            try:  # never blocks: with no connection (learner gone), a missed heartbeat is harmless
                sock.send(encode(beat), zmq.NOBLOCK)
            except zmq.Again:
                pass
        sock.close()
        ctx.term()

    def stop(self) -> None:
        self._halt.set()


class RolloutWorker:
    """The loop of one worker process, around an engine, a scorer and a buffer client."""

    def __init__(
        self,
        cfg: RunConfig,
        client: BufferClient,
        engine,
        tokenizer,
        scorer,
        capacity: int,
        rejoin: Callable[[], str | None] | None = None,
        restart: Callable[[], object | None] | None = None,
    ):
        """``rejoin``: say hello again; "rejoined" (a restarted learner: its weights are loaded),
        "same" (the learner was only slow to answer) or None (give up). None: stop when the
        learner stops answering. ``restart``: after an engine failure, a new engine serving the
        learner's current weights, or None (give up); None: no restarts."""
        self.cfg, self.client, self.engine, self.tokenizer, self.scorer = cfg, client, engine, tokenizer, scorer
        self.capacity = capacity
        self.rejoin, self.restart = rejoin, restart
        self.engine_restarts = 0
        self.pending: deque[_Pending] = deque()
        self.sent = 0
        self.idle_seconds = 0.0  # time spent waiting for work (reported in heartbeats)
        self._unsent: Counter[int] = Counter()  # samples not pushed yet, per held lease (this loop's only)
        self.held_leases: tuple[int, ...] = ()  # snapshot of _unsent's leases for the heartbeat thread
        self.stop = threading.Event()
        self._parent = os.getppid()

    def run(self, max_idle_s: float | None = None) -> int:
        """Work until stopped (or idle for ``max_idle_s``); returns completions sent."""
        idle_since = None
        while not self._should_stop():
            self.push_scored(block=False)
            try:
                grant = self.client.request_work(self.capacity, self.engine.policy_version)
            except TimeoutError:  # the learner crashed, is restarting, or is unreachable
                if self._rejoin("the learner does not answer"):
                    continue
                break
            if isinstance(grant, NoWork):
                if grant.reason == "shutdown":
                    break
                if grant.reason == "reconnect":
                    if self._rejoin("the learner restarted"):
                        continue
                    break
                idle_since = idle_since or time.monotonic()
                if max_idle_s is not None and time.monotonic() - idle_since > max_idle_s:
                    break
                waited = time.monotonic()
                self.stop.wait(grant.retry_after_s)
                self.idle_seconds += time.monotonic() - waited
                continue
            idle_since = None
            self.generate(list(grant.items))
        self.push_scored(block=True)
        return self.sent

    def generate(self, items: list[WorkItem]) -> None:
        self._hold(items)
        samples = [(item, s) for item in items for s in item.sample_indices]
        requests = [GenRequest(np.frombuffer(item.prompt_token_ids, "<i4"), item.seed + s) for item, s in samples]
        start = time.perf_counter()
        try:
            results = self.engine.generate(requests)
        except EngineFailure as err:
            self._engine_failed(str(err))
            return
        per_sample = (time.perf_counter() - start) / max(len(results), 1)
        now = time.perf_counter()
        for (item, s), res in zip(samples, results):
            text = self.tokenizer.decode(res.token_ids.tolist(), skip_special_tokens=True)
            future = self.scorer.submit(text, item.answer, item.prompt, item.source, item.fields)
            self.pending.append(_Pending(item, s, res, per_sample, future, now))

    def push_scored(self, block: bool) -> None:
        """Send every completion whose score is in (all of them when ``block``), in order."""
        while self.pending and (block or self.pending[0].future.done()):
            p = self.pending.popleft()
            score = p.future.result()
            self.client.send(self._completion(p, score, time.perf_counter() - p.submitted))
            self.sent += 1
            self._release(p.item.lease_id)

    def _engine_failed(self, why: str) -> None:
        """Push what was scored before the failure (its leases are still held), hand the failed
        batch's leases back at once (goodbye), then restart the engine or give up."""
        self.push_scored(block=True)
        self._unsent.clear()
        self.held_leases = ()
        self.client.goodbye()
        wid = self.client.worker_id
        print(f"worker {wid}: {why}; its leases went back to the buffer", flush=True)
        engine = self.restart() if self.restart is not None else None
        if engine is None:
            raise EngineFailure(f"worker {wid}: {why}; no engine restart left (rollout.engine_restarts)")
        self.engine = engine
        self.engine_restarts += 1
        print(f"worker {wid}: engine restarted ({self.engine_restarts}), serving version {engine.policy_version}")

    def _hold(self, items: list[WorkItem]) -> None:
        """The granted leases are held until each of their samples is pushed."""
        for item in items:
            self._unsent[item.lease_id] += len(item.sample_indices)
        self.held_leases = tuple(self._unsent)

    def _release(self, lease_id: int) -> None:
        """One sample of ``lease_id`` was pushed; the lease is let go with its last one. The
        snapshot is a new tuple, swapped in whole, so the heartbeat thread never sees it change."""
        assert self._unsent[lease_id] > 0, f"pushed more samples than lease {lease_id} holds"
        self._unsent[lease_id] -= 1
        if not self._unsent[lease_id]:
            del self._unsent[lease_id]
            self.held_leases = tuple(self._unsent)

    def _completion(self, p: _Pending, score, score_seconds: float) -> Completion:
        """The scored sample as its record, under the lease it was generated for."""
        r = p.result
        record = SampleRecord(
            group_id=p.item.group_id,
            prompt_id=p.item.prompt_id,
            sample_index=p.sample_index,
            worker_id=self.client.worker_id,
            token_ids=pack_i32(r.token_ids),
            logprobs=pack_f32(r.logprobs),
            versions=pack_i32(r.versions),
            finish_reason=r.finish_reason,
            acc=int(score.acc),
            reward=score.reward,
            score_status=score.status,
            gen_seconds=p.gen_seconds,
            score_seconds=score_seconds,
        )
        return Completion(lease_id=p.item.lease_id, sample=record)

    def _rejoin(self, why: str) -> bool:
        """Say hello again; after a restarted learner, drop what belonged to the one that went
        away (its groups are generated again under new ids after its resume). False: stop."""
        if self.rejoin is None:
            print(f"worker {self.client.worker_id}: {why}; stopping", flush=True)
            return False
        print(f"worker {self.client.worker_id}: {why}; saying hello again", flush=True)
        outcome = self.rejoin()
        if outcome == "rejoined":
            self.pending.clear()
            self._unsent.clear()
            self.held_leases = ()
        return outcome is not None

    def _should_stop(self) -> bool:
        return self.stop.is_set() or os.getppid() != self._parent


def run_worker(
    connect: str,
    index: int = 0,
    device: str = "cpu",
    capacity: int = 8,
    max_idle_s: float | None = None,
    keys: ClientKeys | None = None,
) -> int:
    """Entry of a worker process: connect, build engine and scorer, work, clean up (``keys``:
    CURVE, ``buffer/curve.py``)."""
    host, port = parse_connect(connect)
    worker_id = f"{socket.gethostname()}-{os.getpid()}-{index}"
    # A work request unanswered for 10 s means the learner is gone (its server thread answers
    # at once even mid-step): the worker then waits for it to come back (rejoin).
    client = BufferClient(host, port, None, worker_id, timeout_s=10.0, keys=keys)
    welcome = client.hello("pending", capacity)
    cfg = config_from_dict(parse_yaml(welcome.config_yaml))
    from workers.factory import build_worker_parts

    parts = build_worker_parts(cfg, worker_id, welcome, device)
    _announce(client, parts, cfg, capacity, welcome.policy_version)
    worker = RolloutWorker(cfg, client, parts.engine, parts.tokenizer, parts.scorer, capacity)
    worker.rejoin = _rejoiner(client, parts, cfg, welcome.config_yaml, capacity, worker._should_stop)
    worker.restart = _restarter(client, parts, cfg, capacity, worker._should_stop)
    heartbeats = Heartbeats(
        host,
        welcome.completions_port,
        worker_id,
        cfg.buffer.worker_timeout_s / 3,
        lambda: parts.engine.policy_version,
        lambda: worker.idle_seconds,
        lambda: worker.held_leases,
        keys,
    )
    heartbeats.start()
    stop_on_signals(worker.stop)  # SIGTERM, SIGINT, SIGHUP
    try:
        return worker.run(max_idle_s)
    finally:
        heartbeats.stop()
        client.close()
        parts.close()


def _rejoiner(
    client: BufferClient, parts, cfg: RunConfig, config_yaml: str, capacity: int, cancel: Callable[[], bool]
) -> Callable[[], str | None]:
    """What a worker does when its learner restarted: hello (waiting up to the client's connect
    timeout for the learner to come back), join the new weight sync, load the current weights.
    It gives up (None) on a learner that does not come back, that runs another config, or that
    started a new run (version 0: the weights this worker holds are of another run)."""

    def rejoin() -> str | None:
        before = client.buffer_id
        client.reset()
        try:
            welcome = client.hello("pending", capacity, cancel=cancel)
        except TimeoutError as err:
            print(f"worker {client.worker_id}: {err}; stopping", flush=True)
            return None
        if welcome.buffer_id == before:  # the same learner, only slow to answer: carry on
            client.hello(cfg.rollout.engine, capacity, receivers=parts.receiver_ids)
            return "same"
        if welcome.config_yaml != config_yaml:
            print(
                f"worker {client.worker_id}: the learner came back with another config; restart the workers", flush=True
            )
            return None
        if welcome.policy_version == 0:
            print(f"worker {client.worker_id}: the learner came back as a new run (version 0); stopping", flush=True)
            return None
        parts.rejoin(welcome)
        _announce(client, parts, cfg, capacity, welcome.policy_version)
        print(f"worker {client.worker_id}: rejoined at version {welcome.policy_version}", flush=True)
        return "rejoined"

    return rejoin


def _restarter(
    client: BufferClient, parts, cfg: RunConfig, capacity: int, cancel: Callable[[], bool]
) -> Callable[[], object | None]:
    """What a worker does after its engine failed: stop the old engine (its processes are
    killed), start a new one, join the weight sync under new receiver names and load the
    learner's current weights; None when the engine cannot be restarted or none are left."""
    left = cfg.rollout.engine_restarts

    def restart():
        nonlocal left
        if parts.restart_engine is None or left == 0:
            return None
        left -= 1
        parts.engine.close()
        welcome = client.hello("pending", capacity, cancel=cancel)  # the current version and rendezvous
        parts.engine, parts.receiver_ids = parts.restart_engine(welcome)
        _announce(client, parts, cfg, capacity, welcome.policy_version)
        return parts.engine

    return restart


def _announce(client: BufferClient, parts, cfg: RunConfig, capacity: int, version: int) -> None:
    """Hello with the receivers (announced only once they listen: every plan that names them
    comes later), then, past version 0, the learner's current weights before any generation;
    without a weight sync the engine just takes the buffer's version."""
    client.hello(cfg.rollout.engine, capacity, receivers=parts.receiver_ids)
    if not parts.receiver_ids:  # no weight sync (a buffer without learner): nothing to load
        parts.engine.policy_version = version
    elif version > 0:
        parts.wait_for_weights(version, cfg.buffer.worker_timeout_s * 4)


def parse_connect(connect: str) -> tuple[str, int]:
    return parse_address(connect, "--connect")
