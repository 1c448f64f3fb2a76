"""Worker-side transport to the buffer: four calls over a DEALER and a PUSH socket.

    hello(engine, capacity) -> Welcome          request_work(capacity, version) -> WorkGrant | NoWork
    send(Completion | Heartbeat)                close()  (sends Goodbye first)

``query_status(host, port)`` reads the status endpoint (``dynamo-async status``).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import msgspec
import zmq

from buffer.curve import ClientKeys
from dynamo_async.errors import UsageError
from dynamo_async.protocol import (
    PROTOCOL_VERSION,
    Completion,
    Goodbye,
    Heartbeat,
    Hello,
    Message,
    NoWork,
    ProtocolError,
    Status,
    StatusRequest,
    Welcome,
    WorkGrant,
    WorkRequest,
    decode,
    encode,
)


class BufferClient:
    """One worker's connection; ``timeout_s`` bounds every wait for an answer."""

    def __init__(
        self,
        host: str,
        work_port: int,
        completions_port: int | None,
        worker_id: str,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 600.0,
        keys: ClientKeys | None = None,
    ):
        """``completions_port`` None: learn it from the Welcome (``hello``). ``connect_timeout_s``
        bounds the wait for the first answer: workers may start before the learner is up.
        ``keys``: CURVE with this client's key pair (``buffer/curve.py``)."""
        self.keys = keys
        self.worker_id = worker_id
        self.host = host
        self.timeout_ms = int(timeout_s * 1000)
        self.connect_timeout_ms = int(connect_timeout_s * 1000)
        self.completions_port = completions_port
        self.work_port = work_port
        self.buffer_id = ""  # from the Welcome; sent with every WorkRequest
        self._ctx = zmq.Context()
        self._dealer = self._new_dealer()
        self._push = self._secured(self._ctx.socket(zmq.PUSH))
        self._push.setsockopt(zmq.LINGER, 2000)  # deliver queued completions on close
        if completions_port is not None:
            self._push.connect(f"tcp://{host}:{completions_port}")

    def hello(
        self, engine: str, capacity: int, receivers: tuple[str, ...] = (), cancel: Callable[[], bool] | None = None
    ) -> Welcome:
        """Say who this worker is; waits up to the connect timeout (or until ``cancel()``)."""
        reply = self._ask(
            Hello(
                worker_id=self.worker_id,
                host=socket.gethostname(),
                pid=os.getpid(),
                engine=engine,
                capacity=capacity,
                receivers=tuple(receivers),
            ),
            self.connect_timeout_ms,
            cancel,
        )
        if not isinstance(reply, Welcome):
            raise ConnectionError(f"hello: got {type(reply).__name__}, expected Welcome from the learner")
        if self.completions_port is None:
            self.completions_port = reply.completions_port
            self._push.connect(f"tcp://{self.host}:{reply.completions_port}")
        self.buffer_id = reply.buffer_id
        return reply

    def reset(self) -> None:
        """A fresh work socket: requests queued for a learner that stopped answering are dropped,
        so the next answer is to the next request (used before saying hello again)."""
        if self._refused is not None:
            self._dealer.disable_monitor()
            self._refused.close()
        self._dealer.close()
        self._dealer = self._new_dealer()

    def _new_dealer(self) -> zmq.Socket:
        dealer = self._secured(self._ctx.socket(zmq.DEALER))
        dealer.setsockopt(zmq.LINGER, 0)
        self._refused = dealer.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH) if self.keys else None
        dealer.connect(f"tcp://{self.host}:{self.work_port}")
        return dealer

    def _secured(self, sock: zmq.Socket) -> zmq.Socket:
        if self.keys is not None:
            self.keys.apply(sock)
        return sock

    def request_work(self, capacity: int, policy_version: int) -> WorkGrant | NoWork:
        request = WorkRequest(
            worker_id=self.worker_id, capacity=capacity, policy_version=policy_version, buffer_id=self.buffer_id
        )
        reply = self._ask(request)
        if not isinstance(reply, (WorkGrant, NoWork)):
            raise ConnectionError(f"work request: got {type(reply).__name__}, expected WorkGrant or NoWork")
        return reply

    def send(self, msg: Completion | Heartbeat) -> None:
        self._push.send(encode(msg))

    def goodbye(self) -> None:
        """Tell the buffer to hand out again what this worker holds (the worker may say hello
        again later, as after an engine restart)."""
        try:  # queued for the learner; with no connection at all (a refused key) there is no one to tell
            self._push.send(encode(Goodbye(worker_id=self.worker_id)), zmq.NOBLOCK)
        except zmq.Again:
            pass

    def close(self) -> None:
        """Say goodbye (the buffer hands out again what this worker still holds) and close."""
        if self._push.closed:
            return
        self.goodbye()
        if self._refused is not None:
            self._dealer.disable_monitor()
            self._refused.close()
        self._dealer.close()
        self._push.close()
        self._ctx.term()

    def __enter__(self) -> BufferClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _ask(self, msg: Message, timeout_ms: int | None = None, cancel: Callable[[], bool] | None = None) -> Message:
        """Send ``msg`` and wait for the answer: up to ``timeout_ms``, polled in slices of at most
        a second so that ``cancel()`` (e.g. the worker was told to stop) ends the wait early."""
        timeout_ms = self.timeout_ms if timeout_ms is None else timeout_ms
        self._dealer.send(encode(msg))  # queued by ZeroMQ until the learner is up
        deadline = time.monotonic() + timeout_ms / 1000
        while not self._dealer.poll(max(0, min(1000, int((deadline - time.monotonic()) * 1000)))):
            if self._refused is not None and self._refused.poll(0):
                raise ConnectionRefusedError(
                    f"the learner at {self.host}:{self.work_port} refused this worker's key: its --keys "
                    "folder's authorized/ must hold this worker's public key, and --server-key must be "
                    "that learner's server.key"
                )
            if time.monotonic() >= deadline or (cancel is not None and cancel()):
                raise TimeoutError(
                    f"no answer from the buffer within {timeout_ms / 1000:.0f} s; "
                    "check that the learner is running and the address is right"
                )
        return decode_reply(self._dealer.recv(), self.host, self.work_port)


