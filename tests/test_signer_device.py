"""The reference signer as a device, on real regtest coins: three simulated signers' BIP-48 keys make a
wsh(sortedmulti(2, ...)) wallet, funded on the embedded node; each device registers it after its own checks,
shows its addresses, signs BIP-322 messages, and signs PSBTs only after proving every fact it relies on and
under its own policy (Coldcard-HSM style, with a hash-chained decision log). What two devices sign is
finalized and handed to the node, which is the judge independent of the coordinator and of the signer.
The same devices are driven through `custody-signer simulate` processes and HWI (library and command line),
and upgraded with signed firmware images.

Most tests use the devices in-process; policy tests use a copy of signer 0 (same seed and registered wallet,
no policy, counters or log yet) so that each starts from a clean policy state."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import nacl.signing
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec as cec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature, Prehashed
from embit import bip32, compact
from embit.descriptor import Descriptor
from embit.networks import NETWORKS
from embit.psbt import DerivationPath, PSBT
from embit.script import p2wpkh, Script, Witness
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput
from hwilib import commands
from hwilib.common import Chain
from hwilib.errors import DeviceFailureError

from custody.bitcoin import bip322, signatures
from custody_signer import cli, firmware, protocol
from custody_signer.device import Device, DeviceError, SELF_TEST_MAGIC
from custody_signer.hsm import check_policy, entry_hash, PolicyError, verify_log
from custody_signer.protocol import Approval, MODEL, policy_id, registration_message
from custody_signer.simulator import call, spawn
from custody_signer.wallets import MAX_INDEX
from regtest.testwallet import TestWallet

from .approval_keys import carry, ed25519_approval, spend_message
from .conftest import mine_coins
from .support import stop

BTC = 100_000_000
ACCOUNT = "m/48h/1h/0h/2h"                    # BIP-48, regtest coin type, account 0, native segwit
PAY, FEE = 40_000_000, 2_000
PAYEE = TestWallet("signer-device payee")
THIEF = TestWallet("signer-device thief")
CURVE_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
PERMISSIVE = {"approvers": {}, "rules": [{"wallet": "vault", "max_amount": 10 * BTC}]}
APPROVERS = {name: nacl.signing.SigningKey(hashlib.sha256(f"approver {name}".encode()).digest())
             for name in ("alice", "bob", "carol")}
MALLORY = nacl.signing.SigningKey(hashlib.sha256(b"not an approver").digest())
RELEASE_KEYS = protocol.test_release_keys(3)
BIN = Path(sys.executable).parent


def address(spk: bytes) -> str:
    return Script(spk).address(NETWORKS["regtest"])


def key_expression(device: Device, suffix: str = "/<0;1>/*") -> str:
    return f"[{device.fingerprint}/48h/1h/0h/2h]{device.xpub(ACCOUNT)}{suffix}"


def node_addresses(rpc, descriptor: str, index_range: list[int]) -> list[list[str]]:
    """What the node derives for a <0;1> descriptor: [receive addresses, change addresses]."""
    checksum = rpc.getdescriptorinfo(descriptor)["checksum"]
    return rpc.deriveaddresses(f"{descriptor}#{checksum}", index_range)


# -- the funded vault ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Coin:
    prev: Transaction          # the funding transaction, as mined
    vout: int
    index: int                 # the wallet's index holding it
    branch: int = 0            # 0 receive, 1 change

    @property
    def value(self) -> int:
        return self.prev.vout[self.vout].value


@dataclass
class Vault:
    devices: list[Device]
    descriptor: str
    unspent: list[Coin]        # coins a test may spend on chain (each at most once: `take`)
    idle: list[Coin]           # never spent on chain, for PSBTs refused or only test-accepted; idle[3] is at index 5
    funding: Transaction
    change_vout: int           # the funder's change in `funding`: a real coin that is not the vault's
    registrations: list[dict] = field(default_factory=list)

    def derive(self, branch: int, index: int):
        return Descriptor.from_string(self.descriptor).derive(index, branch_index=branch)

    def take(self) -> Coin:
        return self.unspent.pop(0)


@pytest.fixture(scope="module")
def mined(rpc, wallet):
    """Coinbases mined first thing: regtest halves the subsidy every 150 blocks."""
    return mine_coins(rpc, wallet, 3)


@pytest.fixture(scope="module")
def vault(tmp_path_factory, rpc, wallet, mined):
    """Three devices, each making its seed; their account keys make the 2-of-3 wallet, registered on every
    device with a permissive policy; ten coins on its first address and one on receive index 5."""
    root = tmp_path_factory.mktemp("signers")
    devices = [Device.create(root / f"signer{i}") for i in range(3)]
    descriptor = f"wsh(sortedmulti(2,{','.join(key_expression(d) for d in devices)}))"
    registrations = [d.register("vault", descriptor) for d in devices]
    for d in devices:
        d.hsm.install(PERMISSIVE)
    parsed = Descriptor.from_string(descriptor)
    first, fifth = parsed.derive(0, branch_index=0), parsed.derive(5, branch_index=0)
    outputs = [(first.script_pubkey().data, BTC)] * 10 + [(fifth.script_pubkey().data, 2 * BTC)]
    coin = mined[0]
    txid = rpc.sendrawtransaction(wallet.sign([coin], outputs + [(wallet.wpkh, coin.value - 12 * BTC - 5_000)]))
    rpc.generatetoaddress(1, TestWallet("miner").address())
    funding = Transaction.parse(bytes.fromhex(rpc.getrawtransaction(txid)))
    coins = [Coin(funding, n, 0) for n in range(10)] + [Coin(funding, 10, 5)]
    return Vault(devices, descriptor, unspent=coins[:7], idle=coins[7:], funding=funding,
                 change_vout=11, registrations=registrations)


def derivations(derived) -> dict:
    return {k.get_public_key(): DerivationPath(k.origin.fingerprint, k.origin.derivation) for k in derived.keys}


def spend(vault: Vault, *coins: Coin, pay: int = PAY, to: bytes = PAYEE.wpkh, fee: int = FEE,
          change_index: int = 0) -> PSBT:
    """What an honest coordinator builds: the coins with their previous transactions, amounts, witness
    scripts and all three keys' derivations; a payment and change back to the wallet, with derivations."""
    change = vault.derive(1, change_index)
    tx = Transaction(version=2, vin=[TransactionInput(c.prev.txid(), c.vout, sequence=0xFFFFFFFD) for c in coins],
                     vout=[TransactionOutput(pay, Script(to)),
                           TransactionOutput(sum(c.value for c in coins) - pay - fee, change.script_pubkey())])
    psbt = PSBT(tx, {})                  # embit's default for the global fields is one shared dict
    for scope, coin in zip(psbt.inputs, coins):
        derived = vault.derive(coin.branch, coin.index)
        scope.non_witness_utxo = coin.prev
        scope.witness_utxo = coin.prev.vout[coin.vout]
        scope.witness_script = derived.witness_script()
        scope.bip32_derivations.update(derivations(derived))
    psbt.outputs[1].bip32_derivations.update(derivations(change))
    return psbt


def cosign(psbt: PSBT, *devices: Device) -> PSBT:
    """Each device signs the PSBT as the coordinator holds it; their partial signatures are collected."""
    for device in devices:
        signed = PSBT.from_string(device.sign_psbt(psbt.to_string()))
        for scope, theirs in zip(psbt.inputs, signed.inputs):
            scope.partial_sigs.update(theirs.partial_sigs)
    return psbt


def accepted(rpc, psbt: PSBT) -> dict:
    [result] = rpc.testmempoolaccept([signatures.finalize(psbt, 2).hex()])
    return result


