"""The embedded node killed with SIGKILL (issue 15, item 5): every block an RPC acknowledged is still there
on restart, at the same tip with the same UTXO set and transaction index, and the mempool is what its
last save held (mempool.dat, Core's format, written every second in which it changed, on `savemempool`
and on a clean stop). A kill at any step of writing one of the node's own files leaves a valid file.

Before this, a killed node came back at the height of its last clean start (3,000 blocks mined, then
killed: height 0) with an empty mempool; each scenario below fails that way without the fix.

Bitcoin Core itself loses the blocks since its last flush when killed, so every scenario but `savemempool`
(preceded by a call that makes Core flush) is the embedded node's own guarantee.
"""
from __future__ import annotations

import pickle
import signal
import time

import pytest

from custody.chain.node_client import NodeClient, NodeError
from regtest import mempool_persist
from regtest.coinstats import MuHash3072
from regtest.testwallet import TestWallet

from .conftest import embedded_only, mine_coins
from .support import NotReady, start_node, STOP_TIMEOUT, wait_until

OTHER = TestWallet("someone else")
KILL_AT = "REGTEST_KILL_AT"
KILLED = -signal.SIGKILL
SURVIVES_KILL = "Bitcoin Core loses the blocks since its last flush when killed; this node must not"


def client(node) -> NodeClient:
    return NodeClient(node.url, cookie_file=node.cookie_file)


def chain_state(rpc) -> dict:
    """What a restart must give back: the tip, and the UTXO set under both of Core's set hashes."""
    info = rpc.gettxoutsetinfo()
    del info["disk_size"]          # the kernel's LevelDB files change size when it flushes on start
    return {"height": rpc.getblockcount(), "tip": rpc.getbestblockhash(), "utxo set": info,
            "muhash": rpc.gettxoutsetinfo("muhash")["muhash"]}


def spend(rpc, wallet, coin, fee: int = 2_000) -> str:
    return rpc.sendrawtransaction(wallet.sign([coin], [(OTHER.wpkh, coin.value - fee)]))


def saved_txids(node) -> list[str]:
    """The transactions in the node's mempool.dat, as Core's LoadMempool would read them."""
    try:
        return [tx.txid for tx, _ in mempool_persist.load((node.datadir / "regtest" / "mempool.dat").read_bytes())]
    except (FileNotFoundError, ValueError):
        return []


def wait_saved(node, txid: str) -> None:
    wait_until(lambda: txid in saved_txids(node), what=f"{txid} written to mempool.dat", process=node.process,
               logs=(node.log_path,), timeout=60)


def wait_killed(node) -> None:
    """The node reached its fault point and killed itself."""
    assert node.process.wait(STOP_TIMEOUT) == KILLED, node.log_path.read_text()[-2000:]


@pytest.fixture
def kill_at(monkeypatch):
    """Arm a fault point for the nodes started next: REGTEST_KILL_AT=name[@N]; None disarms it."""
    def arm(name: str | None) -> None:
        if name is None:
            monkeypatch.delenv(KILL_AT, raising=False)
        else:
            monkeypatch.setenv(KILL_AT, name)
    yield arm


# -- blocks -------------------------------------------------------------------------------------------
@embedded_only(SURVIVES_KILL)
def test_killed_after_mining_300_blocks_it_restarts_at_the_same_tip_with_the_same_utxo_set(tmp_path, wallet):
    node = start_node(tmp_path / "n")
    rpc = client(node)
    coin = mine_coins(rpc, wallet, 1)[0]
    txid = spend(rpc, wallet, coin)
    rpc.generatetoaddress(300 - rpc.getblockcount(), OTHER.address())
    before = chain_state(rpc)
    mined_in = rpc.getrawtransaction(txid, True)["blockhash"]
    assert before["height"] == 300
    node.kill()

    node = start_node(tmp_path / "n")
    rpc = client(node)
    try:
        assert chain_state(rpc) == before
        found = rpc.getrawtransaction(txid, True)          # -txindex answers for the recovered blocks
        assert (found["blockhash"], found["confirmations"]) == (mined_in, 300 - 101)
        assert rpc.gettxout(txid, 0) is not None and rpc.gettxout(coin.txid, 0) is None
        assert len(rpc.generatetoaddress(1, OTHER.address())) == 1 and rpc.getblockcount() == 301
    finally:
        node.stop()


