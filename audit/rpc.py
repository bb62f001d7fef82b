"""The auditor's JSON-RPC client for their own Bitcoin Core node.

audit/ is installed and reviewed on the auditor's machine on its own, so it carries its own client
instead of the custodian's (`custody.chain.node_client`): only what the verifier uses — single and batched
calls, cookie-file or user/password authentication, a timeout, and errors that keep Core's code and
message. It reads the node and never sends it amounts; numbers with a fraction arrive as Decimal.

The verifier's functions take this client or any object of the same shape (`call`, `batch`, and
`client.getblockcount()`-style calls) whose JSON-RPC errors carry Core's integer `code`, as the
coordinator's own client does when it checks its proofs as an auditor would (`is_rpc_error`).
"""
from __future__ import annotations

import base64
import http.client
import itertools
import json
import socket
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit


class NodeError(Exception):
    """Anything that went wrong talking to the node."""


class NodeUnreachable(NodeError):
    """No answer: the node is down, the URL is wrong, or the call timed out."""


class NodeAuthError(NodeError):
    """The node refused the credentials (HTTP 401/403), or there were none to give."""


class RPCError(NodeError):
    """The node answered with a JSON-RPC error object: Core's code (e.g. -5, not found) and message."""

    def __init__(self, code: int, message: str):
        super().__init__(f"node error {code}: {message}")
        self.code = code
        self.message = message


def is_rpc_error(reply) -> bool:
    """Whether `reply` (a raised exception, or an item of `batch`'s answer) is the node's JSON-RPC error,
    from this client or another of the same shape; an unreachable node or refused credentials are not."""
    return isinstance(reply, Exception) and isinstance(getattr(reply, "code", None), int)


class Node:
    """The auditor's node: `node.call("getblockcount")`, `node.getblockcount()` or `node.batch([...])`.

    `url` is http(s)://host:port, optionally with user:password@; otherwise `cookie_file` is read (again
    if the node restarted with a new cookie). One keep-alive connection: use a client from one thread.
    """

    def __init__(self, url: str, *, cookie_file: str | Path | None = None, user: str | None = None,
                 password: str | None = None, timeout: float = 30.0):
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"node URL must be http(s)://host:port, not {url!r}")
        self._host, self._port, self._tls = parts.hostname, parts.port or 8332, parts.scheme == "https"
        self.url = f"{parts.scheme}://{self._host}:{self._port}"
        self._path = parts.path or "/"
        if user is None and parts.username:
            user, password = parts.username, parts.password or ""
        self._user, self._password = user, password
        self._cookie_file = Path(cookie_file).expanduser() if cookie_file else None
        self.timeout = timeout
        self._auth = self._credentials()
        self._conn: http.client.HTTPConnection | None = None
        self._ids = itertools.count(1)

    # -- calls ---------------------------------------------------------------------------------------------
    def call(self, method: str, *params):
        """The call's result, or RPCError with the node's code and message."""
        return _result(self._exchange({"jsonrpc": "1.0", "id": next(self._ids), "method": method,
                                       "params": list(params)}))

    def batch(self, calls: list[tuple[str, list]]) -> list:
        """Several calls in one request; each item is its result or the RPCError it raised."""
        if not calls:
            return []
        ids = [next(self._ids) for _ in calls]
        replies = self._exchange([{"jsonrpc": "1.0", "id": i, "method": m, "params": list(p)}
                                  for i, (m, p) in zip(ids, calls)])
        if not isinstance(replies, list):
            _result(replies)           # an error for the whole batch
            raise NodeError("the node answered a batch with a single object")
        by_id = {r.get("id"): r for r in replies if isinstance(r, dict)}
        out = []
        for i in ids:
            try:
                out.append(_result(by_id.get(i, {"error": {"code": -32603, "message": "missing reply"}})))
            except RPCError as e:
                out.append(e)
        return out

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *params: self.call(name, *params)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    # -- transport -----------------------------------------------------------------------------------------
    def _credentials(self) -> str | None:
        return basic_auth(self._user, self._password, self._cookie_file)

    def _exchange(self, payload) -> object:
        body = json.dumps(payload).encode()
        status, data = self._post(body)
        if status in (401, 403) and self._cookie_file is not None and self._user is None:
            self._auth = self._credentials()        # the node may have restarted with a new cookie
            status, data = self._post(body)
        return decode_reply(self.url, status, data)

    def _post(self, body: bytes) -> tuple[int, bytes]:
        if self._auth is None:
            self._auth = self._credentials()
            if self._auth is None:
                raise NodeAuthError(f"no RPC credentials for {self.url}: give user:password in the URL or the "
                                    f"node's cookie file (cookie file {self._cookie_file} could not be read)")
        for attempt in (1, 2):
            if self._conn is None:
                cls = http.client.HTTPSConnection if self._tls else http.client.HTTPConnection
                self._conn = cls(self._host, self._port, timeout=self.timeout)
            reused = self._conn.sock is not None
            try:
                self._conn.request("POST", self._path, body, {"Authorization": self._auth,
                                                              "Content-Type": "application/json"})
                response = self._conn.getresponse()
                data = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.close()
                return response.status, data
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected) as e:
                self.close()
                if attempt == 1 and reused:     # a stale keep-alive connection: the request never arrived
                    continue
                raise NodeUnreachable(f"connection to Bitcoin node at {self.url} was closed: {e}") from None
            except socket.timeout:
                self.close()
                raise NodeUnreachable(f"Bitcoin node at {self.url} did not answer within {self.timeout:g}s") from None
            except ConnectionRefusedError:
                self.close()
                raise NodeUnreachable(f"cannot reach Bitcoin node at {self.url}: connection refused — "
                                      "is bitcoind running?") from None
            except OSError as e:
                self.close()
                raise NodeUnreachable(f"cannot reach Bitcoin node at {self.url}: {e.strerror or e}") from None
            except http.client.HTTPException as e:    # a garbled or truncated reply: not retried
                self.close()
                raise NodeError(f"Bitcoin node at {self.url} sent a malformed HTTP reply: {e!r}") from None
        raise AssertionError("unreachable")


def basic_auth(user: str | None, password: str | None, cookie_file: Path | None) -> str | None:
    """The Authorization header for user:password, else for the cookie file's contents (read now: the node
    writes a new cookie when it restarts); None when there is neither."""
    if user is not None:
        token = f"{user}:{password or ''}"
    elif cookie_file is not None:
        try:
            token = cookie_file.read_text().strip()
        except OSError:
            return None
    else:
        return None
    return "Basic " + base64.b64encode(token.encode()).decode()


def decode_reply(url: str, status: int, data: bytes):
    """The node's HTTP answer as JSON (numbers with a fraction as Decimal), or the refusal it stands for."""
    if status in (401, 403):
        raise NodeAuthError(f"Bitcoin node at {url} rejected the RPC credentials (HTTP {status})")
    try:
        return json.loads(data, parse_float=Decimal)
    except ValueError:
        text = data[:200].decode(errors="replace").strip()
        raise NodeError(f"Bitcoin node at {url} answered HTTP {status} without JSON: {text!r}") from None


def _result(reply):
    if not isinstance(reply, dict):
        raise NodeError(f"the node sent a reply that is not a JSON-RPC object: {str(reply)[:80]!r}")
    error = reply.get("error")
    if isinstance(error, dict):
        raise RPCError(int(error.get("code", -1)), str(error.get("message", "")))
    if error:
        raise RPCError(-1, str(error))
    return reply.get("result")
