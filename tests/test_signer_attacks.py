"""The reference signer against a malicious coordinator: each attack from the signer notes is refused by
the device itself, with a message naming it, and nothing is signed or counted. The coordinator's own,
separate refusal of the same attack is in test_custody_psbt (uploads), test_device_lifecycle (setup,
limits, firmware) and test_signer_firmware (images).

PSBTs are built offline: the device never asks a chain, it proves every fact from the PSBT itself."""
from __future__ import annotations

import hashlib

import nacl.signing
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec as cec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, Prehashed
from embit import bip32
from embit.descriptor import Descriptor
from embit.networks import NETWORKS
from embit.psbt import DerivationPath, PSBT
from embit.script import p2wpkh, Script
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput

from custody.bitcoin import bip322
from custody_signer import firmware, protocol
from custody_signer.device import Device, DeviceError
from custody_signer.hsm import verify_log
from custody_signer.protocol import policy_id, registration_message
from regtest.testwallet import TestWallet

from .approval_keys import carry, ed25519_approval, spend_message

THIEF = TestWallet("thief")
PAYEE = TestWallet("payee")
CURVE_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    """Three devices and their 2-of-3 wallet, registered on the first, which has a permissive policy."""
    root = tmp_path_factory.mktemp("signers")
    devices = [Device.create(root / f"dev{i}") for i in range(3)]
    keys = ",".join(f"[{d.fingerprint}/48h/1h/0h/2h]{d.xpub('m/48h/1h/0h/2h')}/<0;1>/*" for d in devices)
    descriptor = f"wsh(sortedmulti(2,{keys}))"
    devices[0].register("vault", descriptor)
    devices[0].hsm.install({"approvers": {}, "rules": [{"wallet": "vault", "max_amount": 5 * 10**8}]})
    return devices, descriptor


def spend(descriptor: str, *, values=(1_000_000,), pay=400_000, change=590_000, change_index=0,
          fee_payer=None) -> PSBT:
    """A PSBT spending wallet coins at receive indexes 0.., paying PAYEE, with change to the wallet."""
    desc = Descriptor.from_string(descriptor)
    tx, prevs = Transaction(vin=[], vout=[]), []
    for i, value in enumerate(values):
        derived = desc.derive(i, branch_index=0)
        prev = Transaction(vin=[TransactionInput(hashlib.sha256(bytes([i])).digest(), 0)],
                           vout=[TransactionOutput(value, derived.script_pubkey())])
        prevs.append((prev, derived))
        tx.vin.append(TransactionInput(prev.txid(), 0))
    own_change = desc.derive(change_index, branch_index=1)
    tx.vout = [TransactionOutput(pay, Script(PAYEE.wpkh)), TransactionOutput(change, own_change.script_pubkey())]
    psbt = PSBT(tx, unknown={})                       # embit shares one default dict between PSBTs
    for scope, (prev, derived) in zip(psbt.inputs, prevs):
        scope.non_witness_utxo, scope.witness_utxo = prev, prev.vout[0]
        scope.witness_script = derived.witness_script()
        for key in derived.keys:
            scope.bip32_derivations[key.get_public_key()] = DerivationPath(key.origin.fingerprint, key.origin.derivation)
    for key in own_change.keys:
        psbt.outputs[1].bip32_derivations[key.get_public_key()] = DerivationPath(key.origin.fingerprint,
                                                                                 key.origin.derivation)
    return psbt


def refused(device: Device, psbt: PSBT, message: str) -> None:
    log_before = len(device.hsm.log())
    with pytest.raises(DeviceError, match=message):
        device.sign_psbt(psbt.to_string())
    assert len(device.hsm.log()) == log_before          # refused before the policy: nothing counted


def test_an_honest_spend_is_signed(trio):
    (device, *_), descriptor = trio
    signed = PSBT.from_string(device.sign_psbt(spend(descriptor).to_string()))
    assert len(signed.inputs[0].partial_sigs) == 1


def test_change_substitution_is_refused(trio):
    """Change claimed for the wallet but paid to a thief, and change at an index beyond the bound."""
    (device, *_), descriptor = trio
    psbt = spend(descriptor)
    psbt.outputs[1].script_pubkey = Script(THIEF.wpkh)
    refused(device, psbt, "claims to be change but does not derive")
    refused(device, spend(descriptor, change_index=10_001), "claims to be change but does not derive")


def test_a_lying_witness_utxo_amount_is_refused(trio):
    (device, *_), descriptor = trio
    psbt = spend(descriptor)
    psbt.inputs[0].witness_utxo = TransactionOutput(psbt.inputs[0].witness_utxo.value + 5,
                                                    psbt.inputs[0].witness_utxo.script_pubkey)
    refused(device, psbt, "a lying amount")