def refused(device: Device, psbt: PSBT, message: str) -> None:
    """The device refuses with `message`, before its policy: nothing is logged or counted."""
    log = device.hsm.log()
    with pytest.raises(DeviceError, match=message):
        device.sign_psbt(psbt.to_string())
    assert device.hsm.log() == log


@pytest.fixture
def device(vault, tmp_path):
    """Signer 0 as it left the key ceremony (its seed, firmware and the registered vault) with no signing
    policy, velocity counters or decision log yet."""
    state = tmp_path / "signer0"
    shutil.copytree(vault.devices[0].state, state, ignore=shutil.ignore_patterns("hsm_*", "screen.log"))
    return Device(state)


def approve(psbt: PSBT, *names: str, policy: str) -> PSBT:
    """Approvers' ed25519 signatures over the spend (policy id, txid, outputs with change at 1, fee), carried
    as proprietary global PSBT fields."""
    message = spend_message(psbt, policy, change=(1,))
    return carry(psbt, *(ed25519_approval(MALLORY if name == "mallory" else APPROVERS[name], message)
                         for name in names))


def vault_policy(vault: Vault) -> str:
    """The policy id the coordinator computes for the vault, which approvers sign."""
    return policy_id("vault", vault.descriptor)


def approver_keys(*names: str) -> dict:
    return {name: APPROVERS[name].verify_key.encode().hex() for name in names}


# -- the honest path ----------------------------------------------------------------------------------------
def test_two_devices_sign_and_the_node_mines_the_spend(rpc, vault):
    coin = vault.take()
    psbt = cosign(spend(vault, coin), vault.devices[0], vault.devices[2])
    assert len(psbt.inputs[0].partial_sigs) == 2
    txid = rpc.sendrawtransaction(signatures.finalize(psbt, 2).hex())
    rpc.generatetoaddress(1, TestWallet("miner").address())
    confirmed = rpc.getrawtransaction(txid, True)
    assert confirmed["confirmations"] == 1
    assert [round(o["value"] * BTC) for o in confirmed["vout"]] == [PAY, BTC - PAY - FEE]
    assert rpc.gettxout(coin.prev.txid().hex(), coin.vout) is None          # the vault's coin is spent


def test_the_change_comes_back_as_a_coin_the_devices_spend(rpc, vault):
    first = cosign(spend(vault, vault.take(), change_index=7), vault.devices[1], vault.devices[2])
    txid = rpc.sendrawtransaction(signatures.finalize(first, 2).hex())
    rpc.generatetoaddress(1, TestWallet("miner").address())
    change = Coin(Transaction.parse(bytes.fromhex(rpc.getrawtransaction(txid))), 1, 7, branch=1)
    assert address(change.prev.vout[1].script_pubkey.data) == vault.devices[0].display_address("vault", 1, 7)
    second = cosign(spend(vault, change, pay=10_000_000, change_index=8), vault.devices[0], vault.devices[1])
    rpc.sendrawtransaction(signatures.finalize(second, 2).hex())
    rpc.generatetoaddress(1, TestWallet("miner").address())
    assert rpc.gettxout(txid, 1) is None and rpc.gettxout(second.tx.txid().hex(), 1)["confirmations"] == 1


def test_a_spend_of_coins_at_two_indexes_is_accepted(rpc, vault):
    psbt = cosign(spend(vault, vault.idle[0], vault.idle[3], pay=2 * BTC), vault.devices[1], vault.devices[2])
    assert accepted(rpc, psbt)["allowed"]


def test_one_signature_is_not_enough(rpc, vault):
    psbt = cosign(spend(vault, vault.idle[0]), vault.devices[1])
    with pytest.raises(signatures.SignatureError, match="1 of 2 signatures"):
        signatures.finalize(psbt, 2)
    [signature] = psbt.inputs[0].partial_sigs.values()
    tx = psbt.tx                                         # a witness with one signature: the node says no
    tx.vin[0].witness = Witness([b"", signature, psbt.inputs[0].witness_script.data])
    [result] = rpc.testmempoolaccept([tx.serialize().hex()])
    assert not result["allowed"]


def test_an_explicit_sighash_all_is_signed(rpc, vault):
    psbt = spend(vault, vault.idle[0])
    psbt.inputs[0].sighash_type = SIGHASH.ALL
    assert accepted(rpc, cosign(psbt, vault.devices[0], vault.devices[1]))["allowed"]


def test_change_at_the_highest_trusted_index_is_signed(rpc, vault):
    psbt = spend(vault, vault.idle[0], change_index=MAX_INDEX)
    assert accepted(rpc, cosign(psbt, vault.devices[0], vault.devices[1]))["allowed"]


def test_an_output_without_an_address_is_shown_and_signed(rpc, vault):
    """An OP_RETURN output has no address; the device still describes it (it used to crash) and counts it
    as leaving the wallet."""
    psbt = _with_extra_output(spend(vault, vault.idle[0]), TransactionOutput(0, Script(b"\x6a\x05hello")))
    device = vault.devices[0]
    assert accepted(rpc, cosign(psbt, device, vault.devices[1]))["allowed"]
    assert "script:6a0568656c6c6f" in device.hsm.log()[-1]["destinations"]


def _with_extra_output(psbt: PSBT, out: TransactionOutput) -> PSBT:
    extended = PSBT(Transaction(version=2, vin=psbt.tx.vin, vout=[*psbt.tx.vout, out]), {})
    for theirs, ours in zip(extended.inputs, psbt.inputs):
        theirs.update(ours)
    for theirs, ours in zip(extended.outputs, psbt.outputs):
        theirs.update(ours)
    return extended


# -- registration -------------------------------------------------------------------------------------------
def test_registration_is_accepted_with_what_the_device_shows(rpc, vault):
    receive, _change = node_addresses(rpc, vault.descriptor, [0, 0])
    fingerprints = [d.fingerprint for d in vault.devices]
    for n, (device, result) in enumerate(zip(vault.devices, vault.registrations)):
        assert (result["name"], result["threshold"], result["keys"]) == ("vault", 2, 3)
        assert result["position"] == n + 1                    # its key's place in the descriptor as written
        assert result["first_address"] == receive[0]
        assert [w.name for w in device.wallets()] == ["vault"]
        assert f"2 of 3, this device is key {n + 1}" in (device.state / "screen.log").read_text()
    assert len(set(fingerprints)) == 3                        # three seeds, made on three devices


def test_the_registration_proof_verifies_for_the_devices_account_key(vault):
    for device, result in zip(vault.devices, vault.registrations):
        account = bip32.HDKey.from_string(device.xpub(ACCOUNT))
        spk = p2wpkh(account.key).data
        message = registration_message(result["policy_id"])
        assert result["proof_address"] == address(spk)
        assert bip322.verify_simple(spk, message, result["proof"])
        assert not bip322.verify_simple(spk, registration_message("00" * 32), result["proof"])
        other = bip32.HDKey.from_string(vault.devices[(vault.devices.index(device) + 1) % 3].xpub(ACCOUNT))
        assert not bip322.verify_simple(p2wpkh(other.key).data, message, result["proof"])
    assert vault.registrations[0]["policy_id"] == hashlib.sha256(f"vault\n{vault.descriptor}".encode()).hexdigest()


def test_registering_again_is_idempotent_and_a_name_cannot_change_its_wallet(vault):
    device = vault.devices[1]
    assert device.register("vault", vault.descriptor)["policy_id"] == vault.registrations[1]["policy_id"]
    other = vault.descriptor.replace("sortedmulti(2,", "sortedmulti(1,")
    with pytest.raises(DeviceError, match="a different wallet is already registered as 'vault'"):
        device.register("vault", other)
    assert [w.name for w in device.wallets()] == ["vault"]


