"""Rollout workers against a real learner side on 127.0.0.1: the buffer service and its ZeroMQ
server, with a Welcome that carries the run config and the weight-sync rendezvous of a real
WeightSender; workers are real processes (spawned ``run_worker``, or the ``dynamo-async
workers`` launcher) running the tiny builtin model and a real math-verify pool.

Every process a test starts is stopped by its Process/Popen object, and the test checks with
psutil that none of its descendants is left.
"""

from __future__ import annotations

import copy
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from buffer.client import BufferClient
from buffer.server import BufferServer
from buffer.service import BufferService
from dynamo_async.config import config_to_yaml, load_config
from dynamo_async.data.prompts import pool_prompts, training_problems
from dynamo_async.models import load_model, load_tokenizer
from dynamo_async.protocol import Welcome
from dynamo_async.weights.group import ACK_KEY
from dynamo_async.weights.sender import WeightSender
from workers.engine import GenResult
from workers.worker import Heartbeats, RolloutWorker, run_worker

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
TOL = 1e-4


# ---------------------------------------------------------------------------------- helpers


class Learner:
    """The learner side of a run: buffer service + server, and the weight sender whose
    rendezvous the Welcome hands to every worker. Records the sample of every completion that arrives."""

    def __init__(self, *overrides: str):
        # builtin:tiny (built in seconds) rather than tiny.yaml's builtin:tiny-math (a 25 s warm-up)
        self.cfg = load_config(TINY, ["model.name=builtin:tiny", "buffer.worker_timeout_s=2", *overrides])
        self.tokenizer = load_tokenizer(self.cfg.model.name)
        self.prompts = pool_prompts(training_problems(self.cfg.data), self.tokenizer, self.cfg)
        self.svc = BufferService(self.cfg, self.prompts)
        self.sender = WeightSender("127.0.0.1", 0, timeout_s=20)
        self.completions = []
        self.welcomed = []
        add = self.svc.add_completions  # what the server calls with each drained batch

        def record(batch):
            self.completions.extend(c.sample for c in batch)
            return add(batch)

        self.svc.add_completions = record
        self.server = BufferServer(self.svc, welcome=self.welcome).start()

    def welcome(self, hello) -> Welcome:
        self.welcomed.append(hello.worker_id)
        return Welcome(
            worker_id=hello.worker_id,
            config_yaml=config_to_yaml(self.cfg),
            sync_host="127.0.0.1",
            sync_port=self.sender.port,
            policy_version=self.svc.version,
        )

    @property
    def connect(self) -> str:
        return f"127.0.0.1:{self.server.endpoints.work}"

    def close(self) -> None:
        self.svc.close()
        self.server.stop()


