"""PSBTs for a policy: built from the ledger's coins, signed by independent signers (embit), verified
on upload, finalized, accepted by the node; and every attack on an upload refused by name."""
from __future__ import annotations

import base64
import hashlib

import pytest
from embit import bip32
from embit.networks import NETWORKS
from embit.psbt import PSBT
from embit.script import Script
from embit.transaction import SIGHASH, TransactionOutput

from custody.bitcoin.coin_selection import Candidate, InsufficientFunds, select_coins
from custody.bitcoin.policies import build_policy
from custody.bitcoin.psbt_builder import build_spend, Coin
from custody.bitcoin.signatures import (decode_psbt, finalize, is_complete, merge_upload, SignatureError,
                                        signed_fingerprints)
from regtest.testwallet import TestWallet

from .conftest import hd_keys, mine_coins

SEED = 800
OTHER = TestWallet("someone else")


def device(n: int) -> bip32.HDKey:
    return bip32.HDKey.from_seed(hashlib.sha256(f"test device {n}".encode()).digest(),
                                 version=NETWORKS["regtest"]["xprv"])


@pytest.fixture(scope="module")
def spec():
    return build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=SEED))


@pytest.fixture(scope="module")
def funded(rpc, wallet, spec):
    """Four coins of the policy on receive addresses 0..3."""
    coin = mine_coins(rpc, wallet, 1)[0]
    outputs = [(spec.embit(0).derive(i).script_pubkey().data, 10_000_000 * (i + 1)) for i in range(4)]
    txid = rpc.sendrawtransaction(wallet.sign([coin], outputs + [(wallet.wpkh, coin.value - 100_002_000)]))
    rpc.generatetoaddress(1, OTHER.address())
    raw = bytes.fromhex(rpc.getrawtransaction(txid))
    return [Coin(txid, i, 10_000_000 * (i + 1), 0, i, outputs[i][0]) for i in range(4)], {txid: raw}


def build(rpc, spec, funded, amount=25_000_000, **kw):
    coins, previous = funded
    change = (0, spec.embit(1).derive(0).script_pubkey().data)
    return build_spend(spec, coins, [(OTHER.wpkh, amount)], fee_rate=2, change=change, previous_txs=previous,
                       locktime=rpc.getblockcount(), **kw)


def sign(psbt: PSBT, n: int, sighash=SIGHASH.ALL) -> PSBT:
    copy = PSBT.parse(psbt.serialize())
    assert copy.sign_with(device(n), sighash=sighash) > 0
    return copy


def test_built_psbt_carries_what_signers_need(rpc, spec, funded):
    built = build(rpc, spec, funded)
    psbt = built.psbt
    assert len(psbt.xpubs) == 3 and psbt.locktime == rpc.getblockcount()
    for scope in psbt.inputs:
        assert scope.witness_utxo is not None and scope.non_witness_utxo is not None
        assert scope.witness_script is not None and len(scope.bip32_derivations) == 3
        assert scope.sequence == 0xFFFFFFFD
    change = psbt.outputs[built.psbt.tx.vout.index(next(o for o in psbt.tx.vout
                                                         if o.script_pubkey.data == spec.embit(1).derive(0).script_pubkey().data))]
    assert len(change.bip32_derivations) == 3 and change.witness_script is not None
    assert built.fee == sum(c.value for c in built.coins) - 25_000_000 - built.change


def test_built_psbts_share_no_global_fields(rpc, spec, funded):
    """embit's PSBT() shares one default dict for unknown global fields: a field set on one PSBT (an
    approver's signature) must not appear in the next one built."""
    first = build(rpc, spec, funded).psbt
    first.unknown[b"\xfc\x07custody\x01" + b"\x00" * 32] = b"approval"
    assert build(rpc, spec, funded, amount=3_000_000).psbt.unknown == {}


