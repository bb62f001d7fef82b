"""The toolkit's one client for Bitcoin Core's JSON-RPC.

Production points it at the user's `bitcoind`; tests and demos at the embedded regtest node, which
speaks the same protocol. Amounts arrive as Decimal (never float) and are converted to integer
satoshis with `btc_to_sats`.
"""
from __future__ import annotations

import http.client
import itertools
import json
import re
import socket
import threading
from decimal import Decimal, InvalidOperation
from pathlib import Path
from urllib.parse import urlsplit

# The node's errors, its credentials and its replies' decoding are the auditor's client's (audit.rpc): one
# set of classes, whichever client raised them, and one reading of the cookie file.
from audit.rpc import basic_auth, decode_reply, NodeAuthError, NodeError, NodeUnreachable, RPCError  # noqa: F401

COIN = 100_000_000
_NETWORK_SUBDIR = {"main": "", "mainnet": "", "bitcoin": "", "test": "testnet3", "testnet": "testnet3",
                   "testnet3": "testnet3", "testnet4": "testnet4", "signet": "signet", "regtest": "regtest"}


def btc_to_sats(value) -> int:
    """Exact BTC -> satoshis for Decimal, int or str values; refuses floats and sub-satoshi amounts."""
    if isinstance(value, float):
        raise TypeError("BTC amounts must be Decimal, int or str, never float")
    try:
        d = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"not an amount: {value!r}") from None
    if not d.is_finite():
        raise ValueError(f"not a finite amount: {value!r}")
    sats = d * COIN
    if sats != sats.to_integral_value():
        raise ValueError(f"more than 8 decimals: {value!r}")
    return int(sats)


def sats_to_btc(sats: int) -> Decimal:
    return (Decimal(int(sats)) / COIN).quantize(Decimal("0.00000001"))


def cookie_path(datadir: str | Path, network: str = "regtest") -> Path:
    """Where Bitcoin Core writes its RPC cookie for a data directory and network."""
    if network not in _NETWORK_SUBDIR:
        raise ValueError(f"unknown network {network!r}")
    base = Path(datadir).expanduser()
    sub = _NETWORK_SUBDIR[network]
    return (base / sub if sub else base) / ".cookie"


_AMOUNT_RE = re.compile(r'"\\u0000dec:(-?[0-9.]+(?:E[-+]?\d+)?)"')


def _encode(obj) -> bytes:
    def default(o):
        if isinstance(o, Decimal):
            if not o.is_finite():
                raise ValueError(f"cannot send a non-finite amount to the node: {o}")
            return f"\x00dec:{o:f}"
        raise TypeError(f"not JSON serializable: {type(o).__name__}")
    text = json.dumps(obj, default=default)
    return _AMOUNT_RE.sub(r"\1", text).encode()


