"""Every RPC method the node offers, with Bitcoin Core 29's shapes and errors."""
from __future__ import annotations

from decimal import Decimal

import pytest

from custody.chain.node_client import RPCError
from regtest.testwallet import TestWallet

from .conftest import embedded_only, mine_coins

REGTEST_GENESIS = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"


def test_fresh_chain_is_regtest_genesis(rpc):
    assert rpc.getblockcount() == 0
    assert rpc.getbestblockhash() == REGTEST_GENESIS
    assert rpc.getblockhash(0) == REGTEST_GENESIS
    info = rpc.getblockchaininfo()
    assert info["chain"] == "regtest" and info["blocks"] == 0 and info["initialblockdownload"] is True


def test_generatetoaddress_mines_and_pays_the_address(rpc, wallet):
    hashes = rpc.generatetoaddress(3, wallet.address())
    assert len(hashes) == 3 and rpc.getblockcount() == 3 and rpc.getbestblockhash() == hashes[-1]
    block = rpc.getblock(hashes[0], 2)
    coinbase = block["tx"][0]
    assert coinbase["vout"][0]["value"] == Decimal("50.00000000")
    assert coinbase["vout"][0]["scriptPubKey"]["address"] == wallet.address()
    assert coinbase["vin"][0]["coinbase"].startswith("51")  # BIP34 height 1 as OP_1
    info = rpc.getblockchaininfo()
    assert info["initialblockdownload"] is False and info["bestblockhash"] == hashes[-1]


def test_generatetoaddress_rejects_bad_and_foreign_addresses(rpc):
    for bad in ("notanaddress", "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"):  # mainnet address
        with pytest.raises(RPCError) as e:
            rpc.generatetoaddress(1, bad)
        assert e.value.code == -5


def test_getblockheader_and_getblock_shapes(rpc):
    tip = rpc.getbestblockhash()
    header = rpc.getblockheader(tip)
    for key in ("hash", "confirmations", "height", "version", "versionHex", "merkleroot", "time", "mediantime",
                "nonce", "bits", "difficulty", "chainwork", "nTx", "previousblockhash"):
        assert key in header
    assert header["confirmations"] == 1 and "nextblockhash" not in header
    assert len(rpc.getblockheader(tip, False)) == 160
    raw = rpc.getblock(tip, 0)
    verbose = rpc.getblock(tip, 1)
    assert verbose["size"] == len(raw) // 2 and verbose["tx"] == [t["txid"] for t in rpc.getblock(tip, 2)["tx"]]
    parent = rpc.getblockheader(header["previousblockhash"])
    assert parent["nextblockhash"] == tip and parent["confirmations"] == 2
    assert int(header["chainwork"], 16) > int(parent["chainwork"], 16)
    with pytest.raises(RPCError) as e:
        rpc.getblock("00" * 32)
    assert e.value.code == -5
    with pytest.raises(RPCError) as e:
        rpc.getblockheader("xyz")
    assert e.value.code == -8
    with pytest.raises(RPCError) as e:
        rpc.getblockhash(10_000)
    assert e.value.code == -8


def test_wrong_parameter_type_is_rpc_type_error(rpc):
    with pytest.raises(RPCError) as e:
        rpc.getblockhash("1")
    assert e.value.code == -3     # RPCHelpMan::HandleRequest names each argument by position and name
    assert e.value.message == ('Wrong type passed:\n{\n    "Position 1 (height)": '
                               '"JSON value of type string is not of expected type number"\n}')