def test_two_signatures_in_any_order_and_encoding_then_broadcast(rpc, spec, funded):
    built = build(rpc, spec, funded)
    stored = built.psbt
    by_third = sign(stored, SEED + 2)
    by_first = sign(stored, SEED)
    step = merge_upload(stored, decode_psbt(by_third.serialize()))                     # binary
    assert step.signers == {device(SEED + 2).my_fingerprint.hex()} and not is_complete(step.psbt, 2)
    before = step.psbt.serialize()
    again = merge_upload(step.psbt, decode_psbt(by_third.serialize().hex()))            # hex, repeated
    assert again.new_signatures == [] and again.psbt.serialize() == before
    done = merge_upload(step.psbt, decode_psbt(base64.b64encode(by_first.serialize()).decode()))   # base64
    assert is_complete(done.psbt, 2)
    assert set(signed_fingerprints(done.psbt)) == {device(SEED).my_fingerprint.hex(), device(SEED + 2).my_fingerprint.hex()}
    raw = finalize(done.psbt, 2).hex()
    assert rpc.testmempoolaccept([raw])[0]["allowed"] is True
    txid = rpc.sendrawtransaction(raw)
    rpc.generatetoaddress(1, OTHER.address())
    assert rpc.getrawtransaction(txid, True)["confirmations"] == 1


def test_signer_that_strips_derivations_is_accepted(rpc, spec, funded):
    stored = build(rpc, spec, funded, amount=5_000_000).psbt
    signed = sign(stored, SEED + 1)
    for scope in signed.inputs:
        scope.bip32_derivations.clear()
        scope.non_witness_utxo = None
    signed.xpubs.clear()
    assert merge_upload(stored, signed).signers == {device(SEED + 1).my_fingerprint.hex()}


@pytest.mark.parametrize("attack, message", [
    ("tampered output", "different transaction"),
    ("changed fee", "different transaction"),
    ("swapped change", "different transaction"),
    ("extra foreign input", "different transaction"),
    ("signature over another transaction", "does not verify"),
    ("non-ALL sighash", "sighash"),
    ("lying witness_utxo", "witness_utxo says"),
    ("key not in policy", "not a key of this policy"),
])
def test_attacks_on_an_upload_are_refused_and_change_nothing(rpc, spec, funded, attack, message):
    stored = build(rpc, spec, funded, amount=7_000_000).psbt
    before = stored.serialize()
    if attack == "tampered output":
        upload = sign(stored, SEED)
        upload.outputs[0].script_pubkey = Script(TestWallet("thief").wpkh)
    elif attack == "changed fee":
        upload = sign(stored, SEED)
        upload.outputs[-1].value -= 50_000
    elif attack == "swapped change":
        upload = sign(stored, SEED)
        upload.outputs[-1].script_pubkey = Script(TestWallet("thief").wpkh)
    elif attack == "extra foreign input":
        other = build(rpc, spec, funded, amount=1_000_000, select=False)
        upload = PSBT.parse(stored.serialize())
        upload.inputs.append(other.psbt.inputs[0])
    elif attack == "signature over another transaction":
        other = sign(build(rpc, spec, funded, amount=8_000_000).psbt, SEED)
        upload = PSBT.parse(stored.serialize())
        for ours, theirs in zip(upload.inputs, other.inputs):
            ours.partial_sigs.update(theirs.partial_sigs)
    elif attack == "non-ALL sighash":
        upload = sign(stored, SEED, sighash=SIGHASH.ALL | SIGHASH.ANYONECANPAY)
    elif attack == "lying witness_utxo":
        upload = sign(stored, SEED)
        real = upload.inputs[0].witness_utxo
        upload.inputs[0].witness_utxo = TransactionOutput(real.value + 1_000_000, real.script_pubkey)
    else:   # a signature by a key outside the policy, at the same derivation
        stranger = bip32.HDKey.from_seed(b"\x42" * 32, version=NETWORKS["regtest"]["xprv"])
        upload = PSBT.parse(stored.serialize())
        for scope in upload.inputs:
            path = next(iter(scope.bip32_derivations.values()))
            key = stranger.derive(path.derivation)
            digest = upload.sighash_segwit(upload.inputs.index(scope), scope.witness_script,
                                           scope.witness_utxo.value, SIGHASH.ALL)
            scope.partial_sigs[key.key.get_public_key()] = key.key.sign(digest).serialize() + bytes([SIGHASH.ALL])
    with pytest.raises(SignatureError, match=message):
        merge_upload(stored, decode_psbt(upload.serialize()))
    assert stored.serialize() == before


