"""The reference signer signs proof-of-reserves PSBTs (audit.proof_format's shape) after its own checks.

Built offline, as in test_signer_attacks: three devices' keys make a 2-of-3 wsh(sortedmulti) wallet
registered on each, and made-up previous transactions pay its addresses. Two devices sign, the proof is
finalized, and Bitcoin Core's script interpreter (libbitcoinkernel through py-bitcoinkernel) judges every
coin input: the judge is neither the coordinator nor the signer. Each attack is refused by the device
with its reason, and nothing is signed."""
from __future__ import annotations

import hashlib
import json
import os

import pbk
import pytest
from embit.descriptor import Descriptor
from embit.psbt import DerivationPath, PSBT
from embit.script import Script, Witness
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput
from hwilib import commands
from hwilib.common import Chain

from audit import proof_format
from custody_signer.device import Device, DeviceError
from custody_signer.hsm import check_policy, PolicyError, verify_log
from custody_signer.proofs import ExactPSBT
from custody_signer.simulator import spawn
from regtest.testwallet import TestWallet

from .support import stop

THIEF = TestWallet("proof thief")
MESSAGE = proof_format.compose_message("Acme Treasury", "2025-Q4 reserves", "auditor-nonce-0001", "ab" * 32, 120)
OTHER_AUDIT = proof_format.compose_message("Acme Treasury", "2026-Q1 reserves", "auditor-nonce-0002", "cd" * 32, 130)
VALUES = (1_000_000, 250_000, 40_000)


def make_trio(root) -> tuple[list[Device], str]:
    devices = [Device.create(root / f"dev{i}") for i in range(3)]
    keys = ",".join(f"[{d.fingerprint}/48h/1h/0h/2h]{d.xpub('m/48h/1h/0h/2h')}/<0;1>/*" for d in devices)
    descriptor = f"wsh(sortedmulti(2,{keys}))"
    for d in devices:
        d.register("vault", descriptor)
    return devices, descriptor


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    """Three devices with the wallet registered on each and no HSM policy (proofs need none)."""
    return make_trio(tmp_path_factory.mktemp("proof-signers"))


def proof(descriptor: str, *, message: bytes = MESSAGE, kind: str = "bip322", values=VALUES, edit=None,
          exact: bool = True) -> PSBT:
    """The proof PSBT an honest coordinator sends: commitment, then coins at receive indexes 0.. (each with
    its previous transaction, witness utxo and script, all three derivations), one OP_RETURN output.
    `edit(tx)` alters the unsigned transaction first; `exact=False` builds it with plain embit, which writes
    the transaction as version 2 with sequences 0xffffffff (custody.reserves.proofs does so)."""
    desc = Descriptor.from_string(descriptor)
    prevs = []
    for i, value in enumerate(values):
        derived = desc.derive(i, branch_index=0)
        prev = Transaction(vin=[TransactionInput(hashlib.sha256(b"proof coin %d" % i).digest(), 0)],
                           vout=[TransactionOutput(value, derived.script_pubkey())])
        prevs.append((prev, derived))
    tx = proof_format.unsigned_proof(message, kind, [(p.txid(), 0, p.vout[0].value) for p, _ in prevs])
    if edit:
        edit(tx)
    psbt = (ExactPSBT if exact else PSBT)(tx, unknown={proof_format.PSBT_GLOBAL_GENERIC_SIGNED_MESSAGE: message})
    if kind == "bip322":
        psbt.inputs[0].non_witness_utxo = proof_format.to_spend(message)
    else:                                          # a new dict: embit shares one default between scopes
        psbt.inputs[0].unknown = {proof_format.PSBT_IN_POR_COMMITMENT: message}
    for scope, (prev, derived) in zip(psbt.inputs[1:], prevs):
        scope.non_witness_utxo, scope.witness_utxo = prev, prev.vout[0]
        scope.witness_script = derived.witness_script()
        for key in derived.keys:
            scope.bip32_derivations[key.get_public_key()] = DerivationPath(key.origin.fingerprint, key.origin.derivation)
    return psbt


def cosign(psbt: PSBT, *devices: Device) -> ExactPSBT:
    text = psbt.to_string()
    for device in devices:
        text = device.sign_psbt(text)
    return ExactPSBT.from_string(text)


