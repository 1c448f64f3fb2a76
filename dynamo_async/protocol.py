"""Wire protocol between learner, buffer and rollout workers (docs/design.md section 5).

Every message is a versioned, frozen ``msgspec.Struct`` in one tagged union, encoded as
msgpack and decoded by a typed decoder; nothing is pickled. Token ids and float arrays
travel as packed little-endian bytes (int32 / float32), never Python lists.

Sockets (the buffer's side)::

    completions   PULL   <- workers PUSH     Completion, Heartbeat
    work          ROUTER <-> workers DEALER  Hello -> Welcome, WorkRequest -> WorkGrant | NoWork
    status        REP    <- anyone REQ       StatusRequest -> Status

Length invariants (checked on decode; a violation is a rejected message):
- ``Completion``: its ``SampleRecord`` (``dynamo_async/sample.py``): ``len(token_ids) ==
  len(logprobs) == len(versions)`` in elements, at least one token, at most ``MAX_TOKENS``;
  ``0 <= sample_index``; ``acc`` in {0, 1}.
- ``WorkItem``: ``1 <= len(sample_indices) <= MAX_GROUP``; prompt tokens packed int32, at
  least one. Workers generate from these exact ids, so the learner scores the same prompt.
- Every message: ``v == PROTOCOL_VERSION`` and the encoded size at most ``MAX_MESSAGE_BYTES``.
  A message of another version is a "version" rejection even where its shape differs from
  this version's (e.g. a version-2 Completion, whose sample fields were not yet nested).
"""

from __future__ import annotations

from typing import Literal, Union

import msgspec
import numpy as np

from dynamo_async.sample import MAX_TOKENS as MAX_TOKENS  # re-exported: the record's limit is the wire's
from dynamo_async.sample import SampleRecord

# 2: Status carries workers, throughput counters and the last step's figures
# 3: Completion carries its sample as one nested SampleRecord (dynamo_async/sample.py)
# 4: Welcome and WorkRequest carry the buffer's id; NoWork "reconnect" (the learner restarted)
# 5: WorkItem carries the row's data source and fields (user reward functions); Status the run's
#    total steps, steps_per_s, eta_s and last_step_age_s
PROTOCOL_VERSION = 5
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_GROUP = 4096


class ProtocolError(ValueError):
    """A message that is malformed, oversized, of another protocol version, or inconsistent;
    ``reason`` is the rejection counter it goes to: "malformed", "oversized" or "version"."""

    def __init__(self, message: str, reason: str = "malformed"):
        super().__init__(message)
        assert reason in REJECT_REASONS, reason
        self.reason = reason


REJECT_REASONS = ("malformed", "oversized", "version")


class _Msg(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=True):
    v: int = PROTOCOL_VERSION


class Hello(_Msg, tag="hello"):
    """Worker -> learner on connect: who it is, how many rollouts it runs at once, and the
    ids of its weight receivers (one per engine process, e.g. per tensor-parallel rank)."""

    worker_id: str
    host: str
    pid: int
    engine: str
    capacity: int
    receivers: tuple[str, ...] = ()


class Welcome(_Msg, tag="welcome"):
    """Learner -> worker: the resolved run config (YAML), where to push completions, and the
    weight-sync rendezvous (``sync_port`` 0: no weight sync, e.g. a buffer without learner).
    ``buffer_id`` names this start of the buffer (filled in by the server): a worker sends it
    with every WorkRequest, so a restarted learner tells it to say hello again. ``sync_token``
    is this learner start's weight-sync token: receivers accept only plans that carry it
    (``dynamo_async/weights/join.py``)."""

    worker_id: str
    config_yaml: str
    sync_host: str
    sync_port: int
    policy_version: int
    completions_port: int = 0
    buffer_id: str = ""
    sync_token: str = ""


class WorkRequest(_Msg, tag="work_request"):
    """Worker -> buffer: room for ``capacity`` more rollouts at ``policy_version``; ``buffer_id``
    from the worker's Welcome ("": a client that never said hello, e.g. a test tool)."""

    worker_id: str
    capacity: int
    policy_version: int
    buffer_id: str = ""


class WorkItem(_Msg, tag="work_item"):
    """Buffer -> worker: generate the samples ``sample_indices`` of group ``group_id``."""

    lease_id: int
    group_id: int
    prompt_id: str
    prompt: str
    prompt_token_ids: bytes
    answer: str
    sample_indices: tuple[int, ...]
    seed: int
    lease_s: float
    source: str = ""  # the row's data source, which picks its reward functions (rewards.by_source)
    fields: bytes = b""  # the dataset row, msgpack-encoded, for user reward functions (b"": none)

    def __post_init__(self) -> None:
        if not 1 <= len(self.sample_indices) <= MAX_GROUP:
            raise ValueError(f"got {len(self.sample_indices)} samples, expected 1..{MAX_GROUP}")
        if not self.prompt_token_ids or len(self.prompt_token_ids) % 4:
            raise ValueError(
                f"got prompt_token_ids of {len(self.prompt_token_ids)} bytes, expected a non-empty multiple of 4"
            )


