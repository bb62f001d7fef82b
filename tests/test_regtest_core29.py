"""The embedded node answers as Bitcoin Core 29.2 does: relay fees, error wording, the network list,
a transaction index that survives reorganisations, and the controls Core's own functional tests use
(setmocktime, mockscheduler, syncwithvalidationinterfacequeue, getblocktemplate, start-up options).
Every assertion states Core 29.2's answer, so the module also runs against BITCOIND."""
from __future__ import annotations

import time
from decimal import Decimal

import pytest

from custody.chain.node_client import NodeClient, RPCError
from regtest.launcher import start_node
from regtest.serialize import Block, BlockHeader, merkle_root, sha256d, Tx, TxIn, TxOut
from regtest.testwallet import TestWallet, Utxo

from .conftest import embedded_only, mine_coins

OTHER = TestWallet("someone else")
DAY = 24 * 3600


@pytest.fixture(scope="module")
def coins(rpc, wallet):
    return mine_coins(rpc, wallet, 12)


@pytest.fixture
def fresh(tmp_path):
    """A node of its own, for tests that move its clock or need an empty chain."""
    running = start_node(tmp_path / "fresh")
    yield NodeClient(running.url, cookie_file=running.cookie_file)
    running.stop()


def rejected(rpc, raw: str) -> tuple[int, str]:
    with pytest.raises(RPCError) as e:
        rpc.sendrawtransaction(raw)
    return e.value.code, e.value.message


def txid_of(raw: str) -> str:
    return Tx.parse(bytes.fromhex(raw)).txid


# -- fees and wording ------------------------------------------------------------------------
def test_relay_fees_are_100_sat_per_kvb(rpc, wallet, coins):
    info, net = rpc.getmempoolinfo(), rpc.getnetworkinfo()
    assert info["minrelaytxfee"] == info["incrementalrelayfee"] == info["mempoolminfee"] == Decimal("0.00000100")
    assert net["relayfee"] == net["incrementalfee"] == Decimal("0.00000100")
    coin = coins.pop()
    cheap = wallet.sign([coin], [(OTHER.wpkh, coin.value - 20)])        # ~110 vB: 0.18 sat/vB
    assert rpc.sendrawtransaction(cheap) == txid_of(cheap)
    coin = coins.pop()
    too_cheap = wallet.sign([coin], [(OTHER.wpkh, coin.value - 5)])     # 5 sat for ~110 vB < 0.1 sat/vB
    code, message = rejected(rpc, too_cheap)
    assert code == -26 and message.startswith("min relay fee not met, 5 < 11")


