"""Garbage on every socket of the buffer (docs/design.md section 5: rejected and counted, never a crash, never in
the buffer); afterwards a normal worker is served end to end. Real ZeroMQ on 127.0.0.1."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import msgspec
import numpy as np
import pytest
import zmq
from sample_records import sample_record

from buffer.client import BufferClient, query_status
from buffer.pool import PoolPrompt
from buffer.server import BufferServer
from buffer.service import BufferService
from dynamo_async.config import load_config
from dynamo_async.protocol import (
    PROTOCOL_VERSION,
    Completion,
    Goodbye,
    Heartbeat,
    Hello,
    NoWork,
    ProtocolError,
    Status,
    StatusRequest,
    VersionNotice,
    Welcome,
    WorkGrant,
    WorkItem,
    WorkRequest,
    decode,
    encode,
    pack_i32,
)

MAX_BYTES = 4096
GOOD = "good-worker"
_raw = msgspec.msgpack.Encoder()


def make_service(*overrides: str) -> BufferService:
    cfg = load_config(
        Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml",
        [f"buffer.max_message_bytes={MAX_BYTES}", *overrides],
    )
    prompts = [PoolPrompt(f"p{i}", f"What is {i}+1?", str(i + 1), np.array([3, 4, i], np.int32)) for i in range(12)]
    return BufferService(cfg, prompts)


def good_completion(item: WorkItem, i: int) -> Completion:
    tokens = np.array([item.group_id, i, 42, 43], dtype=np.int32)
    sample = sample_record(
        item.group_id, item.prompt_id, i, tokens, [-0.1] * 4, [0] * 4, worker_id=GOOD, acc=i % 2, reward=float(i % 2)
    )
    return Completion(lease_id=item.lease_id, sample=sample)


def fuzz_completion(group_id: int, **changes) -> Completion:
    """A well-formed completion from the fuzzer; ``changes`` are fields of its record."""
    args = dict(group_id=group_id, prompt_id="p0", sample_index=0, tokens=[1, 2], logprobs=[0.0, 0.0], versions=[0, 0])
    args.update(worker_id="zz-fuzz", acc=1, reward=1.0, **changes)
    return Completion(lease_id=123456, sample=sample_record(**args))


def as_raw(msg, **changes) -> bytes:
    obj = {"type": type(msg).__struct_config__.tag, **msgspec.structs.asdict(msg)}
    obj.update(changes)
    return _raw.encode(obj)


_ITEM = WorkItem(
    lease_id=9,
    group_id=9,
    prompt_id="p9",
    prompt="x",
    prompt_token_ids=pack_i32([1]),
    answer="1",
    sample_indices=(0,),
    seed=0,
    lease_s=1.0,
)
OTHER_TYPES = {
    "hello": Hello(worker_id="zz-fuzz", host="h", pid=1, engine="hf", capacity=4),
    "welcome": Welcome(worker_id="zz-fuzz", config_yaml="x: 1", sync_host="", sync_port=0, policy_version=0),
    "work_request": WorkRequest(worker_id="zz-fuzz", capacity=0, policy_version=0),
    "work_item": _ITEM,
    "work_grant": WorkGrant(items=(_ITEM,)),
    "no_work": NoWork(reason="empty", retry_after_s=1.0),
    "completion": fuzz_completion(0x7FFF0000),
    "heartbeat": Heartbeat(worker_id="zz-fuzz", lease_ids=(1,), policy_version=0),
    "goodbye": Goodbye(worker_id="zz-fuzz"),
    "version": VersionNotice(policy_version=5),
    "status_request": StatusRequest(),
    "status": Status(policy_version=0, groups={}, workers=0, rejected={}, completions=0, dropped_groups=0),
}
# Valid messages that each socket serves (so never garbage there).
ACCEPTED = {
    "pull": {"completion", "heartbeat", "goodbye"},
    "work": {"hello", "work_request"},
    "status": {"status_request"},
}
WRONG_SHAPES = [
    _raw.encode(x)
    for x in (
        [1, 2, 3],
        7,
        "completion",
        None,
        1.5,
        True,
        b"bytes",
        {},
        {"type": "completion"},
        {"type": "nope", "v": 1},
        {"type": 1},
        {"v": 1},
        {1: 2},
        [{"type": "heartbeat"}],
        {"type": "heartbeat", "worker_id": 5, "lease_ids": [], "policy_version": 0},
        {"type": "goodbye", "worker_id": "zz", "extra": 1},
    )
]


class Garbage:
    """Frames to send, with how many rejections (and of which reasons, where certain) they cause."""

    def __init__(self, rng: random.Random, known_groups: set[int]):
        self.rng, self.known_groups = rng, known_groups
        self.frames: dict[str, list[list[bytes]]] = {"pull": [], "work": [], "status": []}
        self.expected_total = 0
        self.at_least: Counter[str] = Counter()
        self.skipped = Counter()

    def add(self, socket: str, parts: list[bytes], rejections: int, reason: str | None) -> None:
        self.frames[socket].append(parts)
        self.expected_total += rejections
        if reason is not None:
            self.at_least[reason] += rejections

    def random_bytes(self, socket: str, n: int) -> None:
        for _ in range(n):
            data = self.rng.randbytes(self.rng.randint(0, 600))
            if self._local_outcome(socket, data) != "rejected":  # astronomically rare, but exact
                continue
            self.add(socket, [data], 1, None)

    def mutants(self, socket: str, bases: list[bytes], n: int) -> None:
        for _ in range(n):
            data = bytearray(self.rng.choice(bases))
            kind = self.rng.randrange(3)
            if kind == 0:
                data = data[: self.rng.randrange(len(data))]
            elif kind == 1:
                for _ in range(self.rng.randint(1, 3)):
                    data[self.rng.randrange(len(data))] ^= 1 << self.rng.randrange(8)
            else:
                i = self.rng.randrange(len(data) + 1)
                data[i:i] = self.rng.randbytes(self.rng.randint(1, 6))
            outcome = self._local_outcome(socket, bytes(data))
            if outcome != "rejected":
                self.skipped[outcome] += 1
                continue
            self.add(socket, [bytes(data)], 1, None)

    def _local_outcome(self, socket: str, data: bytes) -> str:
        """'rejected' when the buffer must reject ``data`` on ``socket`` (one count)."""
        try:
            msg = decode(data, MAX_BYTES)
        except ProtocolError:
            return "rejected"
        except Exception as err:  # noqa: BLE001 - a decoder crash; see the dedicated tests below
            return f"crash:{type(err).__name__}"
        tag = type(msg).__struct_config__.tag
        if tag in ACCEPTED[socket]:
            if tag == "completion" and msg.sample.group_id not in self.known_groups:
                return "rejected"  # unknown group
            if tag == "work_request" and msg.capacity < 1:
                return "rejected"  # bad capacity
            return "valid"
        return "rejected"  # a wrong type for this socket


def _fuzz_socket(ctx, kind, url):
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 3000)  # a dead server fails the test instead of hanging it
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.connect(url)
    return sock


def wait_for_rejections(ep, total: int, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    status = query_status(ep.host, ep.status, timeout_s=3)
    while sum(status.rejected.values()) < total and time.monotonic() < deadline:
        time.sleep(0.05)
        status = query_status(ep.host, ep.status, timeout_s=3)
    return status


def status_or_fail(ep) -> Status:
    try:
        return query_status(ep.host, ep.status, timeout_s=1)
    except TimeoutError:
        pytest.fail("the buffer server stopped answering: its thread died")


def test_fuzz_all_sockets_then_serve_a_normal_worker():
    t_start = time.monotonic()
    svc = make_service("buffer.worker_timeout_s=60")
    rng = random.Random(20240601)
    with BufferServer(svc) as server:
        ep = server.endpoints
        with BufferClient(ep.host, ep.work, ep.completions, GOOD, timeout_s=5) as client:
            client.hello("fake", 16)
            grant = client.request_work(16, 0)
            assert isinstance(grant, WorkGrant) and len(grant.items) == 4
            known = {it.group_id for it in grant.items}
            item = grant.items[0]

            g = Garbage(rng, known)
            # --- completions socket (PULL)
            g.random_bytes("pull", 600)
            g.mutants(
                "pull",
                [encode(fuzz_completion(0x7FFF0000 + k, sample_index=k % 5)) for k in range(8)]
                + [encode(OTHER_TYPES[t]) for t in ("status", "welcome", "hello", "no_work")],
                900,
            )
            for data in WRONG_SHAPES * 6:
                g.add("pull", [data], 1, "malformed")
            for k in range(40):
                other = PROTOCOL_VERSION + 1 + k % 3
                g.add("pull", [as_raw(fuzz_completion(0x7FFF0000 + k), v=other)], 1, "version")
                g.add("pull", [as_raw(OTHER_TYPES["heartbeat"], v=0)], 1, "version")
            for _ in range(30):
                size = rng.randint(MAX_BYTES + 1, 4 * MAX_BYTES)
                g.add("pull", [rng.randbytes(size)], 1, "oversized")
                n = (size // 12) + 1  # a valid completion, just too large
                big = fuzz_completion(
                    0x7FFF0000, token_ids=b"\0" * 4 * n, logprobs=b"\0" * 4 * n, versions=b"\0" * 4 * n
                )
                if len(encode(big)) <= 4 * MAX_BYTES:
                    g.add("pull", [encode(big)], 1, "oversized")
            for k in range(150):
                g.add("pull", [encode(fuzz_completion(0x7FFF0000 + k * 7919, sample_index=k))], 1, "unknown_group")
                g.add("pull", [encode(fuzz_completion(-k - 1))], 1, "unknown_group")
            for k in range(25):
                g.add(
                    "pull",
                    [encode(fuzz_completion(item.group_id, prompt_id=f"zz-{k}", sample_index=k % 4))],
                    1,
                    "wrong_prompt",
                )
                g.add(
                    "pull",
                    [
                        encode(
                            fuzz_completion(
                                item.group_id, prompt_id=item.prompt_id, sample_index=len(item.sample_indices) + k
                            )
                        )
                    ],
                    1,
                    "bad_sample_index",
                )
            for tag, msg in OTHER_TYPES.items():
                if tag not in ACCEPTED["pull"]:
                    for _ in range(10):
                        g.add("pull", [encode(msg)], 1, "unexpected_type")
            for _ in range(20):  # multi-frame pushes: each frame is read (and rejected) on its own
                g.add("pull", [rng.randbytes(20), b"\xc1"], 2, "malformed")

            # --- work socket (ROUTER); the DEALER adds one identity frame in front
            g.random_bytes("work", 300)
            g.mutants("work", [encode(OTHER_TYPES[t]) for t in ("completion", "status", "welcome", "heartbeat")], 400)
            for data in WRONG_SHAPES * 3:
                g.add("work", [data], 1, "malformed")
            for _ in range(30):
                g.add("work", [as_raw(OTHER_TYPES["hello"], v=PROTOCOL_VERSION + 5)], 1, "version")
                g.add(
                    "work", [as_raw(WorkRequest(worker_id="zz-fuzz", capacity=4, policy_version=0), v=0)], 1, "version"
                )
                g.add("work", [rng.randbytes(rng.randint(MAX_BYTES + 1, 4 * MAX_BYTES))], 1, "oversized")
            for tag, msg in OTHER_TYPES.items():
                if tag not in ACCEPTED["work"]:
                    for _ in range(8):
                        g.add("work", [encode(msg)], 1, "unexpected_type")
            for cap in (0, -1, -(2**40)):
                for _ in range(5):
                    g.add(
                        "work",
                        [encode(WorkRequest(worker_id="zz-fuzz", capacity=cap, policy_version=0))],
                        1,
                        "bad_capacity",
                    )
            for k in range(40):  # a wrong number of frames
                parts = [encode(OTHER_TYPES["hello"])] + [rng.randbytes(8)] * (1 + k % 3)
                g.add("work", parts, 1, "malformed")
            g.add("work", [b""], 1, "malformed")

            # --- status socket (REP); the DEALER adds the empty delimiter REQ would
            g.random_bytes("status", 200)
            g.mutants("status", [encode(OTHER_TYPES[t]) for t in ("completion", "heartbeat", "status")], 200)
            for data in WRONG_SHAPES * 2:
                g.add("status", [data], 1, "malformed")
            for _ in range(20):
                g.add("status", [as_raw(StatusRequest(), v=PROTOCOL_VERSION + 1)], 1, "version")
                g.add("status", [rng.randbytes(rng.randint(MAX_BYTES + 1, 4 * MAX_BYTES))], 1, "oversized")
            for tag, msg in OTHER_TYPES.items():
                if tag not in ACCEPTED["status"]:
                    for _ in range(5):
                        g.add("status", [encode(msg)], 1, "unexpected_type")

            sent = sum(len(v) for v in g.frames.values())
            assert sent >= 3000, f"only {sent} garbage messages"
            assert g.expected_total >= sent
            ctx = zmq.Context()
            try:
                push = _fuzz_socket(ctx, zmq.PUSH, ep.url(ep.completions))
                dealer = _fuzz_socket(ctx, zmq.DEALER, ep.url(ep.work))
                to_status = _fuzz_socket(ctx, zmq.DEALER, ep.url(ep.status))
                streams = [
                    (push, [], g.frames["pull"]),
                    (dealer, [], g.frames["work"]),
                    (to_status, [b""], g.frames["status"]),
                ]
                # Interleave the three streams, so the server sees all sockets busy at once.
                longest = max(len(frames) for _, _, frames in streams)
                for k in range(longest):
                    for sock, prefix, frames in streams:
                        if k < len(frames):
                            sock.send_multipart(prefix + frames[k])
                status = wait_for_rejections(ep, g.expected_total)
                replies = 0
                while to_status.poll(0) and replies < 10_000:
                    assert isinstance(decode(to_status.recv_multipart()[-1]), Status)
                    replies += 1
                for sock in (push, dealer, to_status):
                    sock.close()
                # Above the transport's memory guard (4 x max_message_bytes): dropped by ZeroMQ;
                # the server just keeps serving.
                huge = _fuzz_socket(ctx, zmq.PUSH, ep.url(ep.completions))
                huge.send(b"\x00" * (8 * MAX_BYTES))
                huge.close()
            finally:
                ctx.term()

            rejected = Counter(status.rejected)
            assert sum(rejected.values()) == g.expected_total, (
                f"got {dict(rejected)} ({sum(rejected.values())}), expected {g.expected_total} rejections"
            )
            for reason, n in g.at_least.items():
                assert rejected[reason] >= n, f"{reason}: got {rejected[reason]}, expected at least {n}"
            assert set(rejected) <= {
                "malformed",
                "oversized",
                "version",
                "unexpected_type",
                "unknown_group",
                "wrong_prompt",
                "bad_sample_index",
                "bad_capacity",
            }
            assert status.completions == 0, "garbage entered a group"
            assert replies > 0  # the status socket answered every garbage request

            # --- a normal worker, end to end
            for it in grant.items:
                for i in it.sample_indices:
                    client.send(good_completion(it, i))
            batch = svc.pull_batch(timeout=5)
            assert batch is not None, f"no batch after the fuzz: {svc.status()}"
            again = client.request_work(4, 1)
            assert isinstance(again, (WorkGrant, NoWork))
            final = query_status(ep.host, ep.status)
    assert final.completions == 16
    assert sum(final.rejected.values()) == g.expected_total
    assert sorted(grp.group_id for grp in batch.groups) == sorted(known)
    for grp in batch.groups:
        assert [s.sample_index for s in grp.samples] == [0, 1, 2, 3]
        for s in grp.samples:
            assert s.worker_id == GOOD
            assert s.token_array.tolist() == [grp.group_id, s.sample_index, 42, 43]
    assert time.monotonic() - t_start < 20


# --------------------------------------------------------------------------- crashers found by fuzzing

CRASHERS = {
    "invalid_utf8": b"\x82\xa4type\xa7goodbye\xa9worker_id\xa2\xff\xfe",
    "deep_nesting": b"\x81\xa1a" * 1000 + b"\x00",
}


@pytest.mark.parametrize("socket_name", ["completions", "work", "status"])
@pytest.mark.parametrize("name", CRASHERS)
def test_server_survives_undecodable_message(name, socket_name):
    """One bit flipped in any string of a valid message gives invalid UTF-8; a 4 kB message of
    nested maps exhausts the recursion limit. Either must be counted as malformed, not kill the
    server thread."""
    svc = make_service()
    with BufferServer(svc) as server:
        ep = server.endpoints
        ctx = zmq.Context()
        try:
            kind = zmq.PUSH if socket_name == "completions" else zmq.DEALER
            sock = _fuzz_socket(ctx, kind, ep.url(getattr(ep, socket_name)))
            sock.send_multipart(([b""] if socket_name == "status" else []) + [CRASHERS[name]])
            time.sleep(0.2)
            sock.close()
        finally:
            ctx.term()
        status = status_or_fail(ep)
        assert status.rejected == {"malformed": 1}


def test_status_socket_survives_multi_frame_request():
    """A REQ peer may send a request of several frames; the REP socket must read them all before
    it answers, or the answer fails (EFSM) and the server thread dies."""
    svc = make_service()
    with BufferServer(svc) as server:
        ep = server.endpoints
        ctx = zmq.Context()
        try:
            req = _fuzz_socket(ctx, zmq.REQ, ep.url(ep.status))
            req.send_multipart([encode(StatusRequest()), b"junk"])
            answered = req.poll(1000)
            req.close()
        finally:
            ctx.term()
        status = status_or_fail(ep)
        assert answered, "no answer to a two-frame status request"
        assert sum(status.rejected.values()) >= 1
        # And the worker-facing sockets still serve.
        with BufferClient(ep.host, ep.work, ep.completions, GOOD, timeout_s=2) as client:
            assert isinstance(client.request_work(1, 0), WorkGrant)
