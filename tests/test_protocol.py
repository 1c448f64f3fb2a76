"""Wire protocol (docs/design.md section 5): round trips, packed arrays, decode-time invariants, rejection."""

from __future__ import annotations

import struct

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamo_async.protocol import (
    MAX_GROUP,
    MAX_MESSAGE_BYTES,
    MAX_TOKENS,
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
    pack_f32,
    pack_i32,
)
from dynamo_async.sample import SampleRecord

SETTINGS = settings(max_examples=150, deadline=None)
_raw_encoder = msgspec.msgpack.Encoder()


SAMPLE_FIELDS = set(SampleRecord.__struct_fields__)


def record(**changes) -> SampleRecord:
    fields = dict(
        group_id=3,
        prompt_id="p3",
        sample_index=2,
        worker_id="w0",
        token_ids=pack_i32([5, -1, 2**31 - 1]),
        logprobs=pack_f32([-0.5, -1e-3, 0.0]),
        versions=pack_i32([4, 4, 5]),
        finish_reason="stop",
        acc=1,
        reward=1.0,
        score_status="ok",
        gen_seconds=0.25,
        score_seconds=0.125,
    )
    fields.update(changes)
    return SampleRecord(**fields)


def completion(**changes) -> Completion:
    """A Completion; a change of a sample field goes into its record."""
    sample = {k: v for k, v in changes.items() if k in SAMPLE_FIELDS}
    return Completion(lease_id=7, sample=record(**sample), **{k: v for k, v in changes.items() if k not in sample})


def work_item(**changes) -> WorkItem:
    fields = dict(
        lease_id=1,
        group_id=2,
        prompt_id="p2",
        prompt="What is 1+1?",
        prompt_token_ids=pack_i32([10, 11, 12]),
        answer="2",
        sample_indices=(0, 1, 5),
        seed=99,
        lease_s=900.0,
    )
    fields.update(changes)
    return WorkItem(**fields)


ALL_MESSAGES = [
    Hello(worker_id="w0", host="node-1", pid=1234, engine="hf", capacity=8),
    Welcome(
        worker_id="w0",
        config_yaml="model:\n  name: builtin:tiny\n",
        sync_host="10.0.0.1",
        sync_port=29500,
        policy_version=3,
    ),
    WorkRequest(worker_id="w0", capacity=16, policy_version=2),
    work_item(),
    WorkGrant(items=(work_item(), work_item(lease_id=2, group_id=9, sample_indices=(3,)))),
    NoWork(reason="staleness", retry_after_s=0.2),
    completion(),
    Heartbeat(worker_id="w0", lease_ids=(1, 2, 3), policy_version=4),
    Goodbye(worker_id="w0"),
    VersionNotice(policy_version=11),
    StatusRequest(),
    Status(
        policy_version=2,
        groups={"in_flight": 3, "ready": 1},
        workers=2,
        rejected={"malformed": 4},
        completions=40,
        dropped_groups=1,
    ),
]


def raw(msg, **changes) -> dict:
    """``msg`` as a plain tagged mapping (to build invalid encodings the constructors refuse)."""
    out = {"type": type(msg).__struct_config__.tag, **msgspec.structs.asdict(msg)}
    out.update(changes)
    return out


def raw_completion(**changes) -> dict:
    """A valid Completion as a plain mapping with ``changes`` (sample fields into its record's mapping)."""
    out = raw(completion())
    out["sample"] = msgspec.structs.asdict(out["sample"])
    for k, v in changes.items():
        (out["sample"] if k in SAMPLE_FIELDS else out)[k] = v
    return out


def encode_raw(obj) -> bytes:
    return _raw_encoder.encode(obj)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("msg", ALL_MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_type_round_trips(msg):
    data = encode(msg)
    assert isinstance(data, bytes)
    back = decode(data)
    assert type(back) is type(msg)
    assert back == msg
    assert back.v == PROTOCOL_VERSION


def test_round_trip_covers_every_message_type():
    import typing

    from dynamo_async.protocol import Message

    assert {type(m) for m in ALL_MESSAGES} == set(typing.get_args(Message))


def test_pack_is_little_endian_int32_and_float32():
    assert pack_i32([1, -2]) == struct.pack("<ii", 1, -2)
    assert pack_f32([1.5, -0.25]) == struct.pack("<ff", 1.5, -0.25)
    # Not the host order by accident: big-endian input is converted, not reinterpreted.
    assert pack_i32(np.array([258], dtype=">i4")) == b"\x02\x01\x00\x00"
    assert pack_f32(np.array([2.0], dtype=">f8")) == struct.pack("<f", 2.0)


@SETTINGS
@given(tokens=st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=200), data=st.data())
def test_completion_arrays_round_trip_equal(tokens, data):
    n = len(tokens)
    logprobs = data.draw(st.lists(st.floats(width=32, allow_nan=False), min_size=n, max_size=n))
    versions = data.draw(st.lists(st.integers(0, 2**31 - 1), min_size=n, max_size=n))
    c = completion(token_ids=pack_i32(tokens), logprobs=pack_f32(logprobs), versions=pack_i32(versions))
    back = decode(encode(c)).sample
    t, lp, ver = back.arrays()
    assert back.num_tokens == n
    assert t.dtype == np.dtype("<i4") and lp.dtype == np.dtype("<f4") and ver.dtype == np.dtype("<i4")
    np.testing.assert_array_equal(t, np.array(tokens, dtype=np.int32))
    np.testing.assert_array_equal(lp, np.array(logprobs, dtype=np.float32))
    np.testing.assert_array_equal(ver, np.array(versions, dtype=np.int32))