@embedded_only(SURVIVES_KILL)
def test_killed_after_sitting_idle_it_keeps_its_blocks(tmp_path, wallet):
    node = start_node(tmp_path / "n")
    rpc = client(node)
    rpc.generatetoaddress(101, wallet.address())
    before = chain_state(rpc)
    rpc.mockscheduler(3600)        # an hour of the node's periodic tasks (index snapshot, mempool, fees) ...
    time.sleep(2)                  # ... and a couple of seconds of real ones
    node.kill()

    node = start_node(tmp_path / "n")
    try:
        assert chain_state(client(node)) == before
    finally:
        node.stop()


@embedded_only(SURVIVES_KILL)
def test_each_rpc_that_accepts_a_block_has_made_it_durable_when_it_answers(tmp_path, wallet):
    datadir = tmp_path / "n"
    node = start_node(datadir)
    rpc = client(node)
    rpc.generatetoaddress(101, wallet.address())
    submissions = {
        "generatetoaddress": lambda rpc: rpc.generatetoaddress(1, OTHER.address())[0],
        "generatetodescriptor": lambda rpc: rpc.generatetodescriptor(1, f"addr({OTHER.address()})")[0],
        "generateblock": lambda rpc: rpc.generateblock(OTHER.address(), [])["hash"],
        "submitblock": lambda rpc: _submit(rpc, rpc.generateblock(OTHER.address(), [], False)["hex"]),
    }
    for name, submit in submissions.items():
        block_hash = submit(rpc)
        node.kill()                 # at once: nothing after the answer gets a chance to run
        node = start_node(datadir)
        rpc = client(node)
        assert rpc.getbestblockhash() == block_hash, f"the block {name} acknowledged is lost"
    node.stop()


def _submit(rpc, block_hex: str) -> str:
    assert rpc.submitblock(block_hex) is None
    return rpc.getbestblockhash()


@embedded_only(SURVIVES_KILL)
def test_after_a_reorg_and_a_kill_the_orphaned_coinbase_is_still_found(tmp_path, wallet):
    node, other = start_node(tmp_path / "a"), start_node(tmp_path / "b")
    rpc, rpc_b = client(node), client(other)
    try:
        rpc.generatetoaddress(101, wallet.address())
        for height in range(1, 102):
            assert rpc_b.submitblock(rpc.getblock(rpc.getblockhash(height), 0)) is None
        orphan_block = rpc.generatetoaddress(1, wallet.address())[0]
        orphan = rpc.getblock(orphan_block)["tx"][0]
        branch = rpc_b.generatetoaddress(2, OTHER.address())      # a longer branch: A reorganises onto it
        assert [rpc.submitblock(rpc_b.getblock(h, 0)) for h in branch] == ["inconclusive", None]
        before = chain_state(rpc)
        found = rpc.getrawtransaction(orphan, True)
        assert (found["blockhash"], found["confirmations"]) == (orphan_block, 0)
        node.kill()

        node = start_node(tmp_path / "a")
        rpc = client(node)
        assert chain_state(rpc) == before
        found = rpc.getrawtransaction(orphan, True)
        assert (found["blockhash"], found["confirmations"]) == (orphan_block, 0)
    finally:
        node.stop()
        other.stop()


@embedded_only("a fault point inside the embedded node")
def test_a_block_the_kernel_accepted_survives_a_kill_before_the_rpc_answers(tmp_path, wallet, kill_at):
    kill_at("block:accepted@3")
    node = start_node(tmp_path / "n")
    with pytest.raises(NodeError):
        client(node).generatetoaddress(5, wallet.address())
    wait_killed(node)
    kill_at(None)
    node = start_node(tmp_path / "n")
    try:
        assert client(node).getblockcount() == 3       # the third was accepted, never answered
    finally:
        node.stop()