def test_coin_selection_prefers_changeless_and_never_overspends():
    coins = [Candidate(f"{i:064x}:0", v, 104.5) for i, v in enumerate([100_000, 250_000, 50_000, 1_000_000])]
    exact = select_coins(coins, 349_000, fee_rate=2, base_vbytes=53, change_vbytes=43, change_spend_vbytes=105)
    assert exact.algorithm == "bnb" and exact.change == 0
    assert sum(c.value for c in exact.coins) - 349_000 == exact.fee and exact.fee < 1_500
    big = select_coins(coins, 600_000, fee_rate=2, base_vbytes=53, change_vbytes=43, change_spend_vbytes=105)
    assert sum(c.value for c in big.coins) == 600_000 + big.fee + big.change and big.change > 0
    with pytest.raises(InsufficientFunds):
        select_coins(coins, 2_000_000, fee_rate=2, base_vbytes=53, change_vbytes=43, change_spend_vbytes=105)


def test_sweep_pays_everything_but_the_fee(rpc, spec, funded):
    coins, _ = funded
    built = build(rpc, spec, funded, sweep=True)
    assert built.change == 0 and len(built.psbt.outputs) == 1
    assert built.psbt.tx.vout[0].value == sum(c.value for c in coins) - built.fee


def test_psbt_version_2_round_trip(rpc, wallet, spec):
    coin = mine_coins(rpc, wallet, 1)[0]
    spk = spec.embit(0).derive(9).script_pubkey().data
    txid = rpc.sendrawtransaction(wallet.sign([coin], [(spk, 9_000_000), (wallet.wpkh, coin.value - 9_002_000)]))
    rpc.generatetoaddress(1, OTHER.address())
    own = ([Coin(txid, 0, 9_000_000, 0, 9, spk)], {txid: bytes.fromhex(rpc.getrawtransaction(txid))})
    built = build(rpc, spec, own, amount=3_000_000, version=2)
    stored = built.psbt
    assert stored.version == 2 and stored.serialize()[5:7] != b"\x01\x00"   # no PSBT_GLOBAL_UNSIGNED_TX
    reparsed = decode_psbt(stored.to_string())
    assert reparsed.version == 2 and reparsed.tx.serialize() == stored.tx.serialize()
    merged = merge_upload(stored, decode_psbt(sign(stored, SEED + 1).serialize()))
    merged = merge_upload(merged.psbt, decode_psbt(sign(stored, SEED + 2).serialize()))
    assert is_complete(merged.psbt, 2)
    assert rpc.testmempoolaccept([finalize(merged.psbt, 2).hex()])[0]["allowed"] is True


TR_SEED = 830


def test_taproot_policy_spend_end_to_end_and_attacks(rpc, wallet):
    spec = build_policy("tr-sortedmulti_a", 2, hd_keys(3, seed_base=TR_SEED))
    coin = mine_coins(rpc, wallet, 1)[0]
    outputs = [(spec.embit(0).derive(i).script_pubkey().data, 20_000_000) for i in range(2)]
    txid = rpc.sendrawtransaction(wallet.sign([coin], outputs + [(wallet.wpkh, coin.value - 40_002_000)]))
    rpc.generatetoaddress(1, OTHER.address())
    coins = [Coin(txid, i, 20_000_000, 0, i, outputs[i][0]) for i in range(2)]
    built = build_spend(spec, coins, [(OTHER.wpkh, 30_000_000)], fee_rate=2,
                        change=(0, spec.embit(1).derive(0).script_pubkey().data),
                        previous_txs={txid: bytes.fromhex(rpc.getrawtransaction(txid))}, locktime=rpc.getblockcount())
    stored = built.psbt
    assert all(s.taproot_scripts and s.taproot_internal_key and len(s.taproot_bip32_derivations) == 3
               for s in stored.inputs)
    # attacks first: a non-DEFAULT/ALL sighash, and a key outside the policy
    with pytest.raises(SignatureError, match="sighash"):
        merge_upload(stored, decode_psbt(sign(stored, TR_SEED, sighash=SIGHASH.ALL | SIGHASH.ANYONECANPAY).serialize()))
    foreign = PSBT.parse(stored.serialize())
    for scope in foreign.inputs:       # a stranger claims a policy key's slot with its own signature
        (pub, (leaves, path)), = list(scope.taproot_bip32_derivations.items())[:1]
        scope.taproot_sigs[(pub, leaves[0])] = bytes(64)
    with pytest.raises(SignatureError, match="does not verify"):
        merge_upload(stored, decode_psbt(foreign.serialize()))
    first = merge_upload(stored, decode_psbt(sign(stored, TR_SEED + 2).serialize()))
    done = merge_upload(first.psbt, decode_psbt(sign(stored, TR_SEED).serialize()))
    assert is_complete(done.psbt, 2)
    raw = finalize(done.psbt, 2).hex()
    assert rpc.testmempoolaccept([raw])[0]["allowed"] is True
    spent = rpc.sendrawtransaction(raw)
    rpc.generatetoaddress(1, OTHER.address())
    assert rpc.getrawtransaction(spent, True)["confirmations"] == 1
    vsize = rpc.getrawtransaction(spent, True)["vsize"]
    assert vsize <= built.vsize      # the estimate never undershoots the real size