def test_work_item_prompt_tokens_round_trip():
    tokens = np.array([0, 1, 151643, 2**31 - 1], dtype=np.int32)
    back = decode(encode(work_item(prompt_token_ids=pack_i32(tokens))))
    np.testing.assert_array_equal(np.frombuffer(back.prompt_token_ids, "<i4"), tokens)


# --------------------------------------------------------------------------- Completion invariants

_BAD_COMPLETIONS = {
    "logprobs_shorter": dict(logprobs=pack_f32([0.0, 0.0])),
    "versions_longer": dict(versions=pack_i32([1, 1, 1, 1])),
    "token_ids_longer": dict(token_ids=pack_i32([1, 2, 3, 4])),
    "empty_everything": dict(token_ids=b"", logprobs=b"", versions=b""),
    "not_multiple_of_4": dict(token_ids=b"\0" * 6, logprobs=b"\0" * 6, versions=b"\0" * 6),
    "acc_2": dict(acc=2),
    "acc_minus_1": dict(acc=-1),
    "negative_sample_index": dict(sample_index=-1),
    "bad_finish_reason": dict(finish_reason="eos"),
}


@pytest.mark.parametrize("changes", _BAD_COMPLETIONS.values(), ids=_BAD_COMPLETIONS.keys())
def test_completion_invariants_enforced_on_decode(changes):
    with pytest.raises(ProtocolError) as err:
        decode(encode_raw(raw_completion(**changes)))
    assert err.value.reason == "malformed"


@pytest.mark.parametrize(
    "changes",
    [c for k, c in _BAD_COMPLETIONS.items() if k != "bad_finish_reason"],
    ids=[k for k in _BAD_COMPLETIONS if k != "bad_finish_reason"],
)
def test_completion_invariants_enforced_on_construction(changes):
    with pytest.raises(ValueError):
        completion(**changes)


def test_completion_token_count_limit_enforced_on_decode():
    n = MAX_TOKENS + 1
    big = raw_completion(token_ids=b"\0" * (4 * n), logprobs=b"\0" * (4 * n), versions=b"\0" * (4 * n))
    with pytest.raises(ProtocolError):
        decode(encode_raw(big), max_bytes=1 << 26)
    ok = raw_completion(
        token_ids=b"\0" * 4 * MAX_TOKENS, logprobs=b"\0" * 4 * MAX_TOKENS, versions=b"\0" * 4 * MAX_TOKENS
    )
    assert decode(encode_raw(ok), max_bytes=1 << 26).sample.num_tokens == MAX_TOKENS


def test_valid_edge_completion_decodes():
    one = completion(token_ids=pack_i32([0]), logprobs=pack_f32([0.0]), versions=pack_i32([0]), acc=0, sample_index=0)
    assert decode(encode(one)) == one


# --------------------------------------------------------------------------- WorkItem / WorkGrant invariants


@pytest.mark.parametrize(
    "changes",
    [
        dict(sample_indices=()),
        dict(sample_indices=tuple(range(MAX_GROUP + 1))),
        dict(prompt_token_ids=b""),
        dict(prompt_token_ids=b"\0" * 5),
    ],
    ids=["no_samples", "too_many_samples", "no_prompt_tokens", "prompt_tokens_not_multiple_of_4"],
)
def test_work_item_invariants(changes):
    with pytest.raises(ValueError):
        work_item(**changes)
    with pytest.raises(ProtocolError):
        decode(encode_raw(raw(work_item(), **changes)))
    # Inside a grant, too.
    with pytest.raises(ProtocolError):
        decode(encode_raw({"type": "work_grant", "items": [raw(work_item(), **changes)]}))


def test_work_item_max_group_is_accepted():
    item = work_item(sample_indices=tuple(range(MAX_GROUP)))
    assert decode(encode(item)) == item


def test_work_grant_without_items_is_rejected():
    with pytest.raises(ValueError):
        WorkGrant(items=())
    with pytest.raises(ProtocolError):
        decode(encode_raw({"type": "work_grant", "items": []}))


# --------------------------------------------------------------------------- size, version, shape


def test_oversized_message_rejected_before_decoding():
    data = encode(completion())
    assert decode(data, max_bytes=len(data)) is not None
    with pytest.raises(ProtocolError, match=f"{len(data)}-byte"):
        decode(data, max_bytes=len(data) - 1)
    # Garbage larger than the limit is refused for its size, not parsed (the error names the size).
    garbage = b"\xc1" * (MAX_MESSAGE_BYTES + 1)
    with pytest.raises(ProtocolError, match=str(MAX_MESSAGE_BYTES)):
        decode(garbage)


