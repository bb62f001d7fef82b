"""Fixtures: each test module gets its own regtest node (embedded, or bitcoind when BITCOIND is set)
on a free port in a temporary directory, and the toolkit's one chain client pointed at it."""
from __future__ import annotations

import os

import pytest

from custody.node_client import NodeClient
from regtest.launcher import start_node
from regtest.testwallet import TestWallet, Utxo



@pytest.fixture(scope="module")
def node(tmp_path_factory):
    running = start_node(tmp_path_factory.mktemp("node"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def rpc(node):
    return NodeClient(node.url, cookie_file=node.cookie_file)


@pytest.fixture(scope="module")
def wallet():
    return TestWallet()


@pytest.fixture(scope="module")
def other_address():
    return TestWallet("someone else").address()


def embedded_only():
    return pytest.mark.skipif(bool(os.environ.get("BITCOIND")), reason="behaviour of the embedded node only")


def mine_coins(rpc, wallet: TestWallet, count: int, *, kind: str = "wpkh", mature: bool = True) -> list[Utxo]:
    """Mine `count` blocks paying the wallet, then 100 more so the coinbases can be spent."""
    hashes = rpc.generatetoaddress(count, wallet.address(kind))
    if mature:
        rpc.generatetoaddress(100, TestWallet("maturity").address())
    coins = []
    for h in hashes:
        cb = rpc.getblock(h, 2)["tx"][0]
        out = cb["vout"][0]
        coins.append(Utxo(cb["txid"], 0, int(out["value"] * 100_000_000), bytes.fromhex(out["scriptPubKey"]["hex"])))
    return coins


def utxo_of(rpc, txid: str, vout: int) -> Utxo:
    out = rpc.getrawtransaction(txid, True)["vout"][vout]
    return Utxo(txid, vout, int(out["value"] * 100_000_000), bytes.fromhex(out["scriptPubKey"]["hex"]))