def test_transaction_lifecycle_through_mempool_to_block(rpc, wallet, other_address):
    coin = mine_coins(rpc, wallet, 1)[0]
    to = TestWallet("someone else")
    raw = wallet.sign([coin], [(to.wpkh, coin.value - 1_000)])
    decoded = rpc.decoderawtransaction(raw)
    assert decoded["vin"][0]["txid"] == coin.txid and "hex" not in decoded
    accepted = rpc.testmempoolaccept([raw])[0]
    assert accepted["allowed"] is True and accepted["fees"]["base"] == Decimal("0.00001")
    txid = rpc.sendrawtransaction(raw)
    assert txid == decoded["txid"]
    assert rpc.sendrawtransaction(raw) == txid  # already in mempool: same answer, no error
    assert txid in rpc.getrawmempool()
    entry = rpc.getmempoolentry(txid)
    assert entry["vsize"] == decoded["vsize"] and entry["fees"]["base"] == Decimal("0.00001")
    assert rpc.getrawmempool(True)[txid]["wtxid"] == decoded["hash"]
    info = rpc.getmempoolinfo()
    assert info["size"] == 1 and info["total_fee"] == Decimal("0.00001")
    assert rpc.gettxout(coin.txid, 0) is None                 # spent in mempool
    assert rpc.gettxout(coin.txid, 0, False) is not None      # still unspent in the chain
    assert rpc.gettxout(txid, 0)["confirmations"] == 0
    assert rpc.getrawtransaction(txid) == raw
    block_hash = rpc.generatetoaddress(1, other_address)[0]
    assert rpc.getrawmempool() == []
    tx = rpc.getrawtransaction(txid, True)
    assert tx["blockhash"] == block_hash and tx["confirmations"] == 1 and tx["hex"] == raw
    assert rpc.getrawtransaction(txid, 2)["fee"] == Decimal("0.00001")
    assert rpc.getrawtransaction(txid, True, block_hash)["in_active_chain"] is True
    assert rpc.gettxout(txid, 0)["confirmations"] == 1
    assert rpc.gettxout(coin.txid, 0) is None
    block = rpc.getblock(block_hash, 2)
    assert block["tx"][1]["txid"] == txid and block["tx"][1]["fee"] == Decimal("0.00001")
    stats = rpc.getblockstats(block["height"])
    assert stats["totalfee"] == 1000 and stats["txs"] == 2 and stats["ins"] == 1
    assert rpc.getblockstats(block_hash, ["totalfee", "txs"]) == {"totalfee": 1000, "txs": 2}
    with pytest.raises(RPCError) as e:
        rpc.getrawtransaction("11" * 32)
    assert e.value.code == -5
    with pytest.raises(RPCError) as e:
        rpc.getmempoolentry(txid)
    assert e.value.code == -5


def test_decoderawtransaction_rejects_garbage(rpc):
    with pytest.raises(RPCError) as e:
        rpc.decoderawtransaction("00ff")
    assert e.value.code == -22
    with pytest.raises(RPCError) as e:
        rpc.sendrawtransaction("zz")
    assert e.value.code == -22


def test_scantxoutset_finds_coins_by_descriptor_and_address(rpc, wallet):
    coins = mine_coins(rpc, wallet, 2, kind="tr")
    result = rpc.scantxoutset("start", [f"addr({wallet.address('tr')})"])
    assert result["success"] is True
    found = {(u["txid"], u["vout"]) for u in result["unspents"]}
    assert {(c.txid, c.vout) for c in coins} <= found
    assert result["total_amount"] == sum(u["amount"] for u in result["unspents"])
    assert all(u["coinbase"] and u["confirmations"] >= 101 for u in result["unspents"])
    by_key = rpc.scantxoutset("start", [{"desc": f"tr({wallet.pub.xonly().hex()})"}])
    assert {(u["txid"], u["vout"]) for u in by_key["unspents"]} == found
    assert rpc.scantxoutset("status") is None
    assert rpc.scantxoutset("abort") is False
    with pytest.raises(RPCError):
        rpc.scantxoutset("start", ["wpkh(notakey)"])


@embedded_only("Core's estimator needs far more history than a test makes")
def test_estimatesmartfee_learns_from_mined_blocks(rpc, wallet, other_address):
    coins = mine_coins(rpc, wallet, 3)
    to = TestWallet("someone else")
    for coin, fee in zip(coins, (2_000, 3_000, 5_000)):
        rpc.sendrawtransaction(wallet.sign([coin], [(to.wpkh, coin.value - fee)]))
    rpc.generatetoaddress(1, other_address)
    estimate = rpc.estimatesmartfee(2)
    assert estimate["blocks"] >= 2 and Decimal("0.00001") <= estimate["feerate"] <= Decimal("0.001")
    with pytest.raises(RPCError) as e:
        rpc.estimatesmartfee(0)
    assert e.value.code == -8


def test_generateblock_with_chosen_transactions(rpc, wallet, other_address):
    coin = mine_coins(rpc, wallet, 1)[0]
    raw = wallet.sign([coin], [(TestWallet("x").wpkh, coin.value - 500)])  # never sent: not in the mempool
    txid = rpc.decoderawtransaction(raw)["txid"]
    result = rpc.generateblock(other_address, [raw])
    assert rpc.getblock(result["hash"])["tx"][1] == txid
    unsent = rpc.generateblock(other_address, [], False)
    assert "hex" in unsent and rpc.getbestblockhash() == result["hash"]
    assert rpc.submitblock(unsent["hex"]) is None
    assert rpc.getbestblockhash() == unsent["hash"]
    assert rpc.submitblock(unsent["hex"]) == "duplicate"
    with pytest.raises(RPCError) as e:
        rpc.generateblock(other_address, ["ab" * 32])
    assert e.value.code == -5


