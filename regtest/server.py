"""JSON-RPC over HTTP as Bitcoin Core serves it: Basic auth, single and batch requests, 1.0 and 2.0
replies, Core's HTTP status codes, and request size limits."""
from __future__ import annotations

import base64
import hmac
import json
import logging
import re
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .errors import (RPC_INTERNAL_ERROR, RPC_INVALID_REQUEST, RPC_METHOD_NOT_FOUND, RPC_PARSE_ERROR,
                     RPCError)
from .rpc import dispatch

log = logging.getLogger("regtest.rpc")

MAX_BODY = 32 * 1024 * 1024   # Core's MAX_SIZE for an HTTP request body
MAX_HEADERS = 8 * 1024
_AMOUNT_MARK = "\x00amount:"
_AMOUNT_RE = re.compile(r'"\\u0000amount:(-?[0-9.]+)"')


def _encode_default(obj):
    if isinstance(obj, Decimal):
        return f"{_AMOUNT_MARK}{obj:f}"
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def dumps(obj) -> bytes:
    """JSON with Decimals written as exact numbers (BTC amounts keep their 8 decimals)."""
    text = json.dumps(obj, default=_encode_default, separators=(",", ":"))
    if "amount:" in text:
        text = _AMOUNT_RE.sub(r"\1", text)
    return text.encode() + b"\n"


class RPCServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, node, port: int, credentials: tuple[str, str]):
        self.node = node
        self.user, self.password = credentials
        self.stopped = threading.Event()
        super().__init__(("127.0.0.1", port), _Handler)

    def check_auth(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except Exception:
            return False
        return hmac.compare_digest(user, self.user) & hmac.compare_digest(password, self.password)

    def request_stop(self) -> None:
        if not self.stopped.is_set():
            self.stopped.set()
            threading.Thread(target=self.shutdown, daemon=True).start()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True   # headers and body go out in separate writes
    server_version = "custody-regtest"
    sys_version = ""

    def log_message(self, fmt, *args):
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json", extra=()):
        self.send_response(status)
        for k, v in extra:
            self.send_header(k, v)
        if body or status != 204:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_GET(self):
        self._send(405, b"JSONRPC server handles only POST requests", "text/html")

    do_PUT = do_DELETE = do_HEAD = do_GET

    def do_POST(self):
        server: RPCServer = self.server
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            # the body is not read, so the connection cannot carry another request
            self.close_connection = True
            status, text = (413, b"Request Entity Too Large") if length > 0 else (400, b"Bad Content-Length")
            self._send(status, text, "text/html", [("Connection", "close")])
            return
        body = self.rfile.read(length)
        if not server.check_auth(self.headers.get("Authorization")):
            self._send(401, b"", "text/html", [("WWW-Authenticate", 'Basic realm="jsonrpc"')])
            return
        try:
            request = json.loads(body, parse_float=Decimal)
        except (ValueError, UnicodeDecodeError):
            self._send(500, dumps({"result": None, "error": {"code": RPC_PARSE_ERROR, "message": "Parse error"},
                                   "id": None}))
            return
        if isinstance(request, list):
            replies = [r for r in (self._execute(item)[1] for item in request) if r is not None]
            self._send(200, dumps(replies))
        elif isinstance(request, dict):
            status, reply = self._execute(request)
            if reply is None:
                self._send(204)
            else:
                self._send(status, dumps(reply))
        else:
            self._send(400, dumps({"result": None, "id": None, "error": {
                "code": RPC_PARSE_ERROR, "message": "Top-level object parse error"}}))
        if server.node.stopping.is_set():
            server.request_stop()

    def _execute(self, request) -> tuple[int, dict | None]:
        """One call: returns (HTTP status for a lone request, reply object or None for a notification)."""
        if not isinstance(request, dict):
            return 400, {"result": None, "error": {"code": RPC_INVALID_REQUEST, "message": "Invalid Request object"},
                         "id": None}
        req_id = request.get("id")
        v2 = request.get("jsonrpc") == "2.0"
        if v2 and "id" not in request:
            try:
                self._call(request)
            except Exception:
                pass
            return 204, None
        try:
            result = self._call(request)
        except RPCError as e:
            status = {RPC_INVALID_REQUEST: 400, RPC_METHOD_NOT_FOUND: 404}.get(e.code, 500)
            if v2:
                return 200, {"jsonrpc": "2.0", "error": e.to_json(), "id": req_id}
            return status, {"result": None, "error": e.to_json(), "id": req_id}
        if v2:
            return 200, {"jsonrpc": "2.0", "result": result, "id": req_id}
        return 200, {"result": result, "error": None, "id": req_id}

    def _call(self, request: dict):
        name = request.get("method")
        if not isinstance(name, str):
            if "method" not in request:
                raise RPCError(RPC_INVALID_REQUEST, "Missing method")
            raise RPCError(RPC_INVALID_REQUEST, "Method must be a string")
        params = request.get("params")
        if params is not None and not isinstance(params, (list, dict)):
            raise RPCError(RPC_INVALID_REQUEST, "Params must be an array or object")
        try:
            return dispatch(self.server.node, name, params)
        except RPCError:
            raise
        except Exception as e:  # a bug in this node: report it the way Core reports internal errors
            log.exception("internal error in %s", name)
            raise RPCError(RPC_INTERNAL_ERROR, f"Internal error: {e}") from None