@pytest.fixture(scope="module")
def keys(vault):
    """Key expressions for descriptors the device must refuse: its own, its cosigners', a stranger's."""
    me, two, three = vault.devices
    stranger_root = bip32.HDKey.from_seed(b"\x09" * 32, version=NETWORKS["regtest"]["xprv"])
    stranger = stranger_root.derive(ACCOUNT).to_public()
    fingerprint = stranger_root.my_fingerprint.hex()
    return SimpleNamespace(
        me=key_expression(me), two=key_expression(two), three=key_expression(three),
        impostor=f"[{me.fingerprint}/48h/1h/0h/2h]{stranger.to_string(NETWORKS['regtest']['xpub'])}/<0;1>/*",
        me_elsewhere=f"[{me.fingerprint}/48h/1h/1h/2h]{me.xpub(ACCOUNT)}/<0;1>/*",
        stranger=f"[{fingerprint}/48h/1h/0h/2h]{stranger.to_string(NETWORKS['regtest']['xpub'])}/<0;1>/*",
        mainnet=f"[{fingerprint}/48h/1h/0h/2h]{stranger.to_string(NETWORKS['main']['xpub'])}/<0;1>/*",
        me_mainnet=key_expression(me).replace(me.xpub(ACCOUNT), bip32.HDKey.from_string(me.xpub(ACCOUNT))
                                              .to_string(NETWORKS["main"]["xpub"])),
        three_bare=f"{three.xpub(ACCOUNT)}/<0;1>/*")


NOT_WSH_MULTI = r"this device registers wsh\(sortedmulti\(\.\.\.\)\) or wsh\(multi\(\.\.\.\)\) only"


@pytest.mark.parametrize("make, message", [
    pytest.param(lambda k: f"wsh(sortedmulti(2,{k.impostor},{k.two},{k.three}))",
                 "key 1 claims this device's fingerprint but is not the key it holds", id="swapped xpub"),
    pytest.param(lambda k: f"wsh(sortedmulti(2,{k.me_elsewhere},{k.two},{k.three}))",
                 "key 1 claims this device's fingerprint but is not the key it holds", id="own key, wrong path"),
    pytest.param(lambda k: f"wsh(sortedmulti(2,{k.stranger},{k.two},{k.three}))",
                 "this device's key is not in the policy", id="without this device"),
    pytest.param(lambda k: f"wsh(sortedmulti(2,{k.me},{k.two},{k.two}))", "key 3 appears twice", id="cosigner twice"),
    pytest.param(lambda k: f"wsh(sortedmulti(2,{k.me},{k.me},{k.three}))", "key 2 appears twice", id="itself twice"),
    pytest.param(lambda k: f"wsh(sortedmulti(2,{k.me},{k.two},{k.mainnet}))", "key 3 is not for regtest",
                 id="mainnet key"),
    pytest.param(lambda k: f"wsh(sortedmulti(2,{k.me_mainnet},{k.two},{k.three}))", "key 1 is not for regtest",
                 id="own key as mainnet xpub"),
    pytest.param(lambda k: f"tr({k.two},sortedmulti_a(2,{k.me},{k.three}))", NOT_WSH_MULTI, id="taproot"),
    pytest.param(lambda k: f"wsh(pk({k.me}))", NOT_WSH_MULTI, id="wsh single key"),
    pytest.param(lambda k: f"wpkh({k.me})", NOT_WSH_MULTI, id="wpkh"),
    pytest.param(lambda k: f"sh(wsh(sortedmulti(2,{k.me},{k.two},{k.three})))", NOT_WSH_MULTI, id="sh-wsh"),
    pytest.param(lambda k: f"sh(sortedmulti(2,{k.me},{k.two},{k.three}))", NOT_WSH_MULTI, id="legacy sh"),
    pytest.param(lambda k: f"wsh(sortedmulti(2,{k.me.replace('<0;1>', '0')},{k.two},{k.three}))",
                 "key 1 must end in /<0;1>/", id="receive branch only"),
    pytest.param(lambda k: f"wsh(sortedmulti(2,{k.me},{k.two},{k.three_bare}))", "key 3 has no key origin",
                 id="no origin"),
    pytest.param(lambda k: "wsh(sortedmulti(2,nonsense))", "not a descriptor this device reads", id="garbage"),
])
def test_registration_refusals(vault, keys, make, message):
    device = vault.devices[0]
    with pytest.raises(DeviceError, match=message):
        device.register("bad", make(keys))
    assert [w.name for w in device.wallets()] == ["vault"]


def test_an_unsorted_multi_wallet_is_registered_too(rpc, vault, device):
    """wsh(multi(...)) keeps the keys in the order written: another wallet, with its own addresses."""
    multi = vault.descriptor.replace("sortedmulti(", "multi(")
    result = device.register("vault-multi", multi)
    receive = node_addresses(rpc, multi, [0, 19])[0]
    assert result["first_address"] == receive[0]
    assert [device.display_address("vault-multi", 0, i) for i in range(20)] == receive
    # at any one index the written order may happen to be the sorted one; over twenty it is not
    assert receive != [device.display_address("vault", 0, i) for i in range(20)]
    assert [w.name for w in device.wallets()] == ["vault", "vault-multi"]


def test_a_wallet_name_must_be_printable(vault):
    with pytest.raises(DeviceError, match="1 to 64 printable"):
        vault.devices[0].register("vault\nlabel", vault.descriptor)


# -- addresses and messages ---------------------------------------------------------------------------------
def test_the_device_shows_the_policys_addresses(rpc, vault):
    receive, change = node_addresses(rpc, vault.descriptor, [0, 5])
    for device in vault.devices:
        assert [device.display_address("vault", 0, i) for i in range(6)] == receive
        assert [device.display_address("vault", 1, i) for i in range(6)] == change
    screen = (vault.devices[2].state / "screen.log").read_text()
    assert f"vault receive #5\n{receive[5]}" in screen and f"vault change #3\n{change[3]}" in screen
    assert vault.devices[0].display_address("vault", 0, 0) == address(vault.funding.vout[0].script_pubkey.data)


@pytest.mark.parametrize("name, branch, index, message", [
    ("vault", 0, MAX_INDEX + 1, "up to index 10000"),
    ("vault", 2, 0, "receive \\(0\\) or change \\(1\\)"),
    ("vault", 0, -1, "up to index"),
    ("treasury", 0, 0, "no wallet named 'treasury'"),
])
def test_addresses_outside_the_wallet_are_not_shown(vault, name, branch, index, message):
    with pytest.raises(DeviceError, match=message):
        vault.devices[0].display_address(name, branch, index)


def test_bip322_message_signatures(vault):
    device = vault.devices[1]
    message = b"custody audit 2024-Q4: we control this key"
    result = device.sign_message(message, ACCOUNT)
    account = bip32.HDKey.from_string(device.xpub(ACCOUNT))
    assert result["address"] == address(p2wpkh(account.key).data)
    assert bip322.verify_address(result["address"], message, result["signature"], "regtest")
    assert not bip322.verify_address(result["address"], message + b".", result["signature"], "regtest")
    other = device.sign_message(message, ACCOUNT + "/0/0")
    assert other["address"] != result["address"]
    assert bip322.verify_address(other["address"], message, other["signature"], "regtest")
    assert not bip322.verify_address(result["address"], message, other["signature"], "regtest")
    assert device.sign_message(message, ACCOUNT) == result              # RFC 6979: the same signature again
    with pytest.raises(DeviceError, match="not a derivation path"):
        device.sign_message(message, "m/48h/x")


# -- attacks on signing: each refused by the device itself ------------------------------------------------
def test_the_unaltered_psbt_is_signed_and_accepted(rpc, vault):
    """The control for every attack below: the same spend, untouched, is good."""
    assert accepted(rpc, cosign(spend(vault, vault.idle[1]), vault.devices[0], vault.devices[1]))["allowed"]


