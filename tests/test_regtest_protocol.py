"""JSON-RPC over HTTP as Bitcoin Core speaks it: auth, errors, batches, limits."""
from __future__ import annotations

import base64
import http.client
import json

import pytest

from custody.chain.node_client import NodeAuthError, NodeClient, RPCError


def post(node, body: bytes, auth: str | None = "cookie", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=30)
    h = dict(headers or {})
    if auth == "cookie":
        user, password = node.credentials()
        auth = f"{user}:{password}"
    if auth is not None:
        h["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    conn.request("POST", "/", body, h)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, (json.loads(data) if data.strip().startswith((b"{", b"[")) else data)


def test_bad_credentials_get_401(node):
    status, _ = post(node, b'{"method":"getblockcount","id":1}', auth="__cookie__:wrong")
    assert status == 401
    status, _ = post(node, b'{"method":"getblockcount","id":1}', auth=None)
    assert status == 401
    with pytest.raises(NodeAuthError):
        NodeClient(node.url, user="__cookie__", password="nope").getblockcount()


def test_parse_error(node):
    status, reply = post(node, b'{"method": "getblockcount", ')
    assert status == 500 and reply["error"]["code"] == -32700


def test_invalid_requests(node):
    status, reply = post(node, b'{"params": [], "id": 1}')
    assert reply["error"]["code"] == -32600 and status == 400
    status, reply = post(node, b'{"method": 12, "id": 1}')
    assert reply["error"]["code"] == -32600
    status, reply = post(node, b'{"method": "getblockcount", "params": 3, "id": 1}')
    assert reply["error"]["code"] == -32600


def test_unknown_method(node):
    status, reply = post(node, b'{"method":"nosuchmethod","params":[],"id":7}')
    assert status == 404 and reply == {"result": None, "error": {"code": -32601, "message": "Method not found"},
                                       "id": 7}


def test_batch_keeps_order_and_reports_each_error(node):
    batch = [{"method": "getblockcount", "id": 1}, {"method": "nosuchmethod", "id": 2},
             {"method": "getblockhash", "params": [0], "id": 3}, {"method": "getblockhash", "params": [99999], "id": 4}]
    status, reply = post(node, json.dumps(batch).encode())
    assert status == 200 and [r["id"] for r in reply] == [1, 2, 3, 4]
    assert reply[0]["error"] is None and reply[1]["error"]["code"] == -32601
    assert reply[2]["result"] and reply[3]["error"]["code"] == -8
    client = NodeClient(node.url, cookie_file=node.cookie_file)
    results = client.batch([("getblockcount", []), ("getblockhash", [99999])])
    assert isinstance(results[0], int) and isinstance(results[1], RPCError)


def test_jsonrpc_2_replies(node):
    status, reply = post(node, b'{"jsonrpc":"2.0","method":"nosuchmethod","id":"a"}')
    assert status == 200 and reply == {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"},
                                       "id": "a"}
    status, reply = post(node, b'{"jsonrpc":"2.0","method":"getblockcount"}')   # a notification
    assert status == 204


def test_named_parameters(node):
    status, reply = post(node, b'{"method":"getblockhash","params":{"height":0},"id":1}')
    assert status == 200 and reply["result"]
    status, reply = post(node, b'{"method":"getblockhash","params":{"heihgt":0},"id":1}')
    assert reply["error"]["code"] == -8


def test_request_size_limit(node):
    big = b'{"method":"getblockcount","params":[],"id":1,"pad":"' + b"x" * (33 * 1024 * 1024) + b'"}'
    try:
        status, _ = post(node, big)
    except (ConnectionError, http.client.HTTPException):
        status = 413  # the server may close before reading it all
    assert status == 413
    assert post(node, b'{"method":"getblockcount","id":1}')[0] == 200


def test_only_post(node):
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    conn.request("GET", "/")
    assert conn.getresponse().status == 405


def test_amounts_are_exact_decimals(node):
    client = NodeClient(node.url, cookie_file=node.cookie_file)
    info = client.getmempoolinfo()      # Core 29.1+'s defaults: 100 sat/kvB
    assert str(info["minrelaytxfee"]) == str(info["incrementalrelayfee"]) == str(info["mempoolminfee"]) == "0.00000100"
