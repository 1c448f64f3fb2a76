"""CURVE on the buffer's sockets: keys from `dynamo-async keys`, only authorized clients get in,
a revoked key is cut off, and a worker id speaks only from the key that said hello with it."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import zmq
from sample_records import sample_record
from test_buffer_loopback import make_service

from buffer.client import BufferClient, query_status
from buffer.curve import ClientKeys, ServerKeys, write_keys
from buffer.server import BufferServer
from dynamo_async.errors import UsageError
from dynamo_async.protocol import Completion, Goodbye, WorkGrant, encode


def _keys(tmp_path, clients: int = 2):
    write_keys(tmp_path / "keys", clients)
    return tmp_path / "keys"


def _client(keys_dir, n: int, port: int, worker_id: str, **kw) -> BufferClient:
    keys = ClientKeys.load(keys_dir / "clients" / f"client-{n}.key_secret", keys_dir / "server.key")
    return BufferClient("127.0.0.1", port, None, worker_id, timeout_s=5, connect_timeout_s=5, keys=keys, **kw)


def _completion(item, index: int, worker_id: str) -> Completion:
    n = 4
    sample = sample_record(
        item.group_id, item.prompt_id, index, np.arange(n, dtype=np.int32), np.full(n, -0.5, np.float32),
        np.zeros(n, np.int32), acc=index % 2, worker_id=worker_id,
    )  # fmt: skip
    return Completion(lease_id=item.lease_id, sample=sample)


def test_keys_writes_a_server_pair_and_client_pairs_with_private_secrets(tmp_path):
    root = _keys(tmp_path, clients=3)
    assert (root / "server.key").is_file() and (root / "server.key_secret").stat().st_mode & 0o077 == 0
    assert sorted(p.name for p in (root / "authorized").iterdir()) == [f"client-{n}.key" for n in range(3)]
    assert sorted(p.name for p in (root / "clients").iterdir()) == [f"client-{n}.key_secret" for n in range(3)]
    assert b"secret-key" not in (root / "authorized" / "client-0.key").read_bytes()
    with pytest.raises(UsageError, match="already holds keys"):
        write_keys(root, 1)


def test_an_authorized_client_works_and_a_stranger_gets_nothing(tmp_path):
    root = _keys(tmp_path)
    other = tmp_path / "other"
    write_keys(other, 1)  # a key pair the learner never authorized
    service = make_service()
    with BufferServer(service, keys=ServerKeys.load(root)) as server:
        port = server.endpoints.work
        good = _client(root, 0, port, "w0")
        welcome = good.hello("hf", 4)
        grant = good.request_work(4, welcome.policy_version)
        assert isinstance(grant, WorkGrant) and grant.items
        stranger = BufferClient(
            "127.0.0.1", port, server.endpoints.completions, "w9", timeout_s=3, connect_timeout_s=3,
            keys=ClientKeys.load(other / "clients" / "client-0.key_secret", root / "server.key"),
        )  # fmt: skip
        with pytest.raises(ConnectionRefusedError, match="refused this worker's key"):
            stranger.hello("hf", 4)
        item = grant.items[0]
        try:  # pushed, but never connected (with the refused pipe gone a blocking send would wait forever)
            stranger._push.send(encode(_completion(item, item.sample_indices[0], "w0")), zmq.NOBLOCK)
        except zmq.Again:
            pass
        plain = BufferClient("127.0.0.1", port, server.endpoints.completions, "w8", timeout_s=2, connect_timeout_s=2)
        with pytest.raises(TimeoutError):
            plain.hello("hf", 4)  # no CURVE handshake: no answer at all
        time.sleep(0.5)
        assert service.counts["completions"] == 0 and "w9" not in service.live_workers()
        good.send(_completion(item, item.sample_indices[0], "w0"))
        _until(lambda: service.counts["completions"] == 1)
        status = query_status("127.0.0.1", server.endpoints.status, keys=good.keys)
        assert status.transport == "curve" and status.completions == 1
        for c in (good, stranger, plain):
            c.close()


def test_a_worker_id_speaks_only_from_the_key_that_said_hello_with_it(tmp_path):
    root = _keys(tmp_path)
    service = make_service()
    with BufferServer(service, keys=ServerKeys.load(root)) as server:
        port = server.endpoints.work
        real = _client(root, 0, port, "w0")
        grant = real.request_work(4, real.hello("hf", 4).policy_version)
        forger = _client(root, 1, port, "w1")  # authorized, but for its own worker id
        forger.hello("hf", 4)
        item = grant.items[0]
        forger.send(_completion(item, item.sample_indices[0], "w0"))  # a completion in w0's name
        forger._push.send(encode(Goodbye(worker_id="w0")))
        _until(lambda: service.rejected["identity_mismatch"] >= 2)
        assert service.counts["completions"] == 0 and "w0" in service.live_workers()
        real.send(_completion(item, item.sample_indices[0], "w0"))
        _until(lambda: service.counts["completions"] == 1)
        for c in (real, forger):
            c.close()


def test_a_revoked_key_is_cut_off_while_connected(tmp_path):
    root = _keys(tmp_path)
    service = make_service()
    with BufferServer(service, keys=ServerKeys.load(root)) as server:
        client = _client(root, 0, server.endpoints.work, "w0")
        grant = client.request_work(4, client.hello("hf", 4).policy_version)
        (root / "authorized" / "client-0.key").unlink()  # revoke
        time.sleep(1.2)  # the folder is re-read at most once a second
        item = grant.items[0]
        client.send(_completion(item, item.sample_indices[0], "w0"))
        _until(lambda: service.rejected["unauthorized"] >= 1)
        assert service.counts["completions"] == 0
        client.close()


def test_key_files_are_checked_with_a_line_saying_what_to_do(tmp_path):
    root = _keys(tmp_path)
    with pytest.raises(UsageError, match="--key: got .*server.key, a public key, expected a key pair"):
        ClientKeys.load(root / "server.key", root / "server.key")
    with pytest.raises(UsageError, match="does not exist; make keys with `dynamo-async keys"):
        ServerKeys.load(tmp_path / "nowhere")
    shutil.rmtree(root / "authorized")
    with pytest.raises(UsageError, match="expected a folder made by `dynamo-async keys"):
        ServerKeys.load(root)


def _until(cond, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