def test_a_missing_or_mismatched_previous_transaction_is_refused(trio):
    (device, *_), descriptor = trio
    psbt = spend(descriptor)
    psbt.inputs[0].non_witness_utxo = None
    refused(device, psbt, "no non_witness_utxo")
    psbt = spend(descriptor)
    psbt.inputs[0].non_witness_utxo = spend(descriptor, values=(2_000_000,)).inputs[0].non_witness_utxo
    refused(device, psbt, "txid does not match")


def test_a_foreign_input_is_refused(trio):
    (device, *_), descriptor = trio
    psbt = spend(descriptor, values=(1_000_000, 500_000), change=1_090_000)
    scope = psbt.inputs[1]
    scope.non_witness_utxo = Transaction(vin=[TransactionInput(b"\x07" * 32, 0)],
                                         vout=[TransactionOutput(500_000, Script(THIEF.wpkh))])
    scope.witness_utxo = scope.non_witness_utxo.vout[0]
    scope.txid, scope.vout = scope.non_witness_utxo.txid(), 0
    refused(device, psbt, "foreign input")


@pytest.mark.parametrize("sighash", [SIGHASH.NONE, SIGHASH.SINGLE, SIGHASH.ALL | SIGHASH.ANYONECANPAY])
def test_a_non_all_sighash_is_refused(trio, sighash):
    (device, *_), descriptor = trio
    psbt = spend(descriptor)
    psbt.inputs[0].sighash_type = sighash
    refused(device, psbt, "SIGHASH_ALL only")


def test_a_fee_over_the_cap_is_refused(trio):
    (device, *_), descriptor = trio
    refused(device, spend(descriptor, values=(20_000_000,), pay=1_000_000, change=12_000_000), "above this device's cap")


def test_spends_over_the_policy_limits_are_refused_and_logged(trio):
    (device, *_), descriptor = trio
    before = len(device.hsm.log())
    with pytest.raises(DeviceError, match="over its maximum"):
        device.sign_psbt(spend(descriptor, values=(6 * 10**8,), pay=int(5.5 * 10**8), change=49_990_000).to_string())
    log = device.hsm.log()
    assert len(log) == before + 1 and log[-1]["event"] == "refuse"
    assert verify_log(log) is None


def test_the_device_refuses_a_swapped_xpub_at_registration(trio):
    devices, descriptor = trio
    stranger = bip32.HDKey.from_seed(b"\x09" * 32, version=NETWORKS["regtest"]["xprv"])
    fake = stranger.derive("m/48h/1h/0h/2h").to_public().to_string(NETWORKS["regtest"]["xpub"])
    mine = f"[{devices[0].fingerprint}/48h/1h/0h/2h]{devices[0].xpub('m/48h/1h/0h/2h')}/<0;1>/*"
    swapped = descriptor.replace(mine, f"[{devices[0].fingerprint}/48h/1h/0h/2h]{fake}/<0;1>/*")
    assert swapped != descriptor
    with pytest.raises(DeviceError, match="not the key it holds"):
        devices[0].register("swapped", swapped)
    without = descriptor.replace(mine, f"[{stranger.my_fingerprint.hex()}/48h/1h/0h/2h]{fake}/<0;1>/*")
    with pytest.raises(DeviceError, match="not in the policy"):
        devices[0].register("without-me", without)
    assert [w.name for w in devices[0].wallets()] == ["vault"]


def test_the_registration_proof_verifies_for_the_devices_key(trio):
    devices, descriptor = trio
    result = devices[1].register("vault", descriptor)
    account = bip32.HDKey.from_base58(devices[1].xpub("m/48h/1h/0h/2h"))
    assert bip322.verify_simple(p2wpkh(account.key).data, registration_message(result["policy_id"]), result["proof"])
    assert not bip322.verify_simple(p2wpkh(account.key).data, registration_message("0" * 64), result["proof"])


