"""ZeroMQ transport of the buffer service: three sockets served by one thread.

    completions  PULL    <- workers PUSH     Completion | Heartbeat | Goodbye
    work         ROUTER <-> workers DEALER   Hello -> Welcome; WorkRequest -> WorkGrant | NoWork
    status       REP     <- anyone REQ       StatusRequest -> Status

Every frame is decoded with the typed decoder of ``dynamo_async.protocol``. A frame that is
malformed, oversized, of another protocol version, of an unexpected type for its socket, or
inconsistent with the buffer (unknown group, duplicate sample, ...) is rejected and counted
by reason (``BufferService.rejected``); the loop keeps serving. The thread also revokes
expired leases every ``expire_every_s``. Runs in a thread of the learner process or alone.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import msgspec
import zmq

from buffer.curve import Authenticator, ServerKeys, is_loopback
from buffer.service import BufferService
from dynamo_async.errors import UsageError
from dynamo_async.protocol import (
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


class Endpoints:
    """Bound addresses (runtime facts; never written into the config)."""

    def __init__(self, host: str, work: int, completions: int, status: int):
        self.host, self.work, self.completions, self.status = host, work, completions, status

    def url(self, port: int) -> str:
        return f"tcp://{self.host}:{port}"

    def __repr__(self) -> str:
        return f"Endpoints({self.host}: work={self.work}, completions={self.completions}, status={self.status})"


class BufferServer:
    """Serves ``service`` on ``host``; ``port`` is the work port (completions +1, status +2),
    or 0 to bind three free ports (tests)."""

    def __init__(
        self,
        service: BufferService,
        host: str = "127.0.0.1",
        port: int = 0,
        welcome: Callable[[Hello], Welcome] | None = None,
        expire_every_s: float = 0.5,
        keys: ServerKeys | None = None,
    ):
        """``keys``: CURVE on every socket, clients from ``keys.authorized`` only
        (``buffer/curve.py``); None: plain TCP, reported as "loopback" or "insecure" by host."""
        self.service = service
        self.welcome = welcome
        self.buffer_id = uuid.uuid4().hex  # this start: workers welcomed by an earlier one re-hello
        self.expire_every_s = expire_every_s
        self.max_bytes = service.cfg.buffer.max_message_bytes
        self._ctx = zmq.Context()
        self._auth = Authenticator(self._ctx, keys) if keys is not None else None
        self.transport = "curve" if keys is not None else "loopback" if is_loopback(host) else "insecure"
        self._owners: dict[str, str] = {}  # worker id -> the client key that said hello with it
        self._work = self._socket(zmq.ROUTER)
        self._pull = self._socket(zmq.PULL)
        self._status = self._socket(zmq.REP)
        self.endpoints = self._bind(host, port)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="buffer-server", daemon=True)

    def start(self) -> BufferServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and close exactly this server's sockets."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for sock in (self._work, self._pull, self._status):
            sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()

    def __enter__(self) -> BufferServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals

    def _socket(self, kind: int) -> zmq.Socket:
        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, 4 * self.max_bytes)  # memory guard; the limit itself is counted
        if self._auth is not None:
            self._auth.secure(sock)
        return sock

    def _bind(self, host: str, port: int) -> Endpoints:
        """Bind the three sockets; a port in use or a host that is not this machine's is a
        ``UsageError`` (the sockets are closed first: the server is never started)."""
        offset = 0
        try:
            if port == 0:
                return self._bind_free_block(host)
            for offset, sock in enumerate((self._work, self._pull, self._status)):
                sock.bind(f"tcp://{host}:{port + offset}")
            return Endpoints(host, port, port + 1, port + 2)
        except zmq.ZMQError as err:
            if err.errno not in (zmq.EADDRINUSE, zmq.EADDRNOTAVAIL):
                raise
            for sock in (self._work, self._pull, self._status):
                sock.close(linger=0)
            if self._auth is not None:
                self._auth.stop()
            self._ctx.term()
            if err.errno == zmq.EADDRNOTAVAIL:
                raise UsageError(
                    f"--host: got {host!r}, expected an address of this machine; use --host 0.0.0.0 "
                    "--advertise NAME (NAME: how workers reach it) or a local address"
                ) from None
            what = f"{port}, which is" if offset == 0 else f"{port}, whose PORT + {offset} ({port + offset}) is"
            raise UsageError(
                f"--port: got {what} in use on {host} (another learner?); pick another port or stop that process"
            ) from None

    def _bind_free_block(self, host: str, tries: int = 64) -> Endpoints:
        """Three consecutive free ports (work, completions = +1, status = +2), so that
        ``dynamo-async status HOST:WORK_PORT`` finds the status port of any learner."""
        for _ in range(tries):
            work = self._work.bind_to_random_port(f"tcp://{host}", min_port=20000, max_port=60000)
            bound = [self._work]
            try:
                for offset, sock in ((1, self._pull), (2, self._status)):
                    sock.bind(f"tcp://{host}:{work + offset}")
                    bound.append(sock)
                return Endpoints(host, work, work + 1, work + 2)
            except zmq.ZMQError as err:
                if err.errno != zmq.EADDRINUSE:
                    raise
                for sock in bound:
                    sock.unbind(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        raise RuntimeError(f"found no three consecutive free ports on {host} in {tries} tries; pass --port")

    def _serve(self) -> None:
        poller = zmq.Poller()
        for sock in (self._work, self._pull, self._status):
            poller.register(sock, zmq.POLLIN)
        next_expiry = 0.0
        while not self._stop.is_set():
            events = dict(poller.poll(timeout=100))
            if self._pull in events:
                self._drain_pull()
            if self._work in events:
                self._on_work()
            if self._status in events:
                self._on_status()
            now = self.service.clock()
            if now >= next_expiry:
                self.service.expire()
                self.service.flush()
                next_expiry = now + self.expire_every_s

    def _decode(self, frame: zmq.Frame | bytes) -> tuple[Message | None, str | None]:
        """The message of ``frame`` and the client key it came from (None without CURVE: then
        frames are received as bytes, cheaper); a frame from a key no longer authorized is
        rejected."""
        user = None
        if isinstance(frame, zmq.Frame):
            assert self._auth is not None, "frames are received as Frame objects only with CURVE"
            user = frame.get("User-Id")
            if not self._auth.authorized.allows(user):
                self.service.reject("unauthorized")
                return None, user
            frame = frame.bytes
        try:
            return decode(frame, self.max_bytes), user
        except ProtocolError as err:
            self.service.reject(err.reason)
            return None, user

    def _owned(self, worker_id: str, user: str | None) -> bool:
        """With CURVE, a worker id speaks only from the key that said hello with it."""
        if self._auth is None or self._owners.get(worker_id) == user:
            return True
        self.service.reject("identity_mismatch")
        return False

    def _drain_pull(self) -> None:
        completions: list[Completion] = []
        for _ in range(1024):  # bounded, so work requests are never starved
            try:
                frame = self._pull.recv(zmq.NOBLOCK, copy=self._auth is None)
            except zmq.Again:
                break
            msg, user = self._decode(frame)
            if isinstance(msg, Completion):
                if self._owned(msg.sample.worker_id, user):
                    completions.append(msg)
            else:
                self._other(msg, user)
        if completions:
            self.service.add_completions(completions)

    def _other(self, msg: Message | None, user: str | None) -> None:
        if isinstance(msg, Heartbeat):
            if self._owned(msg.worker_id, user):
                self.service.heartbeat(msg.worker_id, msg.idle_seconds, msg.lease_ids)
        elif isinstance(msg, Goodbye):
            if self._owned(msg.worker_id, user):
                self.service.worker_left(msg.worker_id)
        elif msg is not None:
            self.service.reject("unexpected_type")

    def _on_work(self) -> None:
        frames = self._work.recv_multipart(copy=self._auth is None)
        if len(frames) != 2:
            self.service.reject("malformed")
            return
        identity, frame = frames
        msg, user = self._decode(frame)
        reply = self._answer(msg, user)
        if reply is not None:
            self._work.send_multipart([identity, encode(reply)])

    def _answer(self, msg: Message | None, user: str | None = None) -> Message | None:
        if isinstance(msg, WorkRequest):
            if msg.buffer_id and msg.buffer_id != self.buffer_id:  # welcomed by an earlier start
                return NoWork(reason="reconnect", retry_after_s=0.0)
            if not self._owned(msg.worker_id, user):
                return NoWork(reason="empty", retry_after_s=1.0)
            if msg.capacity < 1:
                self.service.reject("bad_capacity")
                return NoWork(reason="empty", retry_after_s=1.0)
            got = self.service.request_work(msg.worker_id, msg.capacity)
            return got if isinstance(got, NoWork) else WorkGrant(items=tuple(got))
        if isinstance(msg, Hello):
            if self._auth is not None and self._owners.setdefault(msg.worker_id, user) != user:
                self.service.reject("identity_mismatch")  # another key said hello with this id first
                return NoWork(reason="empty", retry_after_s=1.0)
            self.service.register_worker(msg.worker_id, msg.receivers)
            welcome = self.welcome(msg) if self.welcome is not None else self._standalone_welcome(msg)
            return msgspec.structs.replace(
                welcome, completions_port=self.endpoints.completions, buffer_id=self.buffer_id
            )
        if msg is not None:
            self.service.reject("unexpected_type")
        return NoWork(reason="empty", retry_after_s=1.0)

    def _standalone_welcome(self, hello: Hello) -> Welcome:
        """Without a learner: the run config, and no weight-sync rendezvous (port 0)."""
        from dynamo_async.config import config_to_yaml

        return Welcome(
            worker_id=hello.worker_id,
            config_yaml=config_to_yaml(self.service.cfg),
            sync_host="",
            sync_port=0,
            policy_version=self.service.version,
        )

    def _on_status(self) -> None:
        frames = self._status.recv_multipart(copy=self._auth is None)
        msg, user = self._decode(frames[0]) if len(frames) == 1 else (None, None)
        if len(frames) != 1:
            self.service.reject("malformed")
        if self._auth is not None and not self._auth.authorized.allows(user):
            self._status.send(b"")  # a revoked key learns nothing (REP must still answer)
            return
        if msg is not None and not isinstance(msg, StatusRequest):
            self.service.reject("unexpected_type")
        # REP must answer every request: a bare status keeps the socket usable.
        status = msgspec.structs.replace(self.service.status(), transport=self.transport)
        self._status.send(encode(status))


__all__ = ["BufferServer", "Endpoints", "Status"]