@embedded_only("a fault point inside the embedded node")
def test_a_kill_while_recovering_is_recovered_from_on_the_next_start(tmp_path, wallet, kill_at):
    node = start_node(tmp_path / "n")
    rpc = client(node)
    coin = mine_coins(rpc, wallet, 1)[0]
    spend(rpc, wallet, coin)
    rpc.generatetoaddress(20, OTHER.address())
    before = chain_state(rpc)
    node.kill()

    kill_at("replay:block@60")     # the start-up re-submits the 121 lost blocks; killed half way
    with pytest.raises(NotReady, match=f"exited with code {KILLED}"):
        start_node(tmp_path / "n")
    kill_at(None)
    node = start_node(tmp_path / "n")
    try:
        assert chain_state(client(node)) == before
    finally:
        node.stop()


@embedded_only("a fault point inside the embedded node")
def test_a_kill_during_a_clean_stop_after_the_kernel_flushed_is_recovered(tmp_path, wallet, kill_at):
    kill_at("shutdown:flushed")
    node = start_node(tmp_path / "n")
    rpc = client(node)
    rpc.generatetoaddress(150, wallet.address())
    before = chain_state(rpc)
    assert node.stop(STOP_TIMEOUT) == KILLED       # flushed, killed before writing the clean-shutdown marker
    assert not (node.datadir / "regtest" / "clean-shutdown").exists()
    kill_at(None)
    node = start_node(tmp_path / "n")
    try:
        assert chain_state(client(node)) == before
    finally:
        assert node.stop(STOP_TIMEOUT) == 0
    assert (node.datadir / "regtest" / "clean-shutdown").exists()


# -- -reindex -----------------------------------------------------------------------------------------
@embedded_only("the embedded node's -reindex after a kill (Core's loses the unflushed blocks)")
def test_reindex_and_reindex_chainstate_rebuild_the_same_chain_from_the_block_files(tmp_path, wallet):
    datadir = tmp_path / "n"
    node = start_node(datadir)
    rpc = client(node)
    coin = mine_coins(rpc, wallet, 1)[0]
    txid = spend(rpc, wallet, coin)
    rpc.generatetoaddress(50, OTHER.address())
    before = chain_state(rpc)
    assert node.stop(STOP_TIMEOUT) == 0

    for option in ("-reindex", "-reindex-chainstate"):
        node = start_node(datadir, extra_args=[option])
        rpc = client(node)
        assert chain_state(rpc) == before, option
        assert rpc.getrawtransaction(txid, True)["confirmations"] == 50
        assert node.stop(STOP_TIMEOUT) == 0

    node = start_node(datadir)
    rpc = client(node)
    rpc.generatetoaddress(30, OTHER.address())
    before = chain_state(rpc)
    node.kill()                    # 30 blocks in the block files that the kernel's index never recorded
    node = start_node(datadir, extra_args=["-reindex"])
    try:
        assert chain_state(client(node)) == before
    finally:
        node.stop()


# -- the mempool ----------------------------------------------------------------------------------------
@embedded_only("Core writes mempool.dat only on shutdown and on savemempool")
def test_a_transaction_survives_a_kill_once_the_periodic_save_has_written_it(tmp_path, wallet):
    node = start_node(tmp_path / "n")
    rpc = client(node)
    coin = mine_coins(rpc, wallet, 1)[0]
    txid = spend(rpc, wallet, coin)
    entry_time = rpc.getmempoolentry(txid)["time"]
    wait_saved(node, txid)         # within a second of the mempool changing
    node.kill()

    node = start_node(tmp_path / "n")
    rpc = client(node)
    try:
        assert rpc.getrawmempool() == [txid]
        assert rpc.getmempoolentry(txid)["time"] == entry_time       # Core keeps each entry's time
        rpc.generatetoaddress(1, OTHER.address())
        assert rpc.getrawtransaction(txid, True)["confirmations"] == 1
    finally:
        node.stop()


def test_savemempool_writes_what_a_killed_node_loads_again(tmp_path, wallet):
    node = start_node(tmp_path / "n")
    rpc = client(node)
    coins = mine_coins(rpc, wallet, 2)
    txids = sorted(spend(rpc, wallet, coin) for coin in coins)
    assert rpc.savemempool() == {"filename": str(node.datadir / "regtest" / "mempool.dat")}
    rpc.gettxoutsetinfo("none")    # makes Bitcoin Core flush its chainstate, so that it keeps the coins' blocks
    node.kill()

    node = start_node(tmp_path / "n")
    rpc = client(node)
    try:
        wait_until(lambda: rpc.getmempoolinfo()["loaded"], what="the restarted node loading mempool.dat",
                   process=node.process, logs=(node.log_path,))
        assert sorted(rpc.getrawmempool()) == txids
    finally:
        node.stop()