def parse_address(text: str, flag: str = "HOST:PORT") -> tuple[str, int]:
    """``"10.0.0.5:5555"`` -> ``("10.0.0.5", 5555)``."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{flag}: got {text!r}, expected HOST:PORT such as 10.0.0.5:5555")
    return host, int(port)


def query_status(host: str, port: int, timeout_s: float = 5.0, keys: ClientKeys | None = None) -> Status:
    """One request to the status endpoint (``keys``: CURVE, as for workers)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        keys.apply(sock)
    try:
        sock.connect(f"tcp://{host}:{port}")
        sock.send(encode(StatusRequest()))
        if not sock.poll(int(timeout_s * 1000)):
            hint = "; with keys, check that the learner authorizes this key" if keys is not None else ""
            raise TimeoutError(f"no status from {host}:{port} within {timeout_s} s{hint}")
        data = sock.recv()
        if not data:
            raise ConnectionRefusedError(f"the learner at {host}:{port} no longer authorizes this key")
        reply = decode_reply(data, host, port, "dynamo-async status")
        if not isinstance(reply, Status):
            raise ConnectionError(f"status: got {type(reply).__name__}, expected Status")
        return reply
    finally:
        sock.close()
        ctx.term()


class _Version(msgspec.Struct):
    """Only the protocol version of a message (every other field is skipped)."""

    v: int


def decode_reply(data: bytes, host: str, port: int, who: str = "this worker") -> Message:
    """The learner's answer. One of another protocol version is a ``UsageError`` naming both
    versions: nothing this side sends can be read there (docs/design.md section 5)."""
    try:
        return decode(data)
    except ProtocolError as err:
        if err.reason != "version":
            raise
        theirs = msgspec.msgpack.decode(data, type=_Version).v  # decodes: that is how "version" was told
        raise UsageError(
            f"{who} speaks protocol {PROTOCOL_VERSION}, the learner at {host}:{port} speaks {theirs}; "
            "install the same dynamo-async version on both"
        ) from None