class WorkerProcs:
    """Worker processes started with ``run_worker`` (spawn), stopped by their Process objects."""

    def __init__(self, learner: Learner):
        self.learner = learner
        self.ctx = mp.get_context("spawn")
        self.procs: list[mp.Process] = []

    def start(self, index: int = 0, capacity: int = 4, max_idle_s: float = 60.0) -> mp.Process:
        p = self.ctx.Process(
            target=run_worker,
            args=(self.learner.connect, index, "cpu", capacity, max_idle_s),
            name=f"worker-{index}",
            daemon=False,
        )
        p.start()
        self.procs.append(p)
        return p

    @staticmethod
    def worker_id(p: mp.Process, index: int = 0) -> str:
        return f"{socket.gethostname()}-{p.pid}-{index}"

    def stop_all(self, timeout_s: float = 30.0) -> None:
        """Shut the buffer (workers get NoWork "shutdown" and leave), then check they did."""
        alive = [p for p in self.procs if p.is_alive()]
        family = {p.pid: descendants(p.pid) for p in alive}
        self.learner.svc.close()
        for p in alive:
            p.join(timeout_s)
        stuck = [p for p in alive if p.is_alive()]
        for p in stuck:
            p.kill()
            p.join(5)
        left = [c for p in alive for c in family[p.pid] if alive_proc(c)]
        for c in left:
            c.kill()
        assert not stuck, f"workers did not stop after the buffer shut down: {[p.pid for p in stuck]}"
        assert not left, f"worker children left behind: {left}"
        for p in alive:
            assert p.exitcode == 0, f"worker pid {p.pid} exited with {p.exitcode}"


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def alive_proc(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until(cond, timeout_s: float, step_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step_s)
    return bool(cond())


@torch.no_grad()
def reference_logprobs(model, prompt, tokens, temperature: float) -> np.ndarray:
    ids = torch.from_numpy(np.concatenate([np.asarray(prompt, np.int64), np.asarray(tokens, np.int64)]))[None]
    logits = model(input_ids=ids).logits[0].float()
    z = logits[len(prompt) - 1 : len(prompt) - 1 + len(tokens)] / temperature
    picked = torch.tensor(np.asarray(tokens, np.int64))[:, None]
    return torch.log_softmax(z, -1).gather(-1, picked).squeeze(-1).numpy()


def local_scores(learner: Learner, completion):
    """acc and status of ``completion`` scored here with math-verify (the worker's reference)."""
    from dynamo_async.rewards import score_response

    tokens = completion.token_array.tolist()
    text = learner.tokenizer.decode(tokens, skip_special_tokens=True)
    answer = next(p.answer for p in learner.prompts if p.prompt_id == completion.prompt_id)
    r = learner.cfg.rewards
    return score_response(text, answer, r.timeout_s, r.max_chars)


@pytest.fixture
def learner_factory():
    made: list[tuple[Learner, WorkerProcs]] = []

    def make(*overrides: str) -> tuple[Learner, WorkerProcs]:
        learner = Learner(*overrides)
        procs = WorkerProcs(learner)
        made.append((learner, procs))
        return learner, procs

    yield make
    for learner, procs in made:
        try:
            procs.stop_all()
        finally:
            learner.close()


# ------------------------------------------------------------------- config, versions, scores


def test_worker_gets_config_from_welcome_and_versions_follow_broadcasts(learner_factory):
    # The learner's config differs from tiny.yaml (max_new_tokens 16, temperature 1.0): the
    # worker must generate with the learner's, which it only gets through the Welcome.
    temperature = 0.9
    learner, procs = learner_factory(
        "rollout.max_new_tokens=12", f"rollout.temperature={temperature}", "buffer.max_staleness=0"
    )
    svc = learner.svc
    p = procs.start(capacity=4)
    wid = procs.worker_id(p)

    b0 = svc.pull_batch(timeout=90)
    assert b0 is not None, f"no batch from the worker; status {svc.status()}"
    assert learner.welcomed and set(learner.welcomed) == {wid}
    model0 = load_model(learner.cfg.model.name)
    samples0 = [(g, s) for g in b0.groups for s in g.samples]
    assert len(b0.groups) == learner.cfg.allocation.gen_batch_prompts
    for g, s in samples0:
        assert s.worker_id == wid
        assert set(s.version_array.tolist()) == {0}
        assert 1 <= s.num_tokens <= 12
        assert (s.finish_reason == "length") == (
            s.num_tokens == 12 and s.token_array[-1] != learner.tokenizer.eos_token_id
        )
        np.testing.assert_allclose(
            s.logprob_array, reference_logprobs(model0, g.prompt_token_ids, s.token_array, temperature), atol=TOL
        )
    assert any(s.num_tokens == 12 for _, s in samples0)

    # max_staleness 0: nothing more is handed out until the learner publishes version 1
    model1 = copy.deepcopy(model0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for prm in model1.parameters():
            prm.add_(0.5 * torch.randn(prm.shape, generator=g))
    assert svc.live_receivers() == [wid]
    report = learner.sender.broadcast(dict(model1.named_parameters()), 1, svc.live_receivers())
    assert report.error is None, report.error
    ack = ACK_KEY.format(report.plan, wid)
    assert wait_until(lambda: learner.sender.store.check([ack]), 20), "the worker never acknowledged version 1"
    assert learner.sender.store.get(ack) == b"1"
    svc.set_version(1)

    b1 = svc.pull_batch(timeout=90)
    assert b1 is not None, f"no batch after the broadcast; status {svc.status()}"
    assert b1.policy_version == 1
    for group, s in ((g, s) for g in b1.groups for s in g.samples):
        assert set(s.version_array.tolist()) == {1}, "a token generated after version 1 was published is not tagged 1"
        np.testing.assert_allclose(
            s.logprob_array, reference_logprobs(model1, group.prompt_token_ids, s.token_array, temperature), atol=TOL
        )

    # every completion: reward consistent with acc (pm1), real math-verify scores
    assert len(learner.completions) >= b0.num_samples + b1.num_samples
    for c in learner.completions:
        assert c.acc in (0, 1) and c.score_status in ("ok", "no_answer")
        assert c.reward == 2 * c.acc - 1
        want = local_scores(learner, c)
        assert (c.acc, c.score_status) == (want.acc, want.status)
        assert c.gen_seconds > 0 and c.score_seconds >= 0
    procs.stop_all()
    assert svc.status().workers == 0, "the worker left without saying goodbye"


class FakeEngine:
    """A test double of an engine: answers each prompt with a response chosen by its seed
    (a correct boxed answer, a wrong one, or no answer), ending with eos."""

    def __init__(self, tokenizer, answers: dict[bytes, str]):
        self.tokenizer, self.answers, self.policy_version = tokenizer, answers, 0
        self.texts: dict[int, str] = {}

    def text_for(self, prompt_ids: np.ndarray, seed: int) -> str:
        answer = self.answers[np.asarray(prompt_ids, dtype=np.int32).tobytes()]
        return [f"so it is \\boxed{{{answer}}}", "maybe \\boxed{-999}", "no idea"][seed % 3]

    def generate(self, requests):
        out = []
        for r in requests:
            ids = self.tokenizer.encode(self.text_for(r.prompt_ids, r.seed), add_special_tokens=False)
            ids = np.asarray(ids + [self.tokenizer.eos_token_id], dtype=np.int32)
            out.append(GenResult(ids, np.full(len(ids), -0.5, np.float32), np.zeros(len(ids), np.int32), "stop"))
        return out

    def close(self):
        pass


@pytest.mark.parametrize("reward", ["pm1", "acc"])
def test_rollout_worker_rewards_follow_math_verify_scores(learner_factory, reward):
    """In-process RolloutWorker with a FakeEngine and the real math-verify pool, over the real
    buffer client: correct, wrong and unanswered responses score 1/ok, 0/ok, 0/no_answer."""
    from dynamo_async.rewards import MathVerifyScorer

    learner, _ = learner_factory(f"advantage.reward={reward}")
    engine = FakeEngine(learner.tokenizer, {p.token_ids.astype(np.int32).tobytes(): p.answer for p in learner.prompts})
    client = BufferClient("127.0.0.1", learner.server.endpoints.work, None, "fake-worker")
    client.hello("hf", 4)
    with MathVerifyScorer.for_run(learner.cfg) as scorer:
        worker = RolloutWorker(learner.cfg, client, engine, learner.tokenizer, scorer, capacity=4)
        thread = threading.Thread(target=worker.run, kwargs={"max_idle_s": 30.0}, daemon=True)
        thread.start()
        try:
            batch = learner.svc.pull_batch(timeout=60)
        finally:
            worker.stop.set()
            thread.join(30)
        assert not thread.is_alive()
        client.close()
    assert batch is not None
    seen = {"ok1": 0, "ok0": 0, "no_answer": 0}
    by_key = {(c.group_id, c.sample_index): c for c in learner.completions}
    for g in batch.groups:
        for s in g.samples:
            c = by_key[(g.group_id, s.sample_index)]
            kind = ["correct", "wrong", "none"][_seed_kind(learner, c)]
            if kind == "correct":
                assert (c.acc, c.score_status) == (1, "ok")
                seen["ok1"] += 1
            elif kind == "wrong":
                assert (c.acc, c.score_status) == (0, "ok")
                seen["ok0"] += 1
            else:
                assert (c.acc, c.score_status) == (0, "no_answer")
                seen["no_answer"] += 1
            assert s.acc == c.acc
            assert s.reward == (2 * c.acc - 1 if reward == "pm1" else c.acc)
            assert c.reward == s.reward
    assert all(seen.values()), f"the batch did not exercise every kind of answer: {seen}"


def _seed_kind(learner: Learner, c) -> int:
    """0 correct, 1 wrong, 2 none: what FakeEngine.text_for chose for this completion's seed."""
    seed = learner.cfg.rollout.seed * 1_000_003 + c.group_id + c.sample_index
    return seed % 3


# --------------------------------------------------------------------- a worker killed mid-batch


def test_killed_worker_leaves_no_orphans_and_its_samples_are_redispatched(learner_factory):
    learner, procs = learner_factory("rollout.max_new_tokens=256")
    svc = learner.svc
    victim = procs.start(index=0, capacity=8)
    survivor = procs.start(index=1, capacity=4)
    vid, sid = procs.worker_id(victim, 0), procs.worker_id(survivor, 1)

    def victim_leases():
        with svc._cond:
            return [lease for lease in svc.leases.leases.values() if lease.worker_id == vid and lease.samples]

    assert wait_until(lambda: bool(victim_leases()), 90, step_s=0.002), f"the worker never leased work; {svc.status()}"
    os.kill(victim.pid, signal.SIGSTOP)  # freeze it mid-batch at once, then kill it
    children = descendants(victim.pid)
    os.kill(victim.pid, signal.SIGKILL)
    time.sleep(0.3)  # completions the victim pushed before it died are in
    # what the victim held at its death, read before buffer.worker_timeout_s (2 s) revokes it
    with svc._cond:
        budgets = {gid: g.n for gid, g in svc.groups.items()}
        held = {
            (lease.group_id, s) for lease in svc.leases.leases.values() if lease.worker_id == vid for s in lease.samples
        }
        victim_done = {(gid, i) for gid, g in svc.groups.items() for i, c in g.received.items() if c.worker_id == vid}
    assert held, "the worker finished its batch before it was killed; nothing to hand out again"
    victim.join(10)
    assert not victim.is_alive() and victim.exitcode == -signal.SIGKILL
    assert children, "the worker had no math-verify processes to check"
    _, left = psutil.wait_procs(children, timeout=5)
    assert not left, f"children of the killed worker are still running: {left}"
    held_groups = {gid for gid, _ in held}

    seen_groups: dict[int, list[int]] = {}
    samples_by = {}
    deadline = time.monotonic() + 120
    while not held_groups <= set(seen_groups) and time.monotonic() < deadline:
        batch = svc.pull_batch(timeout=max(1.0, deadline - time.monotonic()))
        assert batch is not None, f"no batch; status {svc.status()}"
        for g in batch.groups:
            assert g.group_id not in seen_groups, f"group {g.group_id} handed to the learner twice"
            idx = [s.sample_index for s in g.samples]
            seen_groups[g.group_id] = idx
            assert len(idx) == len(set(idx)), f"duplicate sample in group {g.group_id}: {idx}"
            if g.group_id in budgets:
                assert idx == list(range(budgets[g.group_id])), f"group {g.group_id} incomplete: {idx}"
            for s in g.samples:
                samples_by[(g.group_id, s.sample_index)] = s
    assert held_groups <= set(seen_groups), f"groups {held_groups - set(seen_groups)} never completed"
    for key in held:
        assert samples_by[key].worker_id == sid, (
            f"sample {key} of the killed worker came from {samples_by[key].worker_id}"
        )
    for key in victim_done:  # what the victim delivered before it died is kept, not generated again
        if key in samples_by:
            assert samples_by[key].worker_id == vid, f"sample {key} was replaced by {samples_by[key].worker_id}"
    assert svc.counts["samples_redispatched"] >= len(held)
    assert svc.rejected.get("duplicate", 0) == 0
    assert vid not in svc.live_receivers() and sid in svc.live_receivers()


# ------------------------------------------------------------------------------- the launcher


def test_launcher_starts_workers_and_sigterm_stops_every_child(learner_factory):
    learner, _ = learner_factory()
    env = dict(os.environ)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dynamo_async.cli",
            "workers",
            "--connect",
            learner.connect,
            "--num-workers",
            "2",
            "--capacity",
            "4",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    family: list[psutil.Process] = []
    try:
        ok = wait_until(
            lambda: len({c.worker_id for c in learner.completions}) >= 2 or proc.poll() is not None, 120, step_s=0.1
        )
        assert proc.poll() is None, f"launcher exited early: {proc.communicate(timeout=5)}"
        assert ok, f"two workers did not both produce completions; status {learner.svc.status()}"
        family = descendants(proc.pid)  # 2 workers, their math-verify pools, multiprocessing helpers
        pids = {int(i.split("-")[-2]) for i in {c.worker_id for c in learner.completions}}
        assert len(pids) == 2, f"completions from {pids}, expected 2 workers"
        children = {p.pid for p in family if p.ppid() == proc.pid}
        assert pids <= children, f"workers {pids} are not children {children} of the launcher"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"launcher exit code {proc.returncode}; stderr:\n{err[-3000:]}"
        assert "started 2 worker(s)" in out
        _, left = psutil.wait_procs(family, timeout=10)
        assert not left, f"processes left after SIGTERM to the launcher: {left}"
        assert wait_until(lambda: learner.svc.status().workers == 0, 5), "the workers left without saying goodbye"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for p in family:
            if alive_proc(p):
                p.kill()


# --------------------------------------------------------------------------------- heartbeats


def test_heartbeat_thread_stops_and_joins():
    """``stop()`` ends the heartbeat thread; joining it must work (``threading.Thread`` calls
    its own ``_stop()`` method in ``join`` and ``is_alive``)."""
    beats = Heartbeats("127.0.0.1", 9, "w", 0.01, lambda: 0)  # PUSH connects lazily; nothing listens
    beats.start()
    time.sleep(0.05)
    beats.stop()
    beats.join(timeout=2.0)
    assert not beats.is_alive()