def test_replacement_needs_only_the_incremental_100_sat_per_kvb(rpc, wallet, coins):
    coin = coins.pop()
    first = wallet.sign([coin], [(OTHER.wpkh, coin.value - 1_000)])
    rpc.sendrawtransaction(first)
    vsize = rpc.getmempoolentry(txid_of(first))["vsize"]
    bump = wallet.sign([coin], [(OTHER.wpkh, coin.value - 1_000 - (vsize + 19) // 10)])  # +0.1 sat/vB
    assert rpc.sendrawtransaction(bump) == txid_of(bump)
    assert txid_of(first) not in rpc.getrawmempool()


def test_script_failure_names_input_transaction_and_coin(rpc, wallet, coins):
    coin = coins.pop()
    raw = TestWallet("not the owner").sign(
        [Utxo(coin.txid, coin.vout, coin.value, TestWallet("not the owner").wpkh)], [(OTHER.wpkh, coin.value - 1_000)])
    tx = Tx.parse(bytes.fromhex(raw))
    code, message = rejected(rpc, raw)
    assert code == -26
    assert message == (f"mandatory-script-verify-flag-failed (Script failed an OP_EQUALVERIFY operation), "
                       f"input 0 of {tx.txid} (wtxid {tx.wtxid}), spending {coin.txid}:{coin.vout}")
    result = rpc.testmempoolaccept([raw])[0]
    assert result["reject-reason"] == "mandatory-script-verify-flag-failed (Script failed an OP_EQUALVERIFY operation)"
    assert result["reject-details"] == message


def test_missing_inputs_have_a_reason_and_no_details(rpc, wallet):
    ghost = Utxo("ab" * 32, 0, 100_000, wallet.wpkh)
    result = rpc.testmempoolaccept([wallet.sign([ghost], [(OTHER.wpkh, 90_000)])])[0]
    assert result["allowed"] is False and result["reject-reason"] == "missing-inputs"
    assert "reject-details" not in result


def test_json_type_errors_are_worded_as_core(rpc):
    with pytest.raises(RPCError) as e:
        rpc.call("getblockhash", "x")
    assert e.value.code == -3
    assert e.value.message == ('Wrong type passed:\n{\n    "Position 1 (height)": '
                               '"JSON value of type string is not of expected type number"\n}')
    with pytest.raises(RPCError) as e:
        rpc.call("getblockheader", 1, "yes")
    assert e.value.message == ('Wrong type passed:\n{\n'
                               '    "Position 1 (blockhash)": "JSON value of type number is not of expected type string",\n'
                               '    "Position 2 (verbose)": "JSON value of type string is not of expected type bool"\n}')


def test_network_list_is_cores(rpc):
    networks = {n["name"]: n for n in rpc.getnetworkinfo()["networks"]}
    assert list(networks) == ["ipv4", "ipv6", "onion", "i2p", "cjdns"]
    assert networks["ipv4"]["reachable"] and not networks["ipv4"]["limited"]
    assert not networks["onion"]["reachable"] and networks["onion"]["limited"]
    assert all(set(n) == {"name", "limited", "reachable", "proxy", "proxy_randomize_credentials"}
               for n in networks.values())


def test_an_orphaned_coinbase_stays_in_the_transaction_index(node, rpc, tmp_path):
    miner = TestWallet("miner")
    fork = rpc.getbestblockhash()
    doomed = rpc.generatetoaddress(1, miner.address())[0]
    coinbase = rpc.getblock(doomed, 1)["tx"][0]
    other = start_node(tmp_path / "other")
    try:
        rpc_b = NodeClient(other.url, cookie_file=other.cookie_file)
        for height in range(1, rpc.getblockcount()):
            rpc_b.submitblock(rpc.getblock(rpc.getblockhash(height), 0))
        assert rpc_b.getbestblockhash() == fork
        for block_hash in rpc_b.generatetoaddress(2, OTHER.address()):
            rpc.submitblock(rpc_b.getblock(block_hash, 0))
    finally:
        other.stop()
    assert rpc.getblockheader(doomed)["confirmations"] == -1
    tx = rpc.getrawtransaction(coinbase, True)
    assert tx["blockhash"] == doomed and tx["confirmations"] == 0 and "in_active_chain" not in tx
    assert rpc.getrawtransaction(coinbase, True, doomed)["in_active_chain"] is False


# -- the controls of Core's functional tests -------------------------------------------------------
def test_setmocktime_sets_block_times_and_uptime(fresh):
    with pytest.raises(RPCError) as e:
        fresh.setmocktime(-1)
    assert (e.value.code, e.value.message) == (-8, "Mocktime cannot be negative: -1.")
    later = int(time.time()) + 3 * DAY                   # beyond the kernel's own two-hour rule
    assert fresh.setmocktime(later) is None
    block = fresh.generatetoaddress(1, OTHER.address())[0]
    assert fresh.getblockheader(block)["time"] == later
    assert fresh.uptime() >= 3 * DAY - 60
    fresh.setmocktime(0)
    assert fresh.uptime() < 3600


def test_mempool_entries_expire_after_336_hours_of_mock_time(fresh):
    wallet = TestWallet("expiry")
    coins = mine_coins(fresh, wallet, 2)
    now = int(time.time())
    fresh.setmocktime(now)
    old = wallet.sign([coins[0]], [(OTHER.wpkh, coins[0].value - 1_000)])
    fresh.sendrawtransaction(old)
    assert fresh.getmempoolentry(txid_of(old))["time"] == now
    fresh.setmocktime(now + 336 * 3600 + 5)
    new = wallet.sign([coins[1]], [(OTHER.wpkh, coins[1].value - 1_000)])
    fresh.sendrawtransaction(new)                         # expiry runs when the mempool next changes
    assert fresh.getrawmempool() == [txid_of(new)]


def test_mockscheduler_and_validation_queue(rpc):
    for bad in (0, 3601):
        with pytest.raises(RPCError) as e:
            rpc.mockscheduler(bad)
        assert (e.value.code, e.value.message) == (-1, "delta_time must be between 1 and 3600 seconds (1 hr)")
    assert rpc.mockscheduler(3600) is None
    assert rpc.syncwithvalidationinterfacequeue() is None


@embedded_only("the embedded node's own fee-estimate file (Core writes fee_estimates.dat on its schedule)")
def test_mockscheduler_runs_the_hourly_fee_estimate_flush(node, rpc):
    path = node.datadir / "regtest" / "fee_estimates.json"
    path.unlink(missing_ok=True)
    rpc.mockscheduler(1800)
    assert not path.exists()
    rpc.mockscheduler(1800)
    assert path.exists()


def test_getblocktemplate_needs_the_segwit_rule(rpc):
    for request in ((), ({},), ({"rules": []},)):
        with pytest.raises(RPCError) as e:
            rpc.call("getblocktemplate", *request)
        assert (e.value.code, e.value.message) == (
            -8, 'getblocktemplate must be called with the segwit rule set (call with {"rules": ["segwit"]})')
    with pytest.raises(RPCError) as e:
        rpc.getblocktemplate({"mode": "nonsense", "rules": ["segwit"]})
    assert (e.value.code, e.value.message) == (-8, "Invalid mode")


def _block_from(template: dict, script_pubkey: bytes, *, break_merkle: bool = False) -> Block:
    """A miner's block from a template: coinbase with BIP34 height and the template's commitment."""
    height = template["height"]
    height_push = bytes([1, height]) if height < 0x80 else bytes([2]) + height.to_bytes(2, "little")
    coinbase = Tx(2, [TxIn(b"\x00" * 32, 0xFFFFFFFF, height_push + b"\x00", 0xFFFFFFFF, [b"\x00" * 32])],
                  [TxOut(template["coinbasevalue"], script_pubkey),
                   TxOut(0, bytes.fromhex(template["default_witness_commitment"]))], 0)
    txs = [coinbase] + [Tx.parse(bytes.fromhex(t["data"])) for t in template["transactions"]]
    root = merkle_root([t.txid_bytes for t in txs])
    header = BlockHeader(template["version"], bytes.fromhex(template["previousblockhash"])[::-1],
                         sha256d(root) if break_merkle else root, template["curtime"], int(template["bits"], 16), 0)
    target = int(template["target"], 16)
    while int.from_bytes(header.hash_bytes, "little") > target:
        header.nonce += 1
    return Block(header, txs)


def test_a_block_built_from_getblocktemplate_is_accepted(rpc, wallet, coins):
    parent_coin = coins.pop()
    parent = wallet.sign([parent_coin], [(wallet.wpkh, parent_coin.value - 1_000)])
    rpc.sendrawtransaction(parent)
    child = wallet.sign([Utxo(txid_of(parent), 0, parent_coin.value - 1_000, wallet.wpkh)],
                        [(OTHER.wpkh, parent_coin.value - 3_000)])
    rpc.sendrawtransaction(child)
    template = rpc.getblocktemplate({"rules": ["segwit"]})
    assert template["previousblockhash"] == rpc.getbestblockhash() and template["height"] == rpc.getblockcount() + 1
    assert template["rules"] == ["csv", "!segwit", "taproot"] and template["capabilities"] == ["proposal"]
    assert template["mutable"] == ["time", "transactions", "prevblock"] and template["bits"] == "207fffff"
    assert (template["sigoplimit"], template["sizelimit"], template["weightlimit"]) == (80_000, 4_000_000, 4_000_000)
    by_txid = {t["txid"]: (n, t) for n, t in enumerate(template["transactions"], 1)}
    n_parent, t_parent = by_txid[txid_of(parent)]
    n_child, t_child = by_txid[txid_of(child)]
    assert t_child["depends"] == [n_parent] and n_parent < n_child
    assert (t_parent["fee"], t_child["fee"]) == (1_000, 2_000) and t_parent["sigops"] == 1
    assert template["coinbasevalue"] == 50 * 100_000_000 // 2 ** (template["height"] // 150) + sum(
        t["fee"] for t in template["transactions"])
    block = _block_from(template, OTHER.wpkh)
    assert rpc.getblocktemplate({"mode": "proposal", "data": block.serialize().hex()}) is None
    bad = _block_from(template, OTHER.wpkh, break_merkle=True)
    assert rpc.getblocktemplate({"mode": "proposal", "data": bad.serialize().hex()}) == "bad-txnmrklroot"
    assert rpc.getblockcount() == template["height"] - 1             # a proposal connects nothing
    assert rpc.submitblock(block.serialize().hex()) is None
    assert rpc.getbestblockhash() == block.hash and rpc.getrawmempool() == []
    assert rpc.getblocktemplate({"mode": "proposal", "data": block.serialize().hex()}) == "duplicate"


def test_testdummy_signals_from_the_second_period_until_active(fresh):
    assert fresh.getblocktemplate({"rules": ["segwit"]})["vbavailable"] == {}
    hashes = fresh.generatetoaddress(144, OTHER.address())
    assert fresh.getblockheader(hashes[-2])["versionHex"] == "20000000"      # height 143
    assert fresh.getblockheader(hashes[-1])["versionHex"] == "30000000"      # height 144: started
    template = fresh.getblocktemplate({"rules": ["segwit"]})
    assert template["vbavailable"] == {"testdummy": 28} and template["version"] == 0x30000000
    hashes = fresh.generatetoaddress(432 - 144, OTHER.address())             # locked in at 288, active at 432
    assert fresh.getblockheader(hashes[-2])["versionHex"] == "30000000"      # height 431
    assert fresh.getblockheader(hashes[-1])["versionHex"] == "20000000"      # height 432: active
    assert fresh.getblocktemplate({"rules": ["segwit"]})["vbavailable"] == {}


# -- start-up options --------------------------------------------------------------------------------
def _refused(tmp_path, *args) -> str:
    with pytest.raises(RuntimeError) as e:
        start_node(tmp_path / "refused", extra_args=list(args), timeout=60)
    return str(e.value)


@pytest.mark.parametrize("arg, error", [
    ("-testactivationheight=csv", "Error: Invalid format (csv) for -testactivationheight=name@height."),
    ("-testactivationheight=csv@x", "Error: Invalid height value (csv@x) for -testactivationheight=name@height."),
    ("-testactivationheight=taproot@5", "Error: Invalid name (taproot@5) for -testactivationheight=name@height."),
    ("-nosuchoption=1", "Error: Error parsing command line arguments: Invalid parameter -nosuchoption=1"),
])
def test_bad_start_up_options_are_refused_with_cores_error(tmp_path, arg, error):
    assert error in _refused(tmp_path, arg)


@embedded_only("options Core honours and libbitcoinkernel's C API cannot")
@pytest.mark.parametrize("arg, error", [
    ("-testactivationheight=csv@432", "-testactivationheight=csv@432 cannot be honoured"),
    ("-fastprune", "-fastprune cannot be honoured"),
    ("-listen=1", "-listen cannot be honoured"),
])
def test_options_the_kernel_cannot_honour_are_refused_by_name(tmp_path, arg, error):
    assert error in _refused(tmp_path, arg)


def _node_with(tmp_path, *args) -> tuple[object, NodeClient]:
    running = start_node(tmp_path / "opts", extra_args=list(args))
    return running, NodeClient(running.url, cookie_file=running.cookie_file)


@pytest.mark.parametrize("args, version_4, data_22_bytes", [
    (["-testactivationheight=csv@1", "-testactivationheight=segwit@0"], "version", None),
    (["-acceptnonstdtxn=1"], None, None),
    (["-datacarriersize=10"], "version", "scriptpubkey"),
    (["-nodatacarrier"], "version", "scriptpubkey"),
])
def test_acceptnonstdtxn_and_datacarrier(tmp_path, args, version_4, data_22_bytes):
    """Each answer is a reject reason, or None for accepted."""
    wallet = TestWallet("options")
    running, rpc = _node_with(tmp_path, *args)
    try:
        coins = mine_coins(rpc, wallet, 2)
        v4 = wallet.sign([coins[0]], [(OTHER.wpkh, coins[0].value - 1_000)], version=4)
        data = wallet.sign([coins[1]], [(OTHER.wpkh, coins[1].value - 1_000), (b"\x6a\x14" + b"d" * 20, 0)])
        answers = [rpc.testmempoolaccept([raw])[0] for raw in (v4, data)]
        assert [a.get("reject-reason") for a in answers] == [version_4, data_22_bytes]
    finally:
        running.stop()


def test_mocktime_at_start_up(tmp_path):
    later = int(time.time()) + 10 * DAY
    running, rpc = _node_with(tmp_path, f"-mocktime={later}")
    try:
        block = rpc.generatetoaddress(1, OTHER.address())[0]
        assert rpc.getblockheader(block)["time"] == later
    finally:
        running.stop()