def test_generatetodescriptor(rpc, wallet):
    before = rpc.getblockcount()
    hashes = rpc.generatetodescriptor(2, f"wpkh({wallet.pub.sec().hex()})")
    assert len(hashes) == 2 and rpc.getblockcount() == before + 2
    out = rpc.getblock(hashes[0], 2)["tx"][0]["vout"][0]
    assert out["scriptPubKey"]["hex"] == wallet.wpkh.hex()


def test_submitblock_rejects_invalid_blocks_with_core_reasons(rpc, other_address):
    template = rpc.generateblock(other_address, [], False)["hex"]
    with pytest.raises(RPCError) as e:
        rpc.submitblock("00")
    assert e.value.code == -22
    # Corrupt the merkle root: the kernel refuses it and says why.
    raw = bytearray.fromhex(template)
    raw[40] ^= 1
    reason = rpc.submitblock(raw.hex())
    assert reason in ("bad-txnmrklroot", "high-hash")
    assert rpc.getbestblockhash() != template


def test_network_and_control_methods(rpc):
    info = rpc.getnetworkinfo()
    assert info["version"] >= 290000 and info["connections"] == 0
    assert info["relayfee"] == info["incrementalfee"] == Decimal("0.00000100")     # Core 29.1+'s 100 sat/kvB
    assert [n["name"] for n in info["networks"]] == ["ipv4", "ipv6", "onion", "i2p", "cjdns"]
    assert isinstance(rpc.uptime(), int)
    assert "getblockcount" in rpc.help()
    assert "getblock" in rpc.help("getblock")


def test_descriptor_helpers(rpc, wallet):
    desc = f"wpkh({wallet.pub.sec().hex()})"
    info = rpc.getdescriptorinfo(desc)
    assert info["descriptor"].startswith(desc + "#") and info["isrange"] is False
    assert rpc.deriveaddresses(info["descriptor"]) == [wallet.address()]
    assert "multipath_expansion" not in info
    multi = rpc.getdescriptorinfo(f"wpkh({wallet_xpub()}/<0;1>/*)")
    paths = [d.split("#")[0] for d in multi["multipath_expansion"]]
    assert paths == [f"wpkh({wallet_xpub()}/0/*)", f"wpkh({wallet_xpub()}/1/*)"]
    assert multi["descriptor"] == multi["multipath_expansion"][0] and multi["isrange"] is True


def test_package_and_mempool_relatives(rpc, wallet):
    coin = mine_coins(rpc, wallet, 1)[0]
    parent = wallet.sign([coin], [(wallet.wpkh, coin.value - 1_000)])
    parent_txid = rpc.decoderawtransaction(parent)["txid"]
    child = wallet.sign([utxo_like(parent_txid, coin.value - 1_000, wallet)], [(wallet.wpkh, coin.value - 3_000)])
    results = rpc.testmempoolaccept([parent, child])
    assert [r["allowed"] for r in results] == [True, True]
    assert rpc.getrawmempool() == []                      # a test changes nothing
    rpc.sendrawtransaction(parent)
    child_txid = rpc.sendrawtransaction(child)
    assert rpc.getmempoolancestors(child_txid) == [parent_txid]
    assert rpc.getmempooldescendants(parent_txid) == [child_txid]
    assert rpc.getmempoolentry(child_txid)["depends"] == [parent_txid]
    assert rpc.getmempoolentry(parent_txid)["spentby"] == [child_txid]
    assert set(rpc.getmempoolancestors(child_txid, True)) == {parent_txid}


def utxo_like(txid, value, wallet):
    from regtest.testwallet import Utxo
    return Utxo(txid, 0, value, wallet.wpkh)


def test_validateaddress(rpc, wallet):
    good = rpc.validateaddress(wallet.address("tr"))
    assert good["isvalid"] is True and good["witness_version"] == 1 and good["scriptPubKey"] == wallet.tr.hex()
    assert rpc.validateaddress("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4")["isvalid"] is False


def wallet_xpub() -> str:
    from embit import bip32
    from embit.networks import NETWORKS
    root = bip32.HDKey.from_seed(bytes(32), version=NETWORKS["regtest"]["xprv"])
    return root.derive("m/84h/1h/0h").to_public().to_base58()