def finalize(psbt: ExactPSBT) -> Transaction:
    """Witness [empty, signatures in sortedmulti's key order, witness script] on every coin input."""
    tx = psbt.tx
    for n in range(1, len(tx.vin)):
        scope = psbt.inputs[n]
        signatures = [sig for _, sig in sorted(scope.partial_sigs.items(), key=lambda kv: kv[0].sec())]
        tx.vin[n].witness = Witness([b"", *signatures, scope.witness_script.data])
    return tx


def interpreter_accepts(tx: Transaction, coins: list[TransactionOutput]) -> list[bool]:
    """Bitcoin Core's verdict on each coin input (input 0, the commitment, is never spendable)."""
    kernel_tx = pbk.Transaction(tx.serialize())
    spent = [pbk.TransactionOutput(pbk.ScriptPubkey(proof_format.OP_TRUE), 0)] + [
        pbk.TransactionOutput(pbk.ScriptPubkey(c.script_pubkey.data), c.value) for c in coins]
    data = pbk.script.PrecomputedTransactionData(kernel_tx, spent)
    verdicts = []
    for n, coin in enumerate(coins, start=1):
        try:
            verdicts.append(pbk.ScriptPubkey(coin.script_pubkey.data).verify(
                coin.value, kernel_tx, data, n, pbk.ScriptVerificationFlags.ALL))
        except pbk.ScriptVerifyException:
            verdicts.append(False)
    return verdicts


def state_of(device: Device) -> dict[str, bytes]:
    """Everything the device keeps, but its screen (which shows refusals too)."""
    return {name: (device.state / name).read_bytes() for name in sorted(os.listdir(device.state))
            if (device.state / name).is_file() and name != "screen.log"}


def refused(device: Device, psbt: PSBT, reason: str) -> None:
    """Refused with `reason` before any policy decision: nothing signed, logged or written."""
    before = state_of(device)
    with pytest.raises(DeviceError, match=reason):
        device.sign_psbt(psbt.to_string())
    assert state_of(device) == before


def _version_zero(tx: Transaction) -> None:
    tx.version = 0
    for vin in tx.vin:
        vin.sequence = 0


@pytest.mark.parametrize("kind", proof_format.KINDS)
@pytest.mark.parametrize("exact", [True, False], ids=["version-0", "embit-rewritten"])
def test_two_devices_sign_a_proof_the_interpreter_accepts(trio, kind, exact):
    """The coordinator's proofs are version 2; a BIP-322 tool may send version 0 with sequences 0."""
    devices, descriptor = trio
    psbt = proof(descriptor, kind=kind, exact=exact, edit=_version_zero if exact else None)
    log_before = len(devices[0].hsm.log())
    signed = cosign(psbt, devices[0], devices[1])
    assert signed.tx.version == (0 if exact else 2)            # the device signs the transaction it is sent
    assert signed.tx.txid() == ExactPSBT.from_string(psbt.to_string()).tx.txid()
    assert not signed.inputs[0].partial_sigs
    assert all(len(scope.partial_sigs) == 2 for scope in signed.inputs[1:])
    assert all(sig[-1] == SIGHASH.ALL for scope in signed.inputs[1:] for sig in scope.partial_sigs.values())
    coins = [scope.non_witness_utxo.vout[0] for scope in signed.inputs[1:]]
    final = finalize(signed)
    assert interpreter_accepts(final, coins) == [True] * len(VALUES)
    # the signatures commit to the message through input 0: under another audit's commitment they fail
    final.vin[0].txid = proof_format.commitment_outpoint(OTHER_AUDIT, kind)
    assert interpreter_accepts(final, coins) == [False] * len(VALUES)

    screen = (devices[0].state / "screen.log").read_text().split("\n--\n")[-2].splitlines()
    assert screen == ["Proof of reserves?", *MESSAGE.decode().splitlines(),
                      f"{sum(VALUES)} sat in {len(VALUES)} coins of vault"]
    log = devices[0].hsm.log()
    assert len(log) == log_before + 1 and verify_log(log) is None
    assert {k: log[-1][k] for k in ("event", "allowed", "wallet", "message_sha256", "total", "coins", "txid")} == {
        "event": "proof", "allowed": True, "wallet": "vault", "message_sha256": hashlib.sha256(MESSAGE).hexdigest(),
        "total": sum(VALUES), "coins": len(VALUES), "txid": signed.tx.txid().hex()}