def test_change_paid_to_a_thief_under_the_wallets_derivations_is_refused(vault):
    psbt = spend(vault, vault.idle[1])
    psbt.outputs[1].script_pubkey = Script(THIEF.wpkh)
    refused(vault.devices[0], psbt, "output 1 claims to be change but does not derive from wallet 'vault'")


def test_change_whose_derivations_name_another_index_is_refused(vault):
    psbt = spend(vault, vault.idle[1], change_index=3)
    psbt.outputs[1].bip32_derivations.clear()
    psbt.outputs[1].bip32_derivations.update(derivations(vault.derive(1, 4)))
    refused(vault.devices[0], psbt, "claims to be change but does not derive")


def test_change_beyond_the_index_bound_is_refused(vault):
    refused(vault.devices[0], spend(vault, vault.idle[1], change_index=MAX_INDEX + 1),
            f"does not derive from wallet 'vault' within index {MAX_INDEX}")


@pytest.mark.parametrize("lie", [+5, -5])
def test_a_witness_utxo_amount_off_by_five_sats_is_refused(vault, lie):
    psbt = spend(vault, vault.idle[1])
    true = psbt.inputs[0].witness_utxo
    psbt.inputs[0].witness_utxo = TransactionOutput(true.value + lie, true.script_pubkey)
    refused(vault.devices[0], psbt, f"witness_utxo says {BTC + lie} sat, the previous transaction says {BTC} sat")


def test_a_missing_previous_transaction_is_refused(vault):
    psbt = spend(vault, vault.idle[1])
    psbt.inputs[0].non_witness_utxo = None
    refused(vault.devices[0], psbt, "input 0 has no non_witness_utxo")


def test_a_previous_transaction_with_another_txid_is_refused(rpc, vault, mined):
    psbt = spend(vault, vault.idle[1])
    coinbase = Transaction.parse(bytes.fromhex(rpc.getrawtransaction(mined[1].txid)))     # real, but another tx
    psbt.inputs[0].non_witness_utxo = coinbase
    refused(vault.devices[0], psbt, "the previous transaction's txid does not match the outpoint")


@pytest.mark.parametrize("claims_ours", [False, True], ids=["no derivations", "our derivations"])
def test_a_foreign_input_is_refused(vault, claims_ours):
    """A real coin of someone else's (the funder's change) slipped in as a second input; with our
    derivations copied onto it, it still does not re-derive."""
    psbt = _with_extra_input(spend(vault, vault.idle[1]), vault.funding, vault.change_vout)
    if claims_ours:
        psbt.inputs[1].bip32_derivations.update(derivations(vault.derive(0, 0)))
    refused(vault.devices[0], psbt, "input 1 is not a coin of a wallet registered on this device")


def _with_extra_input(psbt: PSBT, prev: Transaction, vout: int) -> PSBT:
    tx = psbt.tx
    extended = PSBT(Transaction(version=2, vin=[*tx.vin, TransactionInput(prev.txid(), vout, sequence=0xFFFFFFFD)],
                                vout=tx.vout), {})
    extended.inputs[0].update(psbt.inputs[0])
    for theirs, ours in zip(extended.outputs, psbt.outputs):
        theirs.update(ours)
    extended.inputs[1].non_witness_utxo = prev
    extended.inputs[1].witness_utxo = prev.vout[vout]
    return extended


def test_the_same_coin_twice_is_refused(vault):
    """Counted twice, one coin would make the inputs look bigger than they are (the fee and what leaves
    the wallet would be misreported); the node would never accept it anyway."""
    coin = vault.idle[1]
    psbt = _with_extra_input(spend(vault, coin), coin.prev, coin.vout)
    psbt.inputs[1].update(psbt.inputs[0])
    refused(vault.devices[0], psbt, "input 1 spends the same coin as input 0")


def test_a_witness_script_that_is_not_the_wallets_is_refused(vault):
    psbt = spend(vault, vault.idle[1])
    psbt.inputs[0].witness_script = vault.derive(0, 1).witness_script()
    refused(vault.devices[0], psbt, "input 0: the witness script is not the wallet's")


@pytest.mark.parametrize("sighash", [SIGHASH.NONE, SIGHASH.SINGLE, SIGHASH.ALL | SIGHASH.ANYONECANPAY,
                                     SIGHASH.NONE | SIGHASH.ANYONECANPAY, SIGHASH.SINGLE | SIGHASH.ANYONECANPAY],
                         ids=["NONE", "SINGLE", "ALL|ANYONECANPAY", "NONE|ANYONECANPAY", "SINGLE|ANYONECANPAY"])
def test_sighash_types_other_than_all_are_refused(vault, sighash):
    psbt = spend(vault, vault.idle[1])
    psbt.inputs[0].sighash_type = sighash
    refused(vault.devices[0], psbt, f"input 0 asks for sighash {sighash}; this device signs SIGHASH_ALL only")


def test_a_fee_above_the_cap_is_refused(vault):
    refused(vault.devices[0], spend(vault, vault.idle[1], fee=6_000_000),
            "fee 6000000 sat is above this device's cap of 5000000 sat")


def test_a_fee_rate_above_the_cap_is_refused(vault):
    refused(vault.devices[0], spend(vault, vault.idle[1], fee=400_000), r"fee rate \d+\.\d sat/vB is above")


def test_outputs_above_the_inputs_are_refused(vault):
    refused(vault.devices[0], spend(vault, vault.idle[1], fee=-1), "exceed the inputs")


def test_a_refusal_through_the_device_leaves_no_signature(vault):
    """The refusal is an error, never a PSBT with some inputs signed."""
    psbt = spend(vault, vault.idle[1], fee=6_000_000)
    with pytest.raises(DeviceError):
        vault.devices[1].sign_psbt(psbt.to_string())
    assert not psbt.inputs[0].partial_sigs


# -- deterministic signatures -------------------------------------------------------------------------------
def _bip143_digest(tx: Transaction, n: int, witness_script: bytes, value: int) -> bytes:
    """BIP-143's signature hash for SIGHASH_ALL, written out with hashlib (not the signer's library)."""
    def dsha(data: bytes) -> bytes:
        return hashlib.sha256(hashlib.sha256(data).digest()).digest()

    def push(data: bytes) -> bytes:
        assert len(data) < 0xFD
        return bytes([len(data)]) + data

    outpoints = [vin.txid[::-1] + vin.vout.to_bytes(4, "little") for vin in tx.vin]
    sequences = [vin.sequence.to_bytes(4, "little") for vin in tx.vin]
    outputs = b"".join(out.value.to_bytes(8, "little") + push(out.script_pubkey.data) for out in tx.vout)
    preimage = (tx.version.to_bytes(4, "little") + dsha(b"".join(outpoints)) + dsha(b"".join(sequences))
                + outpoints[n] + push(witness_script) + value.to_bytes(8, "little") + sequences[n]
                + dsha(outputs) + tx.locktime.to_bytes(4, "little") + SIGHASH.ALL.to_bytes(4, "little"))
    return dsha(preimage)


def _reference_signature(secret: bytes, digest: bytes) -> bytes:
    """RFC 6979 ECDSA over a ready digest by an independent implementation, in Bitcoin's low-S form."""
    key = cec.derive_private_key(int.from_bytes(secret, "big"), cec.SECP256K1())
    r, s = decode_dss_signature(key.sign(digest, cec.ECDSA(Prehashed(hashes.SHA256()), deterministic_signing=True)))
    return encode_dss_signature(r, min(s, CURVE_ORDER - s))