REC_SEED = 860


def _fund(rpc, wallet, spec, count=1, value=15_000_000):
    coin = mine_coins(rpc, wallet, 1)[0]
    outputs = [(spec.embit(0).derive(i).script_pubkey().data, value) for i in range(count)]
    txid = rpc.sendrawtransaction(wallet.sign([coin], outputs + [(wallet.wpkh, coin.value - value * count - 2_000)]))
    rpc.generatetoaddress(1, OTHER.address())
    return [Coin(txid, i, value, 0, i, outputs[i][0]) for i in range(count)], {txid: bytes.fromhex(rpc.getrawtransaction(txid))}


def test_recovery_policy_spends_through_its_quorum(rpc, wallet):
    keys = hd_keys(4, seed_base=REC_SEED)
    spec = build_policy("wsh-recovery", 2, keys[:3], recovery_keys=keys[3:], recovery_after=144)
    coins, previous = _fund(rpc, wallet, spec)
    stored = build_spend(spec, coins, [(OTHER.wpkh, 5_000_000)], fee_rate=2,
                         change=(0, spec.embit(1).derive(0).script_pubkey().data), previous_txs=previous,
                         locktime=rpc.getblockcount()).psbt
    done = merge_upload(stored, decode_psbt(sign(stored, REC_SEED + 1).serialize()))
    done = merge_upload(done.psbt, decode_psbt(sign(stored, REC_SEED + 2).serialize()))
    raw = finalize(done.psbt, 2).hex()
    assert rpc.testmempoolaccept([raw])[0]["allowed"] is True


@pytest.mark.skipif(not __import__("os").environ.get("BITCOIND"), reason="needs Bitcoin Core (BITCOIND=...)")
def test_bitcoin_core_signs_the_toolkits_psbt(rpc, wallet, spec):
    """Interoperability: Bitcoin Core's descriptorprocesspsbt, given two devices' private descriptors,
    signs the toolkit's PSBT, and the coordinator accepts, finalizes and broadcasts the result."""
    coins, previous = _fund(rpc, wallet, spec)
    stored = build_spend(spec, coins, [(OTHER.wpkh, 5_000_000)], fee_rate=2,
                         change=(0, spec.embit(1).derive(0).script_pubkey().data), previous_txs=previous,
                         locktime=rpc.getblockcount()).psbt
    merged = stored
    for n in (SEED, SEED + 1):
        root = device(n)
        private = spec.descriptor(0).split("#")[0]
        public = str(spec.keys[n - SEED])
        account = root.derive("m/48h/1h/0h/2h")
        private = private.replace(public.split("]")[1], account.to_base58(NETWORKS["regtest"]["xprv"])).replace("/<0;1>/*", "/0/*")
        checksum = rpc.getdescriptorinfo(private)["checksum"]      # of the private form, as given
        result = rpc.descriptorprocesspsbt(stored.to_string(), [{"desc": f"{private}#{checksum}", "range": [0, 10]}],
                                           "ALL", True, False)
        merged = merge_upload(merged, decode_psbt(result["psbt"])).psbt
    assert is_complete(merged, 2)
    assert rpc.testmempoolaccept([finalize(merged, 2).hex()])[0]["allowed"] is True