def test_a_proof_relabelled_for_another_audit_is_refused(trio):
    """Audit A's proof PSBT with its message fields swapped for audit B's: input 0 still commits to A."""
    (device, *_), descriptor = trio
    for kind in proof_format.KINDS:
        psbt = proof(descriptor, kind=kind)
        psbt.unknown[proof_format.PSBT_GLOBAL_GENERIC_SIGNED_MESSAGE] = OTHER_AUDIT
        if kind == "bip127":
            psbt.inputs[0].unknown = {proof_format.PSBT_IN_POR_COMMITMENT: OTHER_AUDIT}
        else:
            psbt.inputs[0].non_witness_utxo = proof_format.to_spend(OTHER_AUDIT)
        refused(device, psbt, "input 0 does not commit to this message")


def test_message_fields_that_disagree_or_do_not_parse_are_refused(trio):
    (device, *_), descriptor = trio
    psbt = proof(descriptor, kind="bip127")
    psbt.inputs[0].unknown = {proof_format.PSBT_IN_POR_COMMITMENT: OTHER_AUDIT}
    refused(device, psbt, "two message fields .* differ")
    refused(device, proof(descriptor, message=b"I, the custodian, hold a lot"),
            "not a proof-of-reserves message: the message is not a proof-of-reserves message")
    unprintable = MESSAGE.replace(b"Acme Treasury", b"Acme\x07Treasury")
    refused(device, proof(descriptor, message=unprintable), "custodian must be 1-80 printable ASCII")


def test_a_wrong_commitment_input_is_refused(trio):
    (device, *_), descriptor = trio
    psbt = proof(descriptor)
    psbt.inputs[0].non_witness_utxo = proof_format.to_spend(OTHER_AUDIT)
    refused(device, psbt, "not BIP-322's to_spend for this message")
    psbt = proof(descriptor)
    psbt.inputs[0].bip32_derivations.update(psbt.inputs[1].bip32_derivations)
    refused(device, psbt, "input 0 is the message's commitment")


def _add_output(tx):
    tx.vout.append(TransactionOutput(1_000, Script(THIEF.wpkh)))


def _pay_thief(tx):
    tx.vout[0].script_pubkey = Script(THIEF.wpkh)


def _op_return_with_data(tx):
    tx.vout[0].script_pubkey = Script(b"\x6a\x04" + b"fake")


def _fee(tx):
    tx.vout[0].value -= 5_000


def _overclaim(tx):
    tx.vout[0].value += 5_000


@pytest.mark.parametrize("edit, reason", [
    (_add_output, "exactly one output"),
    (_pay_thief, "must be a bare OP_RETURN"),
    (_op_return_with_data, "must be a bare OP_RETURN"),
    (_fee, "non-zero fee of 5000 sat"),
    (_overclaim, f"claims {sum(VALUES) + 5_000} sat, more than the coins hold"),
])
def test_outputs_other_than_one_op_return_burning_the_total_are_refused(trio, edit, reason):
    (device, *_), descriptor = trio
    refused(device, proof(descriptor, edit=edit), reason)


def test_a_foreign_input_is_refused(trio):
    (device, *_), descriptor = trio
    psbt = proof(descriptor)
    scope = psbt.inputs[2]
    scope.non_witness_utxo = Transaction(vin=[TransactionInput(b"\x07" * 32, 0)],
                                         vout=[TransactionOutput(VALUES[1], Script(THIEF.wpkh))])
    scope.witness_utxo = scope.non_witness_utxo.vout[0]
    scope.txid, scope.vout = scope.non_witness_utxo.txid(), 0
    refused(device, psbt, "input 2 is not a coin of a wallet registered on this device")


def test_a_coin_counted_twice_is_refused(trio):
    (device, *_), descriptor = trio
    psbt = proof(descriptor, values=(1_000_000, 1_000_000))
    psbt.inputs[2].txid = psbt.inputs[1].txid
    psbt.inputs[2].non_witness_utxo = psbt.inputs[1].non_witness_utxo
    refused(device, psbt, "input 2 spends the same coin as input 1")