@pytest.mark.parametrize("version", [0, PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 100, -1])
@pytest.mark.parametrize(
    "msg",
    [completion(), Hello(worker_id="w", host="h", pid=1, engine="hf", capacity=1), StatusRequest()],
    ids=lambda m: type(m).__name__,
)
def test_other_protocol_version_rejected(msg, version):
    with pytest.raises(ProtocolError, match="protocol version") as err:
        decode(encode_raw(raw(msg, v=version)))
    assert err.value.reason == "version"


def test_completion_of_protocol_version_2_gets_the_version_error():
    """Version 2 sent the sample's fields flat in the Completion; that shape does not decode as
    version 3, and the rejection still says which version it was."""
    flat = {"type": "completion", "v": 2, "lease_id": 7, **msgspec.structs.asdict(record())}
    with pytest.raises(ProtocolError, match="got protocol version 2, expected") as err:
        decode(encode_raw(flat))
    assert err.value.reason == "version"


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "no_such_message", "v": PROTOCOL_VERSION},
        {"type": 7, "v": PROTOCOL_VERSION},
        {"v": PROTOCOL_VERSION, "worker_id": "w"},  # no tag
        raw(Goodbye(worker_id="w"), worker_id=5),  # wrong type: int for str
        raw_completion(token_ids="abcdabcdabcd"),  # str for bytes
        raw_completion(token_ids=[1, 2, 3], logprobs=[0.0, 0.0, 0.0], versions=[1, 1, 1]),  # lists, not packed
        raw_completion(acc=True),  # bool for int
        raw_completion(acc=1.0),  # float for int
        raw_completion(lease_id="7"),
        raw_completion(v="1"),
        raw_completion(sample=[1, 2]),  # no record
        raw(WorkRequest(worker_id="w", capacity=1, policy_version=0), capacity=None),
        raw(Heartbeat(worker_id="w", lease_ids=(1,), policy_version=0), lease_ids=["a"]),
        raw(Goodbye(worker_id="w"), extra_field=1),  # unknown field
        raw_completion(signature=b"xx"),  # unknown field
        {**raw_completion(), "sample": {**raw_completion()["sample"], "signature": b"xx"}},  # unknown in the record
        {k: v for k, v in raw_completion().items() if k != "lease_id"},  # missing field
        {**raw_completion(), "sample": {k: v for k, v in raw_completion()["sample"].items() if k != "reward"}},
        [1, 2, 3],
        5,
        "completion",
        None,
        b"\x00\x01",
    ],
    ids=lambda o: repr(o)[:40],
)
def test_unknown_tag_wrong_types_unknown_fields_rejected(obj):
    with pytest.raises(ProtocolError):
        decode(encode_raw(obj))


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"\x81", b"\xdf\xff\xff\xff\xff", b"\x92\x01"],
    ids=["empty", "never_used_byte", "truncated_map", "huge_map_header", "truncated_array"],
)
def test_malformed_bytes_rejected(data):
    with pytest.raises(ProtocolError):
        decode(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\x82\xa4type\xa7goodbye\xa9worker_id\xa2\xff\xfe",  # a field value that is not UTF-8
        b"\x81\xa4type\xa2\xc3\x28",  # the tag itself is not UTF-8
        b"\x82\xa4type\xa7goodbye\xa2\xc3\x28\xa1x",  # a key that is not UTF-8
    ],
    ids=["value", "tag", "key"],
)
def test_invalid_utf8_string_is_a_protocol_error(data):
    """One flipped bit in any string of a valid message gives this; it must be a ProtocolError."""
    with pytest.raises(ProtocolError):
        decode(data)


def test_deeply_nested_msgpack_is_a_protocol_error():
    """4 kB of nested maps (under any size limit) must be a ProtocolError, not a RecursionError."""
    data = b"\x81\xa1a" * 1000 + b"\x00"
    with pytest.raises(ProtocolError):
        decode(data)


@SETTINGS
@given(st.binary(max_size=512))
def test_random_bytes_raise_only_protocol_error(data):
    try:
        decode(data)
    except ProtocolError:
        pass


@SETTINGS
@given(msg=st.sampled_from(ALL_MESSAGES), data=st.data())
def test_mutated_encodings_raise_only_protocol_error(msg, data):
    encoded = bytearray(encode(msg))
    kind = data.draw(st.sampled_from(["truncate", "flip", "insert", "splice"]))
    if kind == "truncate":
        encoded = encoded[: data.draw(st.integers(0, len(encoded) - 1))]
    elif kind == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(encoded) - 1))
            encoded[i] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "insert":
        i = data.draw(st.integers(0, len(encoded)))
        encoded[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    else:
        i = data.draw(st.integers(0, len(encoded)))
        encoded = encoded[:i] + data.draw(st.binary(max_size=32))
    try:
        back = decode(bytes(encoded))
    except ProtocolError:
        return
    # Whatever survives decoding is a well-formed message of this protocol version.
    assert back.v == PROTOCOL_VERSION
    if isinstance(back, Completion):
        s = back.sample
        t, lp, ver = s.arrays()
        assert len(t) == len(lp) == len(ver) >= 1 and s.acc in (0, 1) and s.sample_index >= 0
