"""Consensus and chain life: reorganisations through submitblock, restart, and shutdown."""
from __future__ import annotations

import signal

import pytest

from custody.chain.node_client import NodeClient, NodeUnreachable
from regtest.testwallet import TestWallet

from .conftest import embedded_only, mine_coins
from .support import start_node, STOP_TIMEOUT, wait_until

OTHER = TestWallet("someone else")
MINER_B = TestWallet("miner b").address()


@pytest.fixture
def second_node(tmp_path):
    running = start_node(tmp_path / "node-b")
    yield running, NodeClient(running.url, cookie_file=running.cookie_file)
    running.stop()


def copy_chain(src, dst, start: int = 1) -> None:
    for height in range(start, src.getblockcount() + 1):
        result = dst.submitblock(src.getblock(src.getblockhash(height), 0))
        assert result in (None, "duplicate")


def test_reorg_returns_transactions_to_mempool_and_indexes_follow(rpc, wallet, second_node):
    _, rpc_b = second_node
    coin = mine_coins(rpc, wallet, 1)[0]
    copy_chain(rpc, rpc_b)
    fork_height = rpc.getblockcount()
    raw = wallet.sign([coin], [(OTHER.wpkh, coin.value - 2000)])
    txid = rpc.sendrawtransaction(raw)
    old_tip = rpc.generatetoaddress(1, wallet.address())[0]
    assert rpc.gettxout(txid, 0)["confirmations"] == 1
    # node B mines a longer branch without the transaction
    branch = rpc_b.generatetoaddress(2, MINER_B)
    assert rpc.submitblock(rpc_b.getblock(branch[0], 0)) == "inconclusive"   # equal work: no reorg yet
    assert rpc.getbestblockhash() == old_tip
    assert rpc.submitblock(rpc_b.getblock(branch[1], 0)) is None
    assert rpc.getbestblockhash() == branch[1] and rpc.getblockcount() == fork_height + 2
    assert txid in rpc.getrawmempool()                       # back in the mempool
    assert rpc.gettxout(txid, 0, False) is None              # its output left the UTXO set
    assert rpc.gettxout(coin.txid, 0, False) is not None     # its input is unspent again
    assert rpc.getblockheader(old_tip)["confirmations"] == -1
    block_b = rpc.getblock(branch[1], 2)
    assert block_b["confirmations"] == 1
    # and it confirms again on the new branch
    new_block = rpc.generatetoaddress(1, OTHER.address())[0]
    assert txid in rpc.getblock(new_block)["tx"]


def test_reorg_to_a_branch_with_a_double_spend(rpc, wallet, second_node):
    _, rpc_b = second_node
    coin = mine_coins(rpc, wallet, 1)[0]
    copy_chain(rpc, rpc_b)
    payment = rpc.sendrawtransaction(wallet.sign([coin], [(OTHER.wpkh, coin.value - 2000)]))
    rpc.generatetoaddress(1, wallet.address())
    double_spend = rpc_b.sendrawtransaction(wallet.sign([coin], [(wallet.wpkh, coin.value - 3000)]))
    branch = rpc_b.generatetoaddress(2, MINER_B)
    for h in branch:
        rpc.submitblock(rpc_b.getblock(h, 0))
    assert rpc.getbestblockhash() == branch[-1]
    assert payment not in rpc.getrawmempool()                # conflicted, not resurrected
    assert rpc.getrawtransaction(double_spend, True)["confirmations"] == 2
    assert rpc.gettxout(double_spend, 0)["value"] * 100_000_000 == coin.value - 3000
    result = rpc.scantxoutset("start", [f"addr({OTHER.address()})"])
    assert payment not in {u["txid"] for u in result["unspents"]}