class NodeClient:
    """A Bitcoin Core JSON-RPC client: `client.call("getblockcount")` or `client.getblockcount()`."""

    def __init__(self, url: str = "http://127.0.0.1:18443", *, user: str | None = None,
                 password: str | None = None, cookie_file: str | Path | None = None,
                 datadir: str | Path | None = None, network: str = "regtest", timeout: float = 30.0,
                 wallet: str | None = None, gate=None):
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"node URL must be http(s)://host:port, not {url!r}")
        self.url = f"{parts.scheme}://{parts.hostname}:{parts.port or 8332}"
        self._host, self._port, self._tls = parts.hostname, parts.port or 8332, parts.scheme == "https"
        self._path = f"/wallet/{wallet}" if wallet else (parts.path or "/")
        self.timeout = timeout
        self._gate = gate           # shared by a server's clients: see coordinator/node_gate.py
        if user is None and parts.username:
            user, password = parts.username, parts.password or ""
        if cookie_file is None and user is None and datadir is not None:
            cookie_file = cookie_path(datadir, network)
        self._user, self._password = user, password
        self._cookie_file = Path(cookie_file).expanduser() if cookie_file else None
        self._auth = self._make_auth()
        self._local = threading.local()
        self._ids = itertools.count(1)

    # -- auth ------------------------------------------------------------------------------
    def _make_auth(self) -> str | None:
        return basic_auth(self._user, self._password, self._cookie_file)

    # -- transport ---------------------------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._tls else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def _post(self, body: bytes) -> tuple[int, bytes]:
        if self._auth is None:
            self._auth = self._make_auth()
            if self._auth is None:
                raise NodeAuthError(f"no RPC credentials for {self.url}: cookie file {self._cookie_file} "
                                    "is missing (is the node running?) and no user/password was given")
        for attempt in (1, 2):
            conn = self._connection()
            reused = conn.sock is not None
            try:
                conn.request("POST", self._path, body, {"Authorization": self._auth,
                                                        "Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self._drop_connection()
                return response.status, data
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected) as e:
                self._drop_connection()
                if attempt == 1 and reused:   # a stale keep-alive connection: the request never arrived
                    continue
                raise NodeUnreachable(f"connection to Bitcoin node at {self.url} was closed: {e}") from None
            except socket.timeout:
                self._drop_connection()
                raise NodeUnreachable(f"Bitcoin node at {self.url} did not answer within {self.timeout:g}s "
                                      "(the call may still have been carried out)") from None
            except ConnectionRefusedError:
                self._drop_connection()
                raise NodeUnreachable(f"cannot reach Bitcoin node at {self.url}: connection refused — "
                                      "is bitcoind (or custody-regtest) running?") from None
            except OSError as e:
                self._drop_connection()
                raise NodeUnreachable(f"cannot reach Bitcoin node at {self.url}: {e.strerror or e}") from None
            except http.client.HTTPException as e:   # a garbled or truncated reply: not retried
                self._drop_connection()
                raise NodeError(f"Bitcoin node at {self.url} sent a malformed HTTP reply: {e!r}") from None
        raise AssertionError("unreachable")

    def _exchange(self, payload) -> object:
        if self._gate is None:
            return self._exchange_now(payload)
        self._gate.enter(payload["method"] if isinstance(payload, dict) else "batch")
        try:
            return self._exchange_now(payload)
        finally:
            self._gate.leave()

    def _exchange_now(self, payload) -> object:
        body = _encode(payload)
        status, data = self._post(body)
        if status in (401, 403) and self._cookie_file is not None and self._user is None:
            self._auth = self._make_auth()       # the node may have restarted with a new cookie
            status, data = self._post(body)
        return decode_reply(self.url, status, data)

    # -- calls -------------------------------------------------------------------------------
    def call(self, method: str, *params):
        reply = self._exchange({"jsonrpc": "1.0", "id": next(self._ids), "method": method, "params": list(params)})
        return _result(reply)

    def batch(self, calls: list[tuple[str, list]]) -> list:
        """Several calls in one request; each item is its result or the RPCError it raised."""
        if not calls:
            return []
        first = next(self._ids)
        payload = [{"jsonrpc": "1.0", "id": first + i, "method": m, "params": list(p)} for i, (m, p) in enumerate(calls)]
        for _ in range(len(calls) - 1):
            next(self._ids)
        replies = self._exchange(payload)
        if not isinstance(replies, list):
            _result(replies)   # a whole-batch error
            raise NodeError("node answered a batch with a single object")
        by_id = {r.get("id"): r for r in replies}
        out = []
        for i in range(len(calls)):
            try:
                out.append(_result(by_id.get(first + i, {"error": {"code": -32603, "message": "missing reply"}})))
            except RPCError as e:
                out.append(e)
        return out

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *params: self.call(name, *params)

    def close(self) -> None:
        self._drop_connection()


def _result(reply: dict):
    error = reply.get("error")
    if error:
        raise RPCError(int(error.get("code", -1)), str(error.get("message", "")))
    return reply.get("result")