class WorkGrant(_Msg, tag="work_grant"):
    """Buffer -> worker: the answer to one WorkRequest that has work (one item per group)."""

    items: tuple[WorkItem, ...]

    def __post_init__(self) -> None:
        if not self.items:
            raise ValueError("got a WorkGrant without items, expected at least one (NoWork otherwise)")


class Goodbye(_Msg, tag="goodbye"):
    """Worker -> buffer: leaving; hand out again whatever it still holds."""

    worker_id: str


class NoWork(_Msg, tag="no_work"):
    """Buffer -> worker: nothing to hand out now (staleness gate, empty pool, shutdown), or
    "reconnect": the request names another start of the buffer (the learner restarted), so the
    worker says hello again, joins the new weight sync and loads the current weights."""

    reason: Literal["staleness", "empty", "shutdown", "reconnect"]
    retry_after_s: float


class Completion(_Msg, tag="completion"):
    """Worker -> buffer: one finished sample (its record checks its own invariants) and the
    lease it was generated under."""

    lease_id: int
    sample: SampleRecord


class Heartbeat(_Msg, tag="heartbeat"):
    """Worker -> buffer: still alive, holding these leases. Sent at least every
    ``buffer.worker_timeout_s / 3`` seconds, from a thread, also while the engine generates."""

    worker_id: str
    lease_ids: tuple[int, ...]
    policy_version: int
    idle_seconds: float = 0.0  # cumulative time the worker spent waiting for work


class VersionNotice(_Msg, tag="version"):
    """Learner -> workers: weights of ``policy_version`` are being broadcast."""

    policy_version: int


class StatusRequest(_Msg, tag="status_request"):
    """Anyone -> buffer status endpoint."""


class WorkerInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One connected worker as the buffer sees it (part of ``Status``)."""

    worker_id: str
    last_seen_s: float  # seconds since its last message
    samples_leased: int  # samples handed out and not yet returned
    completions: int  # completions accepted from it so far


class Status(_Msg, tag="status"):
    """Buffer -> anyone: a snapshot of the run (``dynamo-async status``)."""

    policy_version: int
    groups: dict[str, int]  # by lifecycle state, plus "consumed" so far
    workers: int
    rejected: dict[str, int]
    completions: int
    dropped_groups: int
    step: int = 0  # learner batches handed out
    max_staleness: int = 0  # buffer.max_staleness
    gate_room: int = 0  # groups the staleness gate admits now
    completion_tokens: int = 0  # response tokens accepted so far
    uptime_s: float = 0.0
    worker_list: list[WorkerInfo] = []
    last_step: dict[str, float] = {}  # the learner's figures of its last step
    last_eval: dict[str, float] = {}  # its last held-out evaluation
    transport: str = ""  # "curve" (keys), "loopback" (open, local only) or "insecure" (open, --insecure)
    total_steps: int = 0  # trainer.total_steps
    steps_per_s: float | None = None  # the learner's recent step rate (learner/progress.py); None: unknown
    eta_s: float | None = None  # seconds until total_steps at that rate, counted from this snapshot
    last_step_age_s: float | None = None  # seconds since the learner's last step ended; None: no step yet


Message = Union[  # noqa: UP007 - msgspec's tagged union, spelled as its docs do
    Hello,
    Welcome,
    WorkRequest,
    WorkItem,
    WorkGrant,
    NoWork,
    Completion,
    Heartbeat,
    Goodbye,
    VersionNotice,
    StatusRequest,
    Status,
]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


class _Version(msgspec.Struct):
    """Only the version of a message (any other field is skipped)."""

    v: int


_version_decoder = msgspec.msgpack.Decoder(_Version)


def _other_version(data: bytes) -> int | None:
    """The ``v`` of a message that did not decode, when it names another protocol version."""
    try:
        v = _version_decoder.decode(data).v
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        return None
    return None if v == PROTOCOL_VERSION else v


def encode(msg: Message) -> bytes:
    """msgpack bytes of ``msg``."""
    return _encoder.encode(msg)


def decode(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """Typed decode; anything malformed, oversized or of another version is a ProtocolError."""
    if len(data) > max_bytes:
        raise ProtocolError(f"got a {len(data)}-byte message, expected at most {max_bytes}", "oversized")
    try:
        msg = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as err:
        other = _other_version(data)
        if other is not None:
            raise ProtocolError(f"got protocol version {other}, expected {PROTOCOL_VERSION}", "version") from None
        raise ProtocolError(str(err)) from None
    except RecursionError:
        raise ProtocolError("got msgpack nested too deeply, expected a flat message") from None
    if msg.v != PROTOCOL_VERSION:
        raise ProtocolError(f"got protocol version {msg.v}, expected {PROTOCOL_VERSION}", "version")
    return msg


def pack_i32(values) -> bytes:
    """Little-endian int32 bytes."""
    return np.ascontiguousarray(values, dtype="<i4").tobytes()


def pack_f32(values) -> bytes:
    """Little-endian float32 bytes."""
    return np.ascontiguousarray(values, dtype="<f4").tobytes()