def test_signatures_are_rfc6979_deterministic_and_match_an_independent_signer(rpc, vault):
    """Signing the same PSBT twice gives the same signature: cryptography's RFC 6979 signature of the
    BIP-143 digest (computed here by hand), in low-S form; the node accepts it. When that signature's DER
    is longer than 70 bytes (a high R, in practice), the signer (libsecp256k1 through embit) retries with
    extra nonce data, which cryptography cannot reproduce: such signatures must be shorter and valid.
    (The length rule, not R alone, decides: a high R with a short S is kept, about 1 signature in 500.)"""
    device = vault.devices[0]
    seed = bytes.fromhex((device.state / "seed.hex").read_text())
    root = bip32.HDKey.from_seed(seed, version=NETWORKS["regtest"]["xprv"])
    coin = vault.idle[2]
    equal, ground = [], 0
    for fee in range(FEE, FEE + 40):
        psbt = spend(vault, coin, fee=fee)
        first = PSBT.from_string(device.sign_psbt(psbt.to_string()))
        second = PSBT.from_string(device.sign_psbt(psbt.to_string()))
        [(pub, sig)] = first.inputs[0].partial_sigs.items()
        assert second.inputs[0].partial_sigs[pub] == sig and sig[-1] == SIGHASH.ALL
        path = next(d.derivation for p, d in psbt.inputs[0].bip32_derivations.items() if p.sec() == pub.sec())
        secret = root.derive(path).key.secret
        digest = _bip143_digest(psbt.tx, 0, psbt.inputs[0].witness_script.data, coin.value)
        reference = _reference_signature(secret, digest)
        if len(reference) <= 70:
            assert sig[:-1] == reference
            equal.append(psbt)
        else:
            ground += 1
            assert len(sig[:-1]) <= 70
            public = cec.derive_private_key(int.from_bytes(secret, "big"), cec.SECP256K1()).public_key()
            public.verify(sig[:-1], digest, cec.ECDSA(Prehashed(hashes.SHA256())))
        if len(equal) >= 4 and ground >= 1:
            break
    assert len(equal) >= 4 and ground >= 1
    assert accepted(rpc, cosign(equal[0], device, vault.devices[2]))["allowed"]


# -- the policy engine --------------------------------------------------------------------------------------
def test_without_a_policy_nothing_is_signed(vault, device):
    with pytest.raises(DeviceError, match="no policy is installed: nothing is signed"):
        device.sign_psbt(spend(vault, vault.idle[0]).to_string())
    [entry] = device.hsm.log()
    assert entry["event"] == "refuse" and entry["rule"] is None


def test_max_amount_counts_what_leaves_the_wallet_not_change(vault, device):
    device.hsm.install({"approvers": {}, "rules": [{"wallet": "vault", "max_amount": 50_000_000}]})
    device.sign_psbt(spend(vault, vault.idle[0], pay=40_000_000).to_string())    # 0.6 BTC of change stays
    device.sign_psbt(spend(vault, vault.idle[0], pay=50_000_000).to_string())
    with pytest.raises(DeviceError, match="rule 0: 50000001 sat is over its maximum of 50000000 sat"):
        device.sign_psbt(spend(vault, vault.idle[0], pay=50_000_001).to_string())
    assert [e["event"] for e in device.hsm.log()[1:]] == ["sign", "sign", "refuse"]


def test_a_rule_for_another_wallet_does_not_apply(vault, device):
    device.hsm.install({"approvers": {}, "rules": [{"wallet": "treasury"}]})
    with pytest.raises(DeviceError, match="rule 0: for wallet 'treasury', not 'vault'"):
        device.sign_psbt(spend(vault, vault.idle[0]).to_string())


def test_velocity_is_counted_on_the_device_and_survives_a_restart(vault, device):
    now = 1_700_000_000.0
    policy = {"approvers": {}, "rules": [{"wallet": "vault", "per_period": {"minutes": 60, "max_amount": 70_000_000}}]}
    device = Device(device.state, clock=lambda: now)
    device.hsm.install(policy)
    device.sign_psbt(spend(vault, vault.idle[0], pay=40_000_000).to_string())
    restarted = Device(device.state, clock=lambda: now + 60)                  # power cycled a minute later
    with pytest.raises(DeviceError, match="40000000 sat already spent in the last 60 min; 40000000 more exceeds"):
        restarted.sign_psbt(spend(vault, vault.idle[1], pay=40_000_000).to_string())
    restarted.sign_psbt(spend(vault, vault.idle[1], pay=30_000_000).to_string())   # the refusal was not counted
    with pytest.raises(DeviceError, match="70000000 sat already spent"):
        Device(device.state, clock=lambda: now + 120).sign_psbt(spend(vault, vault.idle[2], pay=1).to_string())
    later = Device(device.state, clock=lambda: now + 61 * 60)                  # the first spend left the window
    later.sign_psbt(spend(vault, vault.idle[2], pay=40_000_000).to_string())


def test_the_whitelist_binds_every_payment_but_not_change(vault, device):
    device.hsm.install({"approvers": {}, "rules": [{"wallet": "vault", "whitelist": [address(PAYEE.wpkh)]}]})
    device.sign_psbt(spend(vault, vault.idle[0]).to_string())
    with pytest.raises(DeviceError, match=f"{address(THIEF.wpkh)} is not on its allow-list"):
        device.sign_psbt(spend(vault, vault.idle[0], to=THIEF.wpkh).to_string())
    memo = _with_extra_output(spend(vault, vault.idle[0]), TransactionOutput(0, Script(b"\x6a\x02hi")))
    with pytest.raises(DeviceError, match="script:6a026869 is not on its allow-list"):
        device.sign_psbt(memo.to_string())


APPROVAL_POLICY = {"approvers": approver_keys("alice", "bob", "carol"),
                   "rules": [{"wallet": "vault", "min_approvers": 2, "approvers": ["alice", "bob"]}]}


@pytest.mark.parametrize("names, allowed", [
    (("alice", "bob"), True),
    (("alice", "bob", "carol"), True),
    (("bob",), False),
    ((), False),
    (("alice", "carol"), False),                 # carol is an approver, but not one this rule counts
    (("alice", "mallory"), False),               # a valid signature by a key the policy does not know
])
def test_min_approvers_counts_distinct_valid_approvers_of_the_rule(vault, device, names, allowed):
    device.hsm.install(APPROVAL_POLICY)
    psbt = approve(spend(vault, vault.idle[0]), *names, policy=vault_policy(vault))
    if allowed:
        signed = PSBT.from_string(device.sign_psbt(psbt.to_string()))
        assert signed.inputs[0].partial_sigs
    else:
        with pytest.raises(DeviceError, match=r"valid approver signature\(s\), 2 needed"):
            device.sign_psbt(psbt.to_string())


def test_a_key_outside_the_policy_never_counts_as_an_approver(vault, device):
    """A rule without its own list counts every approver of the policy, and only them."""
    device.hsm.install({"approvers": approver_keys("alice", "bob"), "rules": [{"wallet": "vault", "min_approvers": 2}]})
    policy = vault_policy(vault)
    with pytest.raises(DeviceError, match=r"1 valid approver signature\(s\), 2 needed"):
        device.sign_psbt(approve(spend(vault, vault.idle[0]), "alice", "mallory", policy=policy).to_string())
    device.sign_psbt(approve(spend(vault, vault.idle[0]), "alice", "bob", policy=policy).to_string())


def test_an_approval_for_another_transaction_does_not_count(vault, device):
    device.hsm.install(APPROVAL_POLICY)
    approved = approve(spend(vault, vault.idle[0], pay=10_000_000), "alice", "bob", policy=vault_policy(vault))
    replayed = spend(vault, vault.idle[0], pay=90_000_000)
    replayed.unknown.update(approved.unknown)                                # the approvals moved to a bigger spend
    with pytest.raises(DeviceError, match=r"0 valid approver signature\(s\), 2 needed"):
        device.sign_psbt(replayed.to_string())
    device.sign_psbt(approved.to_string())