def test_invalid_block_from_a_peer_changes_nothing(rpc, wallet, second_node):
    _, rpc_b = second_node
    copy_chain(rpc, rpc_b)
    tip = rpc.getbestblockhash()
    # a block that pays its miner too much: consensus (the kernel) refuses it
    template = bytearray.fromhex(rpc_b.generateblock(MINER_B, [], False)["hex"])
    # coinbase output value sits after header(80) + txcount(1) + version(4) + marker(2) + vin
    hexblock = template.hex()
    height = rpc.getblockcount() + 1
    subsidy = (50 * 100_000_000) >> (height // 150)
    value_le = subsidy.to_bytes(8, "little").hex()
    inflated = (subsidy + 1).to_bytes(8, "little").hex()
    assert value_le in hexblock
    from regtest.serialize import Block, merkle_root
    from regtest.mining import solve
    block = Block.parse(bytes.fromhex(hexblock.replace(value_le, inflated, 1)))
    block.txs[0]._raw = block.txs[0]._raw_nowit = block.txs[0]._txid = block.txs[0]._wtxid = None
    block.header.merkle_root = merkle_root([t.txid_bytes for t in block.txs])
    assert solve(block.header, 1_000_000)
    assert rpc.submitblock(block.serialize().hex()) == "bad-cb-amount"
    assert rpc.getbestblockhash() == tip
    assert rpc.submitblock(block.serialize().hex()) == "duplicate-invalid"


def test_restart_reopens_the_same_chain_with_its_mempool(tmp_path, wallet):
    node = start_node(tmp_path / "n")
    rpc = NodeClient(node.url, cookie_file=node.cookie_file)
    coins = mine_coins(rpc, wallet, 2)
    confirmed = rpc.sendrawtransaction(wallet.sign([coins[0]], [(OTHER.wpkh, coins[0].value - 2000)]))
    rpc.generatetoaddress(1, OTHER.address())
    pending = rpc.sendrawtransaction(wallet.sign([coins[1]], [(OTHER.wpkh, coins[1].value - 2000)]))
    tip, height = rpc.getbestblockhash(), rpc.getblockcount()
    assert node.stop(STOP_TIMEOUT) == 0
    assert not node.cookie_file.exists()
    node = start_node(tmp_path / "n", port=node.port)
    rpc = NodeClient(node.url, cookie_file=node.cookie_file)
    try:
        # Core answers RPC before its background thread has loaded mempool.dat; "loaded" says when it has
        wait_until(lambda: rpc.getmempoolinfo()["loaded"], what="the restarted node loading its saved mempool",
                   process=node.process, logs=(node.log_path,))
        assert (rpc.getbestblockhash(), rpc.getblockcount()) == (tip, height)
        assert rpc.getrawtransaction(confirmed, True)["confirmations"] == 1
        assert rpc.gettxout(confirmed, 0) is not None
        assert rpc.getrawmempool() == [pending]
        rpc.generatetoaddress(1, OTHER.address())
        assert rpc.getrawtransaction(pending, True)["confirmations"] == 1
    finally:
        node.stop()


@embedded_only("the embedded node's own index files, rebuilt after a kill")
def test_killed_node_rebuilds_its_indexes(tmp_path, wallet):
    node = start_node(tmp_path / "n")
    rpc = NodeClient(node.url, cookie_file=node.cookie_file)
    coin = mine_coins(rpc, wallet, 1)[0]
    txid = rpc.sendrawtransaction(wallet.sign([coin], [(OTHER.wpkh, coin.value - 2000)]))
    rpc.generatetoaddress(1, OTHER.address())
    height = rpc.getblockcount()
    node.kill()
    node = start_node(tmp_path / "n")
    rpc = NodeClient(node.url, cookie_file=node.cookie_file)
    try:
        assert rpc.getblockcount() <= height
        if rpc.getblockcount() == height:
            assert rpc.gettxout(txid, 0) is not None and rpc.gettxout(coin.txid, 0) is None
        rpc.generatetoaddress(1, OTHER.address())
    finally:
        node.stop()


def test_stop_rpc_and_sigterm_shut_down_cleanly(tmp_path):
    node = start_node(tmp_path / "a")
    rpc = NodeClient(node.url, cookie_file=node.cookie_file)
    assert "stopping" in rpc.stop()
    assert node.process.wait(STOP_TIMEOUT) == 0
    with pytest.raises(NodeUnreachable):
        NodeClient(node.url, user="x", password="y", timeout=2).getblockcount()
    node = start_node(tmp_path / "b")
    node.process.send_signal(signal.SIGINT)
    assert node.process.wait(STOP_TIMEOUT) == 0


def test_user_and_password_instead_of_cookie(tmp_path):
    node = start_node(tmp_path / "c", extra_args=["-rpcuser=alice", "-rpcpassword=s3cret"],
                      credentials=("alice", "s3cret"))
    try:
        assert not node.cookie_file.exists()
        assert NodeClient(node.url, user="alice", password="s3cret").getblockcount() == 0
    finally:
        node.stop()


@embedded_only("runs the embedded node's own command line (regtest.cli)")
def test_second_node_on_same_datadir_is_refused(node):
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "regtest.cli", f"-datadir={node.datadir}", "-rpcport=1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "lock" in result.stderr