@embedded_only("fault points inside the embedded node")
@pytest.mark.parametrize("stage", ["torn-write", "power-loss", "before-rename", "rename-lost", "before-dirsync"])
def test_a_kill_while_writing_mempool_dat_leaves_the_old_file_or_the_new_one(tmp_path, wallet, kill_at, stage):
    """torn-write: killed half way through writing mempool.dat.new; power-loss: all of it written, none of it
    synced, and the unsynced half lost; before-rename: synced, not renamed; rename-lost: renamed, and a power
    cut before the directory's fsync takes the rename back; before-dirsync: renamed, killed."""
    kill_at(f"mempool.dat:{stage}@2")          # the second save: the first one holds the first transaction
    node = start_node(tmp_path / "n")
    rpc = client(node)
    first, second = mine_coins(rpc, wallet, 2)
    kept = spend(rpc, wallet, first)
    wait_saved(node, kept)
    late = spend(rpc, wallet, second)
    wait_killed(node)
    renamed = stage == "before-dirsync"
    assert saved_txids(node) == ([kept, late] if renamed else [kept])
    leftover = node.datadir / "regtest" / "mempool.dat.new"
    if stage in ("torn-write", "power-loss"):  # half a file: never renamed over the good one, never read
        assert 0 < leftover.stat().st_size < (node.datadir / "regtest" / "mempool.dat").stat().st_size * 2
    if stage == "rename-lost":                 # the whole new file, under the name nothing reads
        assert [tx.txid for tx, _ in mempool_persist.load(leftover.read_bytes())] == [kept, late]
    kill_at(None)

    node = start_node(tmp_path / "n")
    try:
        assert sorted(client(node).getrawmempool()) == sorted([kept, late] if renamed else [kept])
    finally:
        node.stop()


# -- the node's own indexes -----------------------------------------------------------------------------
@embedded_only("fault points inside the embedded node")
def test_a_kill_while_snapshotting_the_indexes_keeps_the_previous_snapshot(tmp_path, wallet, kill_at):
    kill_at("utxo-txindex.pickle:torn-write@2")
    node = start_node(tmp_path / "n")
    rpc = client(node)
    coin = mine_coins(rpc, wallet, 1)[0]
    rpc.mockscheduler(60)          # snapshot 1, at this tip
    first_tip = rpc.getbestblockhash()
    txid = spend(rpc, wallet, coin)
    rpc.generatetoaddress(5, OTHER.address())
    before = chain_state(rpc)
    with pytest.raises(NodeError):
        rpc.mockscheduler(60)      # snapshot 2: killed half way through writing it
    wait_killed(node)
    with open(node.datadir / "regtest" / "indexes" / "utxo-txindex.pickle", "rb") as f:
        assert pickle.load(f)["tip"][::-1].hex() == first_tip
    kill_at(None)

    node = start_node(tmp_path / "n")      # snapshot 1 rolled forward over the 6 later blocks
    rpc = client(node)
    try:
        assert chain_state(rpc) == before
        assert rpc.getrawtransaction(txid, True)["confirmations"] == 5
    finally:
        node.stop()


def test_the_utxo_set_hashes_are_cores():
    """MuHash3072 against Core's own vector (src/test/crypto_tests.cpp: FromInt(0) * FromInt(1) / FromInt(2))."""
    acc = MuHash3072()
    acc.insert(bytes([0]) + bytes(31))
    acc.insert(bytes([1]) + bytes(31))
    acc.remove(bytes([2]) + bytes(31))
    assert acc.finalize()[::-1].hex() == "10d312b100cbd32ada024a6646e40d3482fcff103668d2625f10002a607d5863"


def test_gettxoutsetinfo_refuses_as_core_does(rpc):
    from custody.chain.node_client import RPCError
    with pytest.raises(RPCError, match="'sha256' is not a valid hash_type"):
        rpc.gettxoutsetinfo("sha256")
    with pytest.raises(RPCError, match="Querying specific block heights requires coinstatsindex"):
        rpc.gettxoutsetinfo("muhash", 1)
