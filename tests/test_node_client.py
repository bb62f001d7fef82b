"""The toolkit's chain client on its own: errors, cookies and exact amounts."""
from __future__ import annotations

import http.server
import json
import threading
from decimal import Decimal

import pytest

from custody.chain.node_client import (NodeAuthError, NodeClient, NodeError, NodeUnreachable, RPCError, btc_to_sats,
                                 cookie_path, sats_to_btc)
from regtest.launcher import free_port


def test_unreachable_node_names_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(NodeUnreachable, match="127.0.0.1") as e:
        NodeClient(url, user="u", password="p", timeout=2).getblockcount()
    assert "running" in str(e.value)


def test_missing_cookie_is_an_auth_error(tmp_path):
    with pytest.raises(NodeAuthError, match="cookie"):
        NodeClient(f"http://127.0.0.1:{free_port()}", datadir=tmp_path).getblockcount()


def test_cookie_paths_follow_bitcoin_core(tmp_path):
    assert cookie_path(tmp_path, "regtest") == tmp_path / "regtest" / ".cookie"
    assert cookie_path(tmp_path, "main") == tmp_path / ".cookie"
    assert cookie_path(tmp_path, "testnet4") == tmp_path / "testnet4" / ".cookie"
    assert cookie_path(tmp_path, "signet") == tmp_path / "signet" / ".cookie"
    with pytest.raises(ValueError):
        cookie_path(tmp_path, "moon")


@pytest.mark.parametrize("value, sats", [(Decimal("0.00000001"), 1), ("21000000", 2_100_000_000_000_000),
                                         (Decimal("50.00000000"), 5_000_000_000), (0, 0), ("1.1", 110_000_000)])
def test_btc_to_sats_is_exact(value, sats):
    assert btc_to_sats(value) == sats
    assert btc_to_sats(sats_to_btc(sats)) == sats


@pytest.mark.parametrize("bad", ["0.000000001", "NaN", "abc", "Infinity"])
def test_btc_to_sats_refuses_bad_amounts(bad):
    with pytest.raises(ValueError):
        btc_to_sats(bad)


def test_btc_to_sats_refuses_floats():
    with pytest.raises(TypeError):
        btc_to_sats(0.1)


def test_client_reconnects_after_node_restart(tmp_path):
    from .support import start_node
    node = start_node(tmp_path / "n")
    client = NodeClient(node.url, cookie_file=node.cookie_file)
    assert client.getblockcount() == 0
    node.stop()
    with pytest.raises(NodeUnreachable):
        client.getblockcount()
    node = start_node(tmp_path / "n", port=node.port)     # a new cookie
    try:
        assert client.getblockcount() == 0
    finally:
        node.stop()


# -- HTTP handling, against a tiny stdlib server answering canned JSON-RPC replies -------------
class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"      # keep-alive, as bitcoind speaks it

    def do_POST(self):
        srv = self.server
        body = self.rfile.read(int(self.headers["Content-Length"]))
        srv.seen.append((self.path, self.headers.get("Authorization"), body))
        status, reply = srv.respond(self.headers.get("Authorization"), json.loads(body))
        data = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = srv.hang_up   # close without saying so: a stale keep-alive socket

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.seen, srv.hang_up = [], False
    srv.respond = lambda auth, req: (200, {"result": req["params"], "error": None, "id": req["id"]})
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _basic(token: str) -> str:
    import base64
    return "Basic " + base64.b64encode(token.encode()).decode()


def test_decimal_amounts_round_trip_as_json_numbers(server):
    client = NodeClient(server.url, user="u", password="p")
    amounts = [Decimal("0.00012345"), Decimal("21000000.00000001"), Decimal("-0.5")]
    echoed = client.call("echo", *amounts, "text", 3)
    assert echoed == [*amounts, "text", 3] and all(type(a) is Decimal for a in echoed[:3])
    body = server.seen[0][2].decode()
    assert '"params": [0.00012345, 21000000.00000001, -0.5, "text", 3]' in body
    with pytest.raises(ValueError):
        client.call("echo", Decimal("NaN"))


def test_json_error_body_wins_over_http_status(server):
    server.respond = lambda auth, req: (500, {"result": None, "id": req["id"],
                                              "error": {"code": -26, "message": "min relay fee not met"}})
    with pytest.raises(RPCError) as e:
        NodeClient(server.url, user="u", password="p").sendrawtransaction("00")
    assert (e.value.code, str(e.value)) == (-26, "node error -26: min relay fee not met")
    assert isinstance(e.value, NodeError)


def test_non_json_error_falls_back_to_http_status(server):
    server.respond = lambda auth, req: (404, b"<html>not found</html>")
    with pytest.raises(NodeError, match="HTTP 404"):
        NodeClient(server.url, user="u", password="p").getblockcount()


def test_bad_credentials_are_an_auth_error(server):
    server.respond = lambda auth, req: (401, b"")
    with pytest.raises(NodeAuthError, match="rejected the RPC credentials"):
        NodeClient(server.url, user="u", password="wrong").getblockcount()


def test_cookie_is_reread_after_401(server, tmp_path):
    cookie = tmp_path / "regtest" / ".cookie"
    cookie.parent.mkdir()
    cookie.write_text("__cookie__:old\n")
    valid = {"token": _basic("__cookie__:old")}
    server.respond = lambda auth, req: ((200, {"result": 7, "error": None, "id": req["id"]})
                                        if auth == valid["token"] else (401, b""))
    client = NodeClient(server.url, datadir=tmp_path)           # cookie path derived as Core does
    assert client.getblockcount() == 7
    cookie.write_text("__cookie__:new\n")                       # the node restarted
    valid["token"] = _basic("__cookie__:new")
    assert client.getblockcount() == 7
    assert [auth for _, auth, _ in server.seen] == [_basic("__cookie__:old"), _basic("__cookie__:old"),
                                                    _basic("__cookie__:new")]


def test_batch_results_come_back_in_request_order(server):
    def respond(auth, reqs):
        replies = [{"result": r["params"][0] if r["params"] else None, "error": None, "id": r["id"]} for r in reqs]
        replies[1] = {"result": None, "error": {"code": -8, "message": "bad height"}, "id": reqs[1]["id"]}
        return 200, list(reversed(replies))                      # servers may answer in any order
    server.respond = respond
    out = NodeClient(server.url, user="u", password="p").batch(
        [("getblockhash", [0]), ("getblockhash", [-1]), ("getblockhash", [Decimal("2")])])
    assert out[0] == 0 and out[2] == Decimal("2")
    assert isinstance(out[1], RPCError) and out[1].code == -8
    assert NodeClient(server.url, user="u", password="p").batch([]) == []


def test_stale_keep_alive_connection_is_retried_once(server):
    client = NodeClient(server.url, user="u", password="p")
    assert client.call("echo", 1) == [1]
    server.hang_up = True                  # from now on the server closes each connection after replying
    assert client.call("echo", 2) == [2]   # sent on the closed socket, then once more on a new one
    assert client.call("echo", 3) == [3]
    assert [json.loads(b)["params"] for _, _, b in server.seen] == [[1], [2], [3]]   # none done twice


def test_wallet_path_threads_and_private_names(server):
    client = NodeClient(server.url, user="u", password="p", wallet="cold")
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(client.call("echo", i))) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(r[0] for r in results) == [0, 1, 2, 3]
    assert {path for path, _, _ in server.seen} == {"/wallet/cold"}
    with pytest.raises(AttributeError):
        client._private