def test_anyonecanpay_is_refused(trio):
    (device, *_), descriptor = trio
    psbt = proof(descriptor)
    psbt.inputs[1].sighash_type = SIGHASH.ALL | SIGHASH.ANYONECANPAY
    refused(device, psbt, "input 1 asks for sighash 129; this device signs SIGHASH_ALL only")


def test_a_lying_witness_utxo_amount_is_refused(trio):
    (device, *_), descriptor = trio
    psbt = proof(descriptor)
    lie = psbt.inputs[1].witness_utxo
    psbt.inputs[1].witness_utxo = TransactionOutput(lie.value + 1_000_000, lie.script_pubkey)
    refused(device, psbt, "input 1: witness_utxo says 2000000 sat.*a lying amount")


def test_a_proof_without_coins_is_refused(trio):
    (device, *_), descriptor = trio
    psbt = proof(descriptor, values=(5_000,), edit=lambda tx: tx.vin.pop())
    refused(device, psbt, "at least one coin")


def test_a_policy_can_refuse_proofs_and_the_refusal_is_logged(tmp_path):
    devices, descriptor = make_trio(tmp_path)
    device = devices[0]
    with pytest.raises(PolicyError, match="allow_proofs is true or false"):
        check_policy({"approvers": {}, "rules": [], "allow_proofs": "no"})
    device.hsm.install({"approvers": {}, "rules": [{"wallet": "vault"}], "allow_proofs": False})
    psbt = proof(descriptor)
    with pytest.raises(DeviceError, match="does not allow proofs of reserves"):
        device.sign_psbt(psbt.to_string())
    log = device.hsm.log()
    assert log[-1]["event"] == "proof" and log[-1]["allowed"] is False and log[-1]["total"] == sum(VALUES)
    assert verify_log(log) is None
    assert not (device.state / "hsm_velocity.json").exists()
    device.hsm.install({"approvers": {}, "rules": [], "allow_proofs": True})     # no spend rule is needed
    signed = PSBT.from_string(device.sign_psbt(psbt.to_string()))
    assert all(len(scope.partial_sigs) == 1 for scope in signed.inputs[1:])
    assert device.hsm.log()[-1]["allowed"] is True and json.loads((device.state / "hsm_policy.json").read_text())[
        "allow_proofs"] is True


def test_a_simulator_signs_a_proof_through_hwi(tmp_path, monkeypatch):
    """A 1-of-2 wallet of a simulated device (driven by hwilib) and an in-process one: HWI's signtx
    carries the proof to the device and back, and one signature completes every coin input."""
    monkeypatch.setenv("CUSTODY_SIGNER_DISCOVERY", str(tmp_path / "d"))
    process, info = spawn(tmp_path / "sim", {**os.environ})
    try:
        client = commands.find_device(fingerprint=info["fingerprint"], chain=Chain.REGTEST)
        other = Device.create(tmp_path / "local")
        keys = [f"[{info['fingerprint']}/48h/1h/0h/2h]{commands.getxpub(client, 'm/48h/1h/0h/2h')['xpub']}/<0;1>/*",
                f"[{other.fingerprint}/48h/1h/0h/2h]{other.xpub('m/48h/1h/0h/2h')}/<0;1>/*"]
        descriptor = f"wsh(sortedmulti(1,{','.join(keys)}))"
        client.register_policy("pair", descriptor)
        for kind in proof_format.KINDS:
            result = commands.signtx(client, proof(descriptor, kind=kind, values=(70_000, 30_000)).to_string())
            signed = ExactPSBT.from_string(result["psbt"])
            assert result["signed"] and signed.tx.version == proof_format.VERSION
            coins = [scope.non_witness_utxo.vout[0] for scope in signed.inputs[1:]]
            assert interpreter_accepts(finalize(signed), coins) == [True, True]
        screen = (tmp_path / "sim" / "screen.log").read_text()
        assert "Proof of reserves?\n" in screen and "audit: 2025-Q4 reserves\n" in screen
        assert "100000 sat in 2 coins of pair\n" in screen
        log = client.policy_log()
        assert [e["event"] for e in log] == ["proof", "proof"] and verify_log(log) is None
    finally:
        stop(process)