def test_one_approvers_signature_under_another_approvers_key_does_not_count(vault, device):
    device.hsm.install(APPROVAL_POLICY)
    psbt = approve(spend(vault, vault.idle[0]), "alice", policy=vault_policy(vault))
    [alice] = psbt.unknown.values()
    carry(psbt, Approval("ed25519", APPROVERS["bob"].verify_key.encode(), alice))
    with pytest.raises(DeviceError, match=r"1 valid approver signature\(s\), 2 needed"):
        device.sign_psbt(psbt.to_string())


def test_a_duplicated_approval_is_refused(vault, device):
    """The same approver's field twice: a PSBT with a duplicate key is malformed (BIP-174), so it cannot
    count twice."""
    device.hsm.install(APPROVAL_POLICY)
    psbt = approve(spend(vault, vault.idle[0]), "alice", policy=vault_policy(vault))
    [(key, value)] = psbt.unknown.items()
    pair = compact.to_bytes(len(key)) + key + compact.to_bytes(len(value)) + value
    raw = psbt.serialize()
    assert raw.count(pair) == 1
    doubled = base64.b64encode(raw.replace(pair, pair + pair)).decode()
    with pytest.raises(DeviceError, match="not a PSBT"):
        device.sign_psbt(doubled)


def test_the_first_matching_rule_decides(vault, device):
    device.hsm.install({"approvers": approver_keys("alice"), "rules": [
        {"wallet": "treasury"},
        {"wallet": "vault", "max_amount": 30_000_000, "whitelist": [address(PAYEE.wpkh)]},
        {"wallet": "vault", "max_amount": 60_000_000, "min_approvers": 1},
    ]})
    policy = vault_policy(vault)
    device.sign_psbt(approve(spend(vault, vault.idle[0], pay=20_000_000), "alice", policy=policy).to_string())  # 1, 2
    device.sign_psbt(approve(spend(vault, vault.idle[0], pay=50_000_000), "alice", policy=policy).to_string())  # 2
    with pytest.raises(DeviceError) as refusal:
        device.sign_psbt(spend(vault, vault.idle[0], pay=20_000_000, to=THIEF.wpkh).to_string())
    assert str(refusal.value) == (
        "the signing policy refuses: rule 0: for wallet 'treasury', not 'vault'; "
        f"rule 1: {address(THIEF.wpkh)} is not on its allow-list; "
        "rule 2: 0 valid approver signature(s), 1 needed")
    assert [e["rule"] for e in device.hsm.log()[1:]] == [1, 2, None]


@pytest.mark.parametrize("policy, message", [
    ({"rules": [{"wallet": "vault", "max_btc": 1}]}, "unknown fields \\['max_btc'\\]"),
    ({"approvers": {"alice": "00" * 31}, "rules": []}, "a ed25519 public key is 32 bytes, not 31"),
    ({"approvers": approver_keys("alice"), "rules": [{"min_approvers": 2}]}, "min_approvers exceeds"),
    ({"approvers": approver_keys("alice"), "rules": [{"min_approvers": 1, "approvers": ["bob"]}]},
     "approvers \\['bob'\\] are not registered"),
    ({"rules": [{"max_amount": -1}]}, "max_amount is a whole number"),
    ({"rules": [{"max_amount": 1.5}]}, "max_amount is a whole number"),
    ({"rules": [{"per_period": {"minutes": 0, "max_amount": 1}}]}, "per_period is"),
    ({"rules": [{"per_period": {"minutes": 366 * 24 * 60 + 1, "max_amount": 1}}]}, "at most a year"),
    ({"rules": [{"whitelist": "bcrt1qexample"}]}, "whitelist is a list of addresses"),
    ({"approvers": approver_keys("alice"), "rules": [{"min_approvers": 1, "approvers": "alice"}]},
     "approvers is a list of names"),
    ({"rules": [{"wallet": 7}]}, "wallet is the name"),
    ({"approvers": {**approver_keys("alice"), "alias": approver_keys("alice")["alice"]}, "rules": []},
     "approvers 'alice' and 'alias' share one key"),
    ({"approvers": {}}, "a list of 'rules'"),
    ([{"wallet": "vault"}], "a policy is a JSON object"),
])
def test_a_malformed_policy_is_not_installed(device, policy, message):
    with pytest.raises(PolicyError, match=message):
        device.hsm.install(policy)
    assert device.hsm.policy is None and device.hsm.log() == []


def test_a_policy_file_that_is_not_an_object_is_refused_in_one_line(device, tmp_path, capsys):
    policy_file = tmp_path / "policy.json"
    policy_file.write_text("[]")
    assert cli.main(["hsm-policy", "--state", str(device.state), str(policy_file)]) == 1
    assert capsys.readouterr().err == "custody-signer: error: a policy is a JSON object with 'approvers' and 'rules'\n"


def test_the_policy_is_approved_with_the_command_line(vault, device, tmp_path, capsys):
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(PERMISSIVE))
    assert cli.main(["hsm-policy", "--state", str(device.state), str(policy_file)]) == 0
    assert "policy installed: 1 rule(s), 0 approver(s)" in capsys.readouterr().out
    assert Device(device.state).hsm.policy == check_policy(PERMISSIVE)
    device.sign_psbt(spend(vault, vault.idle[0]).to_string())


# -- the decision log ---------------------------------------------------------------------------------------
def _decisions(vault: Vault, device: Device) -> list[dict]:
    device.hsm.install({"approvers": {}, "rules": [{"wallet": "vault", "max_amount": 50_000_000}]})
    device.sign_psbt(spend(vault, vault.idle[0], pay=10_000_000).to_string())
    with pytest.raises(DeviceError):
        device.sign_psbt(spend(vault, vault.idle[0], pay=60_000_000).to_string())
    device.sign_psbt(spend(vault, vault.idle[1], pay=20_000_000).to_string())
    return device.hsm.log()


def test_the_decision_log_is_a_hash_chain_of_every_decision(vault, device):
    log = _decisions(vault, device)
    assert [e["event"] for e in log] == ["policy installed", "sign", "refuse", "sign"]
    assert [e["seq"] for e in log] == [0, 1, 2, 3]
    assert [e["amount"] for e in log[1:]] == [10_000_000, 60_000_000, 20_000_000]
    assert log[2]["destinations"] == [address(PAYEE.wpkh)] and log[2]["fee"] == FEE
    assert log[1]["txid"] == spend(vault, vault.idle[0], pay=10_000_000).tx.txid().hex()
    assert all(later["prev"] == earlier["hash"] for earlier, later in zip(log, log[1:]))
    assert verify_log(log) is None


def test_an_altered_entry_is_detected(vault, device):
    log = _decisions(vault, device)
    altered = [dict(e) for e in log]
    altered[2]["amount"] = 6_000_000                              # a refusal made to look smaller
    assert verify_log(altered) == "entry 2 is altered or out of place"


def test_an_altered_entry_with_a_recomputed_hash_breaks_the_next_link(vault, device):
    log = _decisions(vault, device)
    altered = [dict(e) for e in log]
    altered[1]["destinations"] = [address(THIEF.wpkh)]
    altered[1]["hash"] = entry_hash(altered[1])
    assert verify_log(altered) == "entry 2 is altered or out of place"


@pytest.mark.parametrize("edit", ["drop first", "drop middle", "swap"])
def test_removed_or_reordered_entries_are_detected(vault, device, edit):
    log = _decisions(vault, device)
    edited = {"drop first": log[1:], "drop middle": log[:2] + log[3:], "swap": [log[0], log[2], log[1], log[3]]}[edit]
    assert verify_log(edited) is not None


