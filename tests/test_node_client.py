"""The toolkit's chain client on its own: errors, cookies and exact amounts."""
from __future__ import annotations

from decimal import Decimal

import pytest

from custody.node_client import NodeAuthError, NodeClient, NodeUnreachable, btc_to_sats, cookie_path, sats_to_btc
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
    from regtest.launcher import start_node
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
