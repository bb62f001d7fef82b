"""The log signer: the coordinator's log key in a process of its own, so the database host holds no
private key (run it as another user, in another container, or on another machine behind a socket).

`custody log-signer --key FILE --socket PATH` answers over a unix socket, one line per request:

    PUBKEY                 ->  OK <public key, 64 hex>
    SIGN <message hex>     ->  OK <signature, 128 hex> <public key, 64 hex>
    anything else          ->  ERR <reason>

The coordinator sends 32-byte hashes (log entries, checkpoints) and, for its proof-of-reserves
self-check, the report it signs; a message is at most MAX_MESSAGE bytes. With
CUSTODY_LOG_SIGNER=unix:PATH set the coordinator signs through `RemoteKey`, which checks every
signature it gets back, and refuses to log anything while the signer does not answer.
"""
from __future__ import annotations

import logging
import os
import socket
import socketserver
import threading
from pathlib import Path

import nacl.exceptions
import nacl.signing

from custody.eventlog.log import CoordinatorKey, EventLogError

log = logging.getLogger("custody.eventlog.signer")
MAX_MESSAGE = 1_000_000          # bytes: a report is a few kilobytes, a hash 32
TIMEOUT = 10.0                   # seconds the coordinator waits for an answer


# -- the signer process ----------------------------------------------------------------------------
class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.connection.settimeout(TIMEOUT)
        while True:
            try:
                line = self.rfile.readline(2 * MAX_MESSAGE + 16)
            except OSError:
                return
            if not line:
                return
            self.wfile.write((self.server.answer(line.decode("ascii", "replace").strip()) + "\n").encode())


class SignerServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, key: CoordinatorKey, socket_path: str | Path):
        self.key, self.signed = key, 0
        path = Path(socket_path)
        if path.exists() or path.is_symlink():
            if not path.is_socket():
                raise EventLogError(f"{path} exists and is not a socket: choose another --socket path")
            path.unlink()                          # a stale socket of an earlier run
        previous = os.umask(0o177)                 # the socket is the key's door: owner only
        try:
            super().__init__(str(path), _Handler)
        finally:
            os.umask(previous)

    def answer(self, request: str) -> str:
        command, _, argument = request.partition(" ")
        if command == "PUBKEY" and not argument:
            return f"OK {self.key.public_hex}"
        if command != "SIGN":
            return "ERR unknown request (PUBKEY, or SIGN <message hex>)"
        try:
            message = bytes.fromhex(argument)
        except ValueError:
            return "ERR the message is not hex"
        if not 1 <= len(message) <= MAX_MESSAGE:
            return f"ERR a message is 1 to {MAX_MESSAGE} bytes"
        self.signed += 1
        return f"OK {self.key.sign(message).hex()} {self.key.public_hex}"


def serve(key_path: str | Path, socket_path: str | Path, stop: threading.Event) -> None:
    """Answer signing requests until `stop` is set."""
    server = SignerServer(CoordinatorKey.load(key_path), socket_path)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    log.info("log signer for key %s listening on %s", server.key.public_hex, socket_path)
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()
        Path(socket_path).unlink(missing_ok=True)
        log.info("log signer stopped after %d signatures", server.signed)


# -- the coordinator's side ------------------------------------------------------------------------
class _VerifyingSignature:
    def __init__(self, signature: bytes):
        self.signature = signature


class _RemoteSigningKey:
    """What `CoordinatorKey.signing_key` offers (verify_key, sign(message).signature), through the signer."""

    def __init__(self, remote: "RemoteKey"):
        self._remote = remote
        self.verify_key = nacl.signing.VerifyKey(bytes.fromhex(remote.public_hex))

    def sign(self, message: bytes) -> _VerifyingSignature:
        return _VerifyingSignature(self._remote.sign(message))


class RemoteKey(CoordinatorKey):
    """The coordinator's log key held by a `custody log-signer` process; every answer is checked."""

    def __init__(self, socket_path: str, public_hex: str):
        self._socket_path, self._public_hex = socket_path, public_hex

    @classmethod
    def connect(cls, source: str) -> "RemoteKey":
        """source: unix:PATH. Asks the signer for its key now, so an unreachable signer is refused at once."""
        if not source.startswith("unix:") or len(source) == len("unix:"):
            raise EventLogError(f"CUSTODY_LOG_SIGNER must be unix:PATH (the signer's socket), not {source!r}")
        path = source[len("unix:"):]
        answer = cls._ask(path, "PUBKEY")
        if len(answer) != 1 or len(answer[0]) != 64:
            raise EventLogError(f"the log signer at {source} answered something that is not a public key")
        return cls(path, answer[0].lower())

    @staticmethod
    def _ask(path: str, request: str) -> list[str]:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(TIMEOUT)
                conn.connect(path)
                conn.sendall(request.encode("ascii") + b"\n")
                reply = conn.makefile("rb").readline(1000).decode("ascii", "replace").split()
        except OSError as e:
            raise EventLogError(f"the log signer at unix:{path} is unreachable ({e.strerror or e}): start "
                                f"`custody log-signer --socket {path}`; nothing is logged without it") from None
        if not reply or reply[0] != "OK":
            reason = " ".join(reply[1:]) if reply else "no answer"
            raise EventLogError(f"the log signer at unix:{path} refused: {reason}")
        return reply[1:]

    @property
    def signing_key(self) -> _RemoteSigningKey:
        return _RemoteSigningKey(self)

    @property
    def public_hex(self) -> str:
        return self._public_hex

    def sign(self, message: bytes) -> bytes:
        answer = self._ask(self._socket_path, f"SIGN {message.hex()}")
        if len(answer) != 2 or answer[1].lower() != self._public_hex:
            raise EventLogError(f"the log signer at unix:{self._socket_path} now signs with another key; "
                                "restart the coordinator if the key was meant to change")
        try:
            signature = bytes.fromhex(answer[0])
            nacl.signing.VerifyKey(bytes.fromhex(self._public_hex)).verify(message, signature)
        except (ValueError, nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError):
            raise EventLogError(f"the log signer at unix:{self._socket_path} returned a signature that does "
                                "not verify") from None
        return signature