def test_the_log_command_checks_the_chain(vault, device, capsys):
    log = _decisions(vault, device)
    assert cli.main(["hsm-log", "--state", str(device.state)]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == log
    lines = (device.state / "hsm_log.jsonl").read_text().splitlines()
    lines[1] = lines[1].replace('"event": "sign"', '"event": "refuse"')
    (device.state / "hsm_log.jsonl").write_text("\n".join(lines) + "\n")
    assert cli.main(["hsm-log", "--state", str(device.state)]) == 1
    assert "the decision log is broken: entry 1 is altered" in capsys.readouterr().err


# -- firmware -----------------------------------------------------------------------------------------------
def image(version: str, *, epoch: int = 2, model: str = MODEL, signers=RELEASE_KEYS[:2],
          payload: bytes | None = None) -> bytes:
    payload = SELF_TEST_MAGIC + f"reference signer {version}\n".encode() if payload is None else payload
    return firmware.build_image(payload, model=model, version=version, epoch=epoch, signers=signers)


@pytest.fixture
def fresh(tmp_path):
    """A device straight from the factory: firmware 1.0.0, security epoch 1."""
    return Device.create(tmp_path / "fresh")


def test_a_newer_signed_image_is_installed_and_runs_after_a_restart(fresh):
    assert fresh.info()["firmware"]["version"] == "1.0.0"
    result = fresh.install_firmware(image("1.1.0", epoch=2))
    assert (result["version"], result["epoch"], result["epoch_counter"]) == ("1.1.0", 2, 2)
    restarted = Device(fresh.state)
    assert restarted.info()["firmware"]["version"] == "1.1.0"
    assert restarted.fingerprint == fresh.fingerprint                   # the seed survives the upgrade
    with pytest.raises(DeviceError, match="version 1.0.5 is not newer than the installed 1.1.0"):
        restarted.install_firmware(image("1.0.5", epoch=2))
    with pytest.raises(DeviceError, match="below the device's anti-rollback counter 2"):
        restarted.install_firmware(image("1.2.0", epoch=1))


def _tampered_payload() -> bytes:
    good = image("1.1.0")
    return good[:-1] + bytes([good[-1] ^ 1])


def _tampered_manifest() -> bytes:
    return image("1.1.0").replace(b'"version":"1.1.0"', b'"version":"1.1.9"')


@pytest.mark.parametrize("make, message", [
    (lambda: image("0.9.9"), "version 0.9.9 is not newer than the installed 1.0.0"),
    (lambda: image("1.0.0"), "not newer than the installed 1.0.0"),
    (lambda: image("1.1.0", epoch=0), "security epoch 0 is below the device's anti-rollback counter 1"),
    (lambda: image("1.1.0", model="custody-signer-other"), "is for hardware 'custody-signer-other'"),
    (lambda: image("1.1.0", signers=RELEASE_KEYS[:1]), r"1 valid release signature\(s\) from distinct trusted keys; 2"),
    (lambda: image("1.1.0", signers=[RELEASE_KEYS[0], nacl.signing.SigningKey(b"\x05" * 32)]), "1 valid release"),
    (_tampered_payload, "the payload does not match the signed hash"),
    (_tampered_manifest, "did not sign this manifest"),
    (lambda: b"MZ" + image("1.1.0"), "not a custody-signer firmware image"),
], ids=["downgrade", "reinstall", "rollback epoch", "other model", "one signature", "untrusted signer",
        "tampered payload", "tampered manifest", "not an image"])
def test_a_bad_image_is_refused_and_changes_nothing(fresh, make, message):
    flash = fresh.state / "flash"
    before = {p.name: p.read_bytes() for p in flash.iterdir()}
    with pytest.raises(DeviceError, match=message):
        fresh.install_firmware(make())
    assert {p.name: p.read_bytes() for p in flash.iterdir()} == before
    assert Device(fresh.state).info()["firmware"]["version"] == "1.0.0"


def test_an_image_failing_its_self_test_falls_back(fresh):
    broken = image("1.1.0", epoch=3, payload=b"this payload does not start its self-test\n")
    with pytest.raises(DeviceError, match="firmware 1.1.0 failed its self-test; still running 1.0.0"):
        fresh.install_firmware(broken)
    info = Device(fresh.state).info()["firmware"]
    assert (info["version"], info["epoch_counter"]) == ("1.0.0", 1)       # the counter did not rise
    assert fresh.install_firmware(image("1.1.0", epoch=2))["version"] == "1.1.0"


def test_the_device_signs_after_an_upgrade(rpc, vault, tmp_path):
    device = Device(shutil.copytree(vault.devices[1].state, tmp_path / "signer1"))
    assert device.install_firmware(image("1.1.0"))["version"] == "1.1.0"
    assert accepted(rpc, cosign(spend(vault, vault.idle[0]), device, vault.devices[2]))["allowed"]


# -- as a separate process, through HWI ---------------------------------------------------------------------
@dataclass
class Fleet:
    processes: list
    infos: list[dict]
    states: list[Path]
    discovery: Path
    env: dict
    descriptor: str = ""
    registrations: list[dict] = field(default_factory=list)
    coin: Coin | None = None


def hwi(fleet: Fleet, *args: str) -> dict | list:
    run = subprocess.run([str(BIN / "hwi"), "--chain", "regtest", *args], capture_output=True, text=True,
                         env=fleet.env, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, rpc, wallet, mined):
    """Three `custody-signer simulate` processes announced in a private discovery directory. The wallet is
    built from the xpubs HWI reads, registered through the HWI client, its policy (one approver) approved
    with `custody-signer hsm-policy`, and its first address funded on the node."""

    root = tmp_path_factory.mktemp("fleet")
    discovery = root / "discovery"
    patch = pytest.MonkeyPatch()
    patch.setenv("CUSTODY_SIGNER_DISCOVERY", str(discovery))
    env = dict(os.environ)
    processes, infos, states = [], [], []
    try:
        for n in range(3):
            states.append(root / f"sim{n}")
            process, info = spawn(states[-1], env=env)
            processes.append(process)
            infos.append(info)
        running = Fleet(processes, infos, states, discovery, env)
        clients = [commands.find_device(fingerprint=info["fingerprint"], chain=Chain.REGTEST) for info in infos]
        keys = [f"[{info['fingerprint']}/48h/1h/0h/2h]{commands.getxpub(client, ACCOUNT)['xpub']}/<0;1>/*"
                for info, client in zip(infos, clients)]
        running.descriptor = f"wsh(sortedmulti(2,{','.join(keys)}))"
        policy = root / "policy.json"
        policy.write_text(json.dumps({"approvers": approver_keys("alice"),
                                      "rules": [{"wallet": "fleet", "max_amount": 2 * BTC, "min_approvers": 1}]}))
        for client, state in zip(clients, states):
            running.registrations.append(client.register_policy("fleet", running.descriptor))
            subprocess.run([str(BIN / "custody-signer"), "hsm-policy", "--state", str(state), str(policy)],
                           check=True, capture_output=True, env=env)
        first = Descriptor.from_string(running.descriptor).derive(0, branch_index=0).script_pubkey().data
        coin = mined[1]
        txid = rpc.sendrawtransaction(wallet.sign([coin], [(first, 3 * BTC), (wallet.wpkh, coin.value - 3 * BTC - 5_000)]))
        rpc.generatetoaddress(1, TestWallet("miner").address())
        running.coin = Coin(Transaction.parse(bytes.fromhex(rpc.getrawtransaction(txid))), 0, 0)
        yield running
    finally:
        for process in processes:
            stop(process)
        patch.undo()


def client_for(fleet: Fleet, n: int):
    return commands.get_client("custodysigner", fleet.infos[n]["socket"], chain=Chain.REGTEST)


def fleet_spend(fleet: Fleet, **kwargs) -> PSBT:
    vault = Vault([], fleet.descriptor, [], [], fleet.coin.prev, -1)
    return spend(vault, fleet.coin, **kwargs)


def test_the_simulator_answers_only_the_requests_it_knows(fleet):
    """One JSON line in, one out; there is no request that returns the seed or a private key."""
    socket = fleet.infos[0]["socket"]
    assert call(socket, {"op": "info"})["fingerprint"] == fleet.infos[0]["fingerprint"]
    for request, message in [({"op": "seed"}, "unknown request 'seed'"), ({"op": "xprv", "path": "m"}, "unknown"),
                             ({"op": "xpub"}, "needs 'path' as text"),
                             ({"op": "display_address", "name": "fleet", "branch": "0", "index": 0}, "whole number"),
                             ({"op": "sign_psbt", "psbt": "cHNidP8="}, "not a PSBT")]:
        with pytest.raises(DeviceError, match=message):
            call(socket, request)
    assert oct(Path(socket).stat().st_mode & 0o777) == "0o600"


def test_registration_through_hwi_returns_a_proof_by_each_devices_key(fleet):
    for n, result in enumerate(fleet.registrations):
        account = bip32.HDKey.from_string(commands.getxpub(client_for(fleet, n), ACCOUNT)["xpub"])
        assert (result["threshold"], result["keys"]) == (2, 3)
        assert bip322.verify_simple(p2wpkh(account.key).data, registration_message(result["policy_id"]), result["proof"])
    assert len({r["policy_id"] for r in fleet.registrations}) == 1


def test_hwi_enumerates_the_running_simulators(fleet):
    (fleet.discovery / "RS-STALE.sock").write_text("")                   # a simulator that is gone
    found = commands.enumerate(chain=Chain.REGTEST)
    ours = sorted((d["fingerprint"], d["label"], d["path"]) for d in found if d["type"] == "custodysigner")
    assert ours == sorted((i["fingerprint"], i["serial"], i["socket"]) for i in fleet.infos)
    assert all(Path(i["socket"]).parent == fleet.discovery for i in fleet.infos)
    assert all(d["model"] == MODEL for d in found if d["type"] == "custodysigner")


def test_the_hwi_command_line_enumerates_and_reads_xpubs(fleet):
    listed = hwi(fleet, "enumerate")
    assert sorted(d["fingerprint"] for d in listed if d["type"] == "custodysigner") == \
        sorted(i["fingerprint"] for i in fleet.infos)
    for info in fleet.infos:
        xpub = hwi(fleet, "-f", info["fingerprint"], "getxpub", ACCOUNT)["xpub"]
        assert xpub == call(info["socket"], {"op": "xpub", "path": ACCOUNT})
        assert f"[{info['fingerprint']}/48h/1h/0h/2h]{xpub}/<0;1>/*" in fleet.descriptor


def test_hwi_getxpub_on_the_wrong_chain_finds_no_device(fleet):
    run = subprocess.run([str(BIN / "hwi"), "-f", fleet.infos[0]["fingerprint"], "getxpub", ACCOUNT],
                         capture_output=True, text=True, env=fleet.env, timeout=120)
    assert "Could not find device" in json.loads(run.stdout)["error"]


def test_hwi_displayaddress_shows_the_policys_address(rpc, fleet):
    receive, change = node_addresses(rpc, fleet.descriptor, [0, 4])
    for n in range(3):
        client = client_for(fleet, n)
        for branch, index, expected in [(0, 0, receive[0]), (1, 4, change[4])]:
            desc = fleet.descriptor.replace("/<0;1>/*", f"/{branch}/{index}")
            assert commands.displayaddress(client, desc=desc) == {"address": expected}
    shown = hwi(fleet, "-f", fleet.infos[0]["fingerprint"], "displayaddress", "--desc",
                fleet.descriptor.replace("/<0;1>/*", "/0/0"))
    assert shown == {"address": receive[0]}
    unregistered = fleet.descriptor.replace("sortedmulti(2,", "sortedmulti(1,").replace("/<0;1>/*", "/0/0")
    with pytest.raises(DeviceFailureError, match="that policy is not registered"):
        commands.displayaddress(client_for(fleet, 0), desc=unregistered)


def test_hwi_signmessage_gives_a_bip322_signature(fleet):
    client = client_for(fleet, 2)
    message = "proof of control, fleet signer 2"
    signature = commands.signmessage(client, message, ACCOUNT)["signature"]
    account = bip32.HDKey.from_string(commands.getxpub(client, ACCOUNT)["xpub"])
    assert bip322.verify_simple(p2wpkh(account.key).data, message.encode(), signature)
    from_cli = hwi(fleet, "-f", fleet.infos[2]["fingerprint"], "signmessage", message, ACCOUNT)["signature"]
    assert from_cli == signature


def test_hwi_refuses_what_the_device_refuses(fleet):
    psbt = approve(fleet_spend(fleet), "alice", policy=policy_id("fleet", fleet.descriptor))
    psbt.outputs[1].script_pubkey = Script(THIEF.wpkh)
    with pytest.raises(DeviceFailureError, match="claims to be change but does not derive"):
        commands.signtx(client_for(fleet, 0), psbt.to_string())
    result = hwi(fleet, "-f", fleet.infos[1]["fingerprint"], "signtx", psbt.to_string())
    assert "claims to be change" in result["error"]
    with pytest.raises(DeviceFailureError, match=r"0 valid approver signature\(s\), 1 needed"):
        commands.signtx(client_for(fleet, 0), fleet_spend(fleet).to_string())


def test_two_simulators_sign_through_hwi_and_the_node_mines_it(rpc, fleet):
    """One signs through hwilib, one through the `hwi` command line; the approval travels in the PSBT."""
    psbt = approve(fleet_spend(fleet, pay=BTC), "alice", policy=policy_id("fleet", fleet.descriptor))
    first = commands.signtx(client_for(fleet, 0), psbt.to_string())
    assert first["signed"]
    second = hwi(fleet, "-f", fleet.infos[2]["fingerprint"], "signtx", first["psbt"])
    assert second["signed"]
    signed = PSBT.from_string(second["psbt"])
    assert len(signed.inputs[0].partial_sigs) == 2
    merged = signatures.merge_upload(fleet_spend(fleet, pay=BTC), signed)
    assert merged.signers == {fleet.infos[0]["fingerprint"], fleet.infos[2]["fingerprint"]}
    txid = rpc.sendrawtransaction(signatures.finalize(merged.psbt, 2).hex())
    rpc.generatetoaddress(1, TestWallet("miner").address())
    assert rpc.getrawtransaction(txid, True)["confirmations"] == 1
    log = client_for(fleet, 2).policy_log()
    assert log[-1]["event"] == "sign" and log[-1]["txid"] == txid and verify_log(log) is None
    run = subprocess.run([str(BIN / "custody-signer"), "hsm-log", "--state", str(fleet.states[2])],
                         capture_output=True, text=True, env=fleet.env, timeout=60)
    assert run.returncode == 0 and json.loads(run.stdout.splitlines()[-1])["txid"] == txid


def test_firmware_is_installed_through_the_hwi_client(fleet):
    client = client_for(fleet, 1)
    assert client.device_info()["firmware"]["version"] == "1.0.0"
    with pytest.raises(DeviceFailureError, match="1 valid release signature"):
        client.install_firmware(image("1.1.0", signers=RELEASE_KEYS[:1]))
    assert client.install_firmware(image("1.1.0"))["version"] == "1.1.0"
    assert client_for(fleet, 1).device_info()["firmware"]["version"] == "1.1.0"
    with pytest.raises(DeviceFailureError, match="not newer"):
        client.install_firmware(image("1.0.9"))
