"""Mempool policy: every rejection reason, each triggered by a transaction built for it, and the
behaviour that must work (RBF, CPFP, taproot with all spent outputs)."""
from __future__ import annotations

import pytest

from custody.chain.node_client import RPCError
from regtest.testwallet import TestWallet, Utxo

from .conftest import mine_coins

OTHER = TestWallet("someone else")


@pytest.fixture(scope="module")
def coins(rpc, wallet):
    """Forty mature coins for the tests of this module, plus one still-immature coinbase."""
    mature = mine_coins(rpc, wallet, 40)
    return mature


def rejected(rpc, raw: str) -> tuple[int, str]:
    with pytest.raises(RPCError) as e:
        rpc.sendrawtransaction(raw)
    return e.value.code, e.value.message


def reason(rpc, raw: str) -> str:
    result = rpc.testmempoolaccept([raw])[0]
    assert result["allowed"] is False
    return result["reject-reason"]


def fee_at_relay_rate(rpc, raw: str) -> int:
    """What Core 29.1+'s default -minrelaytxfee and -incrementalrelayfee (100 sat/kvB, 0.1 sat/vB) ask of a
    transaction of this size: CFeeRate::GetFee, rounded up."""
    return -(-rpc.decoderawtransaction(raw)["vsize"] * 100 // 1000)


def test_min_relay_fee_not_met(rpc, wallet, coins):
    coin = coins.pop()
    raw = wallet.sign([coin], [(OTHER.wpkh, coin.value - 10)])  # ~110 vB at 0.1 sat/vB needs 11 sats
    needed = fee_at_relay_rate(rpc, raw)
    assert needed > 10
    code, message = rejected(rpc, raw)
    assert (code, message) == (-26, f"min relay fee not met, 10 < {needed}")
    assert reason(rpc, raw) == "min relay fee not met"
    enough = wallet.sign([coin], [(OTHER.wpkh, coin.value - needed - 1)])   # one more: its size may differ by 1 vB
    assert rpc.testmempoolaccept([enough])[0]["allowed"] is True          # 0.1 sat/vB is enough, not 1 sat/vB


def test_missing_and_spent_inputs(rpc, wallet, coins, other_address):
    coin = coins.pop()
    ghost = Utxo("ab" * 32, 0, coin.value, coin.script_pubkey)
    code, message = rejected(rpc, wallet.sign([ghost], [(OTHER.wpkh, coin.value - 1000)]))
    assert (code, message) == (-25, "bad-txns-inputs-missingorspent")
    assert reason(rpc, wallet.sign([ghost], [(OTHER.wpkh, coin.value - 1000)])) == "missing-inputs"
    first = wallet.sign([coin], [(OTHER.wpkh, coin.value - 1000)])
    rpc.sendrawtransaction(first)
    rpc.generatetoaddress(1, other_address)
    code, message = rejected(rpc, wallet.sign([coin], [(OTHER.wpkh, coin.value - 2000)]))
    assert (code, message) == (-25, "bad-txns-inputs-missingorspent")
    code, message = rejected(rpc, first)   # already confirmed
    assert code == -27


def test_dust_output(rpc, wallet, coins):
    coin = coins.pop()
    raw = wallet.sign([coin], [(OTHER.wpkh, 293), (wallet.wpkh, coin.value - 293 - 2000)])
    assert rejected(rpc, raw) == (-26, "dust, tx with dust output must be 0-fee")
    two_dust = wallet.sign([coin], [(OTHER.wpkh, 100), (OTHER.pkh, 545), (wallet.wpkh, coin.value - 3000)])
    assert reason(rpc, two_dust) == "dust"
    at_threshold = wallet.sign([coin], [(OTHER.wpkh, 294), (wallet.wpkh, coin.value - 294 - 2000)])
    assert rpc.testmempoolaccept([at_threshold])[0]["allowed"] is True


def test_premature_coinbase_spend(rpc, wallet):
    young = mine_coins(rpc, wallet, 1, mature=False)[0]
    raw = wallet.sign([young], [(OTHER.wpkh, young.value - 1000)])
    code, message = rejected(rpc, raw)
    assert code == -26 and message.startswith("bad-txns-premature-spend-of-coinbase, tried to spend coinbase at depth")
    rpc.generatetoaddress(98, TestWallet("maturity").address())
    assert reason(rpc, raw) == "bad-txns-premature-spend-of-coinbase"   # depth 99 of 100
    rpc.generatetoaddress(1, TestWallet("maturity").address())
    assert rpc.testmempoolaccept([raw])[0]["allowed"] is True           # depth 100


def script_failure(rpc, raw: str, index: int, spent: Utxo, error: str) -> str:
    """Core 29's wording of a failed input script: the reason, then (CScriptCheck's debug message) which
    input of which transaction, spending which outpoint."""
    tx = rpc.decoderawtransaction(raw)
    return (f"mandatory-script-verify-flag-failed ({error}), input {index} of {tx['txid']} (wtxid {tx['hash']}), "
            f"spending {spent.txid}:{spent.vout}")


def test_bad_signature_fails_script_verification(rpc, wallet, coins):
    coin = coins.pop()
    lying = Utxo(coin.txid, coin.vout, coin.value + 1, coin.script_pubkey)  # segwit sighash commits to the amount
    raw = wallet.sign([lying], [(OTHER.wpkh, coin.value - 1000)])
    code, message = rejected(rpc, raw)
    assert code == -26 and message == script_failure(
        rpc, raw, 0, coin, "Script evaluated without error but finished with a false/empty top stack element")
    someone = TestWallet("thief")
    stolen = Utxo(coin.txid, coin.vout, coin.value, someone.wpkh)
    raw = someone.sign([stolen], [(someone.wpkh, coin.value - 1000)])
    assert rejected(rpc, raw) == (-26, script_failure(rpc, raw, 0, coin, "Script failed an OP_EQUALVERIFY operation"))
    assert reason(rpc, raw) == "mandatory-script-verify-flag-failed (Script failed an OP_EQUALVERIFY operation)"


def test_taproot_spend_needs_every_spent_output(rpc, wallet, coins, other_address):
    tr_coins = mine_coins(rpc, wallet, 2, kind="tr")
    segwit_coin = coins.pop()
    inputs = tr_coins + [segwit_coin]
    outputs = [(OTHER.tr, sum(c.value for c in inputs) - 3000)]
    # A taproot signature commits to every spent amount: lie about the segwit input's amount and
    # the taproot inputs' signatures no longer verify, although their own amounts are right.
    lying = tr_coins + [Utxo(segwit_coin.txid, segwit_coin.vout, segwit_coin.value - 1, segwit_coin.script_pubkey)]
    tampered = wallet.sign(lying, outputs)
    assert rejected(rpc, tampered)[1] == script_failure(rpc, tampered, 0, tr_coins[0], "Invalid Schnorr signature")
    txid = rpc.sendrawtransaction(wallet.sign(inputs, outputs))
    rpc.generatetoaddress(1, other_address)
    assert rpc.getrawtransaction(txid, True)["confirmations"] == 1


def test_max_fee_rate(rpc, wallet, coins):
    coin = coins.pop()
    raw = wallet.sign([coin], [(OTHER.wpkh, coin.value // 2)])
    code, message = rejected(rpc, raw)
    assert (code, message) == (-25, "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)")
    assert reason(rpc, raw) == "max-fee-exceeded"
    assert rpc.testmempoolaccept([raw], 0)[0]["allowed"] is True


def test_standardness_rules(rpc, wallet, coins):
    coin = coins.pop()
    change = coin.value - 2000
    assert reason(rpc, wallet.sign([coin], [(b"\x51\x51\x93", change)])) == "scriptpubkey"          # nonstandard
    assert reason(rpc, wallet.sign([coin], [(b"\x6a" + b"\x4c\x51" + b"x" * 81, 0), (wallet.wpkh, change)])) == "scriptpubkey"
    assert reason(rpc, wallet.sign([coin], [(b"\x6a\x01x", 0), (b"\x6a\x01y", 0), (wallet.wpkh, change)])) == "multi-op-return"
    assert reason(rpc, wallet.sign([coin], [(wallet.wpkh, change)], version=4)) == "version"
    assert reason(rpc, wallet.sign([coin], [(b"\x6a\x00", 0)])) == "tx-size-small"
    height = rpc.getblockcount()
    assert reason(rpc, wallet.sign([coin], [(wallet.wpkh, change)], locktime=height + 5)) == "non-final"
    assert rpc.testmempoolaccept([wallet.sign([coin], [(wallet.wpkh, change)], locktime=height)])[0]["allowed"]
    assert reason(rpc, wallet.sign([coin], [(wallet.wpkh, coin.value + 1)])) == "bad-txns-in-belowout"


def test_relative_timelock_bip68(rpc, wallet, coins):
    coin = coins.pop()
    confirmations = rpc.getrawtransaction(coin.txid, True)["confirmations"]
    too_soon = wallet.sign([coin], [(wallet.wpkh, coin.value - 2000)], sequence=confirmations + 1)
    assert reason(rpc, too_soon) == "non-BIP68-final"
    ok = wallet.sign([coin], [(wallet.wpkh, coin.value - 2000)], sequence=confirmations)
    assert rpc.testmempoolaccept([ok])[0]["allowed"] is True


def test_full_rbf_replacement_rules(rpc, wallet, coins):
    """Full RBF with Core 29.1+'s -incrementalrelayfee of 100 sat/kvB: a replacement pays a higher fee rate
    than what it replaces and, on top of its fee, 0.1 sat/vB of its own size."""
    coin = coins.pop()
    original = wallet.sign([coin], [(OTHER.wpkh, coin.value - 200)], sequence=0xFFFFFFFE)  # ~1.8 sat/vB, no signal
    txid = rpc.sendrawtransaction(original)
    same_fee = wallet.sign([coin], [(OTHER.pkh, coin.value - 200)])     # 3 vB larger: a lower fee rate
    code, message = rejected(rpc, same_fee)
    assert code == -26 and message.startswith("insufficient fee, rejecting replacement")
    assert "new feerate" in message
    tiny_bump = wallet.sign([coin], [(OTHER.wpkh, coin.value - 205)])   # a higher fee rate, but 5 sats more only
    needed = fee_at_relay_rate(rpc, tiny_bump)
    assert 5 < needed < 20
    code, message = rejected(rpc, tiny_bump)
    tiny_txid = rpc.decoderawtransaction(tiny_bump)["txid"]
    assert (code, message) == (-26, f"insufficient fee, rejecting replacement {tiny_txid}, not enough additional fees "
                                    f"to relay; 0.00000005 < 0.{needed:08d}")
    replacement = wallet.sign([coin], [(OTHER.wpkh, coin.value - 220)])   # 20 sats more: enough at 0.1 sat/vB
    new_txid = rpc.sendrawtransaction(replacement)   # full-RBF: replaces even without the signal
    mempool = rpc.getrawmempool()
    assert new_txid in mempool and txid not in mempool


def test_replacement_must_pay_for_evicted_descendants(rpc, wallet, coins):
    coin = coins.pop()
    parent = wallet.sign([coin], [(wallet.wpkh, coin.value - 1000)])
    parent_txid = rpc.sendrawtransaction(parent)
    child_coin = Utxo(parent_txid, 0, coin.value - 1000, wallet.wpkh)
    rpc.sendrawtransaction(wallet.sign([child_coin], [(OTHER.wpkh, child_coin.value - 20_000)]))
    # higher fee rate than the parent alone, but less than parent + child's absolute fees
    replacement = wallet.sign([coin], [(OTHER.wpkh, coin.value - 5000)])
    code, message = rejected(rpc, replacement)
    assert "less fees than conflicting txs" in message
    spends_conflict = wallet.sign([coin, child_coin], [(OTHER.wpkh, coin.value + child_coin.value - 60_000)])
    assert reason(rpc, spends_conflict) == "bad-txns-spends-conflicting-tx"


def test_long_unconfirmed_chain_limit_and_cpfp(rpc, wallet, coins, other_address):
    coin = coins.pop()
    chain_txids = []
    current = coin
    for _ in range(25):
        raw = wallet.sign([current], [(wallet.wpkh, current.value - 200)])
        txid = rpc.sendrawtransaction(raw)
        chain_txids.append(txid)
        current = Utxo(txid, 0, current.value - 200, wallet.wpkh)
    raw = wallet.sign([current], [(wallet.wpkh, current.value - 200)])
    code, message = rejected(rpc, raw)
    assert message.startswith("too-long-mempool-chain")
    entry = rpc.getmempoolentry(chain_txids[-1])
    assert entry["ancestorcount"] == 25
    rpc.generatetoaddress(1, other_address)
    assert not set(chain_txids) & set(rpc.getrawmempool())


def test_block_template_orders_by_ancestor_fee_rate(rpc, wallet, coins, other_address):
    a, b = coins.pop(), coins.pop()
    parent = rpc.sendrawtransaction(wallet.sign([a], [(wallet.wpkh, a.value - 110)]))    # 1 sat/vB
    child = rpc.sendrawtransaction(wallet.sign([Utxo(parent, 0, a.value - 110, wallet.wpkh)],
                                               [(OTHER.wpkh, a.value - 110 - 20_000)]))   # pays for both
    middle = rpc.sendrawtransaction(wallet.sign([b], [(OTHER.wpkh, b.value - 1_500)]))    # ~14 sat/vB
    block = rpc.getblock(rpc.generatetoaddress(1, other_address)[0])
    assert block["tx"][1:] == [parent, child, middle]


def test_max_standard_weight(rpc, wallet, coins):
    coin = coins.pop()
    outputs = [(OTHER.wpkh, 1_000)] * 3_300            # 3,300 x 31 bytes: over 400,000 weight units
    raw = wallet.sign([coin], outputs + [(wallet.wpkh, coin.value - 3_300_000 - 200_000)])
    assert rpc.decoderawtransaction(raw)["weight"] > 400_000
    assert reason(rpc, raw) == "tx-size"


def test_blocks_stop_at_the_weight_limit(rpc, wallet, coins, other_address):
    """Eleven transactions of ~99 kvB each do not fit one 4 MWU block: the best ten do, by fee rate."""
    big = []
    for i in range(11):
        coin = coins.pop()
        fee = 200_000 + i * 10_000
        outputs = [(OTHER.wpkh, 1_000)] * 3_150
        big.append(rpc.sendrawtransaction(wallet.sign([coin], outputs + [(wallet.wpkh, coin.value - 3_150_000 - fee)])))
    block = rpc.getblock(rpc.generatetoaddress(1, other_address)[0])
    assert block["weight"] <= 4_000_000
    assert big[0] not in block["tx"] and set(big[1:]) <= set(block["tx"])   # the cheapest waits
    assert rpc.getrawmempool() == [big[0]]
    assert big[0] in rpc.getblock(rpc.generatetoaddress(1, other_address)[0])["tx"]
