"""Authenticated, encrypted transport: ZeroMQ CURVE on every socket of the buffer and its clients.

Keys are ZeroMQ certificates (``dynamo-async keys --out DIR``)::

    DIR/server.key                 the learner's public key: every worker and ``status`` needs it
    DIR/server.key_secret          the learner's key pair: only the learner reads it
    DIR/authorized/client-N.key    public keys the learner accepts; delete one to revoke it
    DIR/clients/client-N.key_secret  one key pair per worker node (copy one to each)

The learner (``ServerKeys``) makes its three sockets CURVE servers and answers ZeroMQ's ZAP
handshakes in a thread (pyzmq's ``ThreadAuthenticator``) with ``AuthorizedKeys``: a client whose
public key is not in ``authorized/`` gets no connection at all. ZAP names each accepted peer by
its public key (the frame property "User-Id", Z85 text), and the server checks it on every
message, against the directory as it is now (re-read at most once a second), so removing a
key cuts off an already connected client too. A worker id belongs to the key that said hello
with it first (``BufferServer``): messages naming that worker from another key are rejected.

Secret keys are read from files named on the command line; they are never in the config, in
a message or in a log. Without keys (loopback runs and tests), sockets are plain TCP.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from dynamo_async.errors import UsageError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServerKeys:
    """The learner's key pair and the folder of client public keys it accepts."""

    public: bytes
    secret: bytes
    authorized: Path

    @classmethod
    def load(cls, directory: str | Path) -> ServerKeys:
        root = Path(directory)
        public, secret = _pair(root / "server.key_secret", "--keys")
        authorized = root / "authorized"
        if not authorized.is_dir():
            raise UsageError(
                f"--keys: got {root}, expected a folder made by `dynamo-async keys --out {root}` "
                f"with authorized/ (the client public keys the learner accepts)"
            )
        return cls(public, secret, authorized)

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True


@dataclass(frozen=True)
class ClientKeys:
    """A client's key pair and the server's public key."""

    public: bytes
    secret: bytes
    server: bytes

    @classmethod
    def load(cls, key_file: str | Path, server_key_file: str | Path) -> ClientKeys:
        public, secret = _pair(Path(key_file), "--key")
        server, _ = _read(Path(server_key_file), "--server-key")
        return cls(public, secret, server)

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.server


def client_keys(key_file: str | None, server_key_file: str | None) -> ClientKeys | None:
    """The ``--key``/``--server-key`` pair of a client command (both or neither)."""
    if key_file is None and server_key_file is None:
        return None
    if key_file is None or server_key_file is None:
        raise UsageError(
            f"got --key {key_file} and --server-key {server_key_file}, expected both (this worker's "
            "clients/client-N.key_secret and the learner's server.key) or neither"
        )
    return ClientKeys.load(key_file, server_key_file)


def server_keys(directory: str | None, host: str, insecure: bool) -> ServerKeys | None:
    """The ``--keys`` of a serving command; off loopback, keys or an explicit ``--insecure``."""
    if directory is not None:
        if insecure:
            raise UsageError("got --keys and --insecure, expected one of them")
        return ServerKeys.load(directory)
    if not is_loopback(host) and not insecure:
        raise UsageError(
            f"--host: got {host}, which other machines can reach, without --keys; anyone who can reach "
            "it could join the run. Make keys with `dynamo-async keys --out KEYS --clients N` and pass "
            "--keys KEYS (workers: --key and --server-key), or pass --insecure on a trusted network"
        )
    if insecure:
        print(
            f"WARNING: serving {host} without keys (--insecure): anyone who reaches these ports can "
            "join, send completions and stop workers",
            file=sys.stderr,
            flush=True,
        )
    return None


class AuthorizedKeys:
    """The public keys in a folder of certificates, re-read when the folder changes (at most
    once per ``every_s``); the ZAP callback and the per-message check."""

    def __init__(self, folder: Path, every_s: float = 1.0):
        self.folder, self.every_s = folder, every_s
        self._keys: frozenset[bytes] = frozenset()
        self._stamp: tuple = ()
        self._checked = -float("inf")
        self._refresh(force=True)

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP: accept a handshake from the Z85 public key ``key``."""
        return self.allows(key.decode("ascii"))

    def allows(self, user_id: str | None) -> bool:
        self._refresh()
        return user_id is not None and user_id.encode("ascii") in self._keys

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self.every_s:
            return
        self._checked = now
        files = sorted(self.folder.glob("*.key"))
        stamp = tuple((f.name, f.stat().st_mtime_ns) for f in files)
        if stamp != self._stamp:
            self._keys = frozenset(_read(f, "authorized key")[0] for f in files)
            self._stamp = stamp


class Authenticator:
    """ZAP for one ZeroMQ context: CURVE clients whose key is authorized (``AuthorizedKeys``)."""

    def __init__(self, ctx: zmq.Context, keys: ServerKeys):
        self.keys = keys
        self.authorized = AuthorizedKeys(keys.authorized)
        self._zap = ThreadAuthenticator(ctx)
        self._zap.start()
        self._zap.configure_curve_callback("*", credentials_provider=self.authorized)

    def secure(self, sock: zmq.Socket) -> None:
        self.keys.apply(sock)

    def stop(self) -> None:
        self._zap.stop()


def write_keys(out: str | Path, clients: int) -> list[Path]:
    """A server pair and ``clients`` client pairs in ZeroMQ's certificate format (layout in
    the module docstring); secret files are readable by their owner only. Returns the files."""
    root = Path(out)
    if clients < 1:
        raise UsageError(f"--clients: got {clients}, expected at least 1")
    if (root / "server.key_secret").exists():
        raise UsageError(f"--out: got {root}, which already holds keys; pick a new folder (or delete it)")
    for sub in ("authorized", "clients"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    written = [Path(p) for p in zmq.auth.create_certificates(root, "server")]
    for n in range(clients):
        public, secret = (Path(p) for p in zmq.auth.create_certificates(root / "clients", f"client-{n}"))
        written += [public.rename(root / "authorized" / public.name), secret]
    for path in written:
        if path.name.endswith(".key_secret"):
            os.chmod(path, 0o600)
    return written


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def _pair(path: Path, flag: str) -> tuple[bytes, bytes]:
    public, secret = _read(path, flag)
    if secret is None:
        raise UsageError(f"{flag}: got {path}, a public key, expected a key pair (a .key_secret file)")
    return public, secret


def _read(path: Path, flag: str) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise UsageError(f"{flag}: got {path}, which does not exist; make keys with `dynamo-async keys --out DIR`")
    try:
        return zmq.auth.load_certificate(path)
    except ValueError:
        raise UsageError(f"{flag}: got {path}, expected a ZeroMQ certificate (public-key = ...)") from None