def test_approvers_velocity_and_first_match(trio):
    """min_approvers counts distinct registered approvers with valid signatures; velocity counters survive
    a restart; the first matching rule decides."""
    _, descriptor = trio
    device = trio[0][0]
    olga, omar, mallory = (nacl.signing.SigningKey.generate() for _ in range(3))
    device.hsm.install({"approvers": {"olga": olga.verify_key.encode().hex(), "omar": omar.verify_key.encode().hex()},
                        "rules": [{"wallet": "vault", "max_amount": 500_000, "min_approvers": 2},
                                  {"wallet": "vault", "per_period": {"minutes": 60, "max_amount": 900_000},
                                   "whitelist": [Script(PAYEE.wpkh).address(NETWORKS["regtest"])]}]})
    psbt = spend(descriptor)
    message = spend_message(psbt, policy_id("vault", descriptor), change=(1,))
    carry(psbt, ed25519_approval(olga, message), ed25519_approval(mallory, message),
          ed25519_approval(omar, b"another transaction"))
    device.sign_psbt(psbt.to_string())                # rule 0 fails (1 valid approver), rule 1 matches: 400k
    assert device.hsm.log()[-1]["rule"] == 1 and device.hsm.log()[-1]["approved_by"] == ["olga"]
    reopened = Device(device.state)                   # counters are on the device, not in memory
    with pytest.raises(DeviceError, match="already spent in the last 60 min"):
        reopened.sign_psbt(spend(descriptor, pay=600_000, change=390_000).to_string())
    psbt = spend(descriptor, pay=450_000, change=540_000)
    message = spend_message(psbt, policy_id("vault", descriptor), change=(1,))
    carry(psbt, ed25519_approval(olga, message), ed25519_approval(omar, message))
    reopened.sign_psbt(psbt.to_string())             # both approvers: rule 0 matches first
    log = reopened.hsm.log()
    assert log[-1]["rule"] == 0 and verify_log(log) is None
    tampered = [dict(e) for e in log]
    tampered[-2]["amount"] += 1
    assert verify_log(tampered) is not None


def test_signatures_use_deterministic_rfc6979_nonces(trio):
    """Same PSBT, same signature; and it equals an independent RFC 6979 signer's (cryptography). Like
    Bitcoin Core, libsecp256k1 (through embit) retries with extra nonce data until r is below 2^255 ("low
    R"), so the comparison is made on transactions whose first RFC 6979 nonce already gives a low r."""
    (device, *_), descriptor = trio
    device.hsm.install({"approvers": {}, "rules": [{"wallet": "vault"}]})
    compared = 0
    for pay in range(400_000, 400_040):
        psbt = spend(descriptor, pay=pay, change=990_000 - pay)
        first = PSBT.from_string(device.sign_psbt(psbt.to_string()))
        second = PSBT.from_string(device.sign_psbt(psbt.to_string()))
        [(pub, sig)] = first.inputs[0].partial_sigs.items()
        assert second.inputs[0].partial_sigs[pub] == sig
        digest = first.sighash(0, SIGHASH.ALL)
        path = next(d for p, d in psbt.inputs[0].bip32_derivations.items() if p.sec() == pub.sec()).derivation
        secret = device._root.derive(path).key.secret
        reference = cec.derive_private_key(int.from_bytes(secret, "big"), cec.SECP256K1())
        r, s = decode_dss_signature(reference.sign(digest, cec.ECDSA(Prehashed(hashes.SHA256()),
                                                                      deterministic_signing=True)))
        if r >= 2**255:
            continue                                  # libsecp256k1 grinds on; not comparable
        assert _rs(sig[:-1]) == (r, min(s, CURVE_ORDER - s))      # Bitcoin's low-S form
        compared += 1
    assert compared >= 5


def _rs(der: bytes) -> tuple[int, int]:
    r_len = der[3]
    r = int.from_bytes(der[4:4 + r_len], "big")
    s = int.from_bytes(der[6 + r_len:], "big")
    return r, s


def test_firmware_attacks_are_refused_by_the_device(trio):
    (device, *_), _ = trio
    keys = protocol.test_release_keys(3)
    payload = b"custody-signer firmware\nreference signer 2.0.0\n"
    good = firmware.build_image(payload, model=device.config["model"], version="2.0.0", epoch=3, signers=keys[:2])
    attacks = {"does not match the signed hash": good[:-2] + b"!\n",
               "1 valid release signature": firmware.build_image(payload, model=device.config["model"],
                                                                 version="2.0.0", epoch=3, signers=keys[:1]),
               "is for hardware 'other'": firmware.build_image(payload, model="other", version="2.0.0", epoch=3,
                                                              signers=keys[:2])}
    for message, image in attacks.items():
        with pytest.raises(DeviceError, match=message):
            device.install_firmware(image)
    assert device.install_firmware(good)["version"] == "2.0.0"
    with pytest.raises(DeviceError, match="not newer"):
        device.install_firmware(firmware.build_image(payload, model=device.config["model"], version="1.5.0",
                                                     epoch=3, signers=keys[:2]))
    broken = firmware.build_image(b"no magic here", model=device.config["model"], version="2.1.0", epoch=3,
                                  signers=keys[:2])
    with pytest.raises(DeviceError, match="failed its self-test"):
        device.install_firmware(broken)
    assert device.info()["firmware"]["version"] == "2.0.0"
