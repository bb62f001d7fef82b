"""The mining fleet's payout wallet on the reference signer (issue 8, item 1): a single-key P2WPKH (or P2TR)
wallet whose key lives in the device, and a policy that lets it pay only to the coordinator's custody policy,
registered on the device as a watch-only wallet (it holds no key in it). No approvers are needed: the device
proves every destination is a custody address by re-deriving its script, so a compromised coordinator can
send the fleet's coins nowhere else.

PSBTs are built offline, as in test_signer_attacks; a signed sweep is finalized and every input checked by
Bitcoin Core's script interpreter (libbitcoinkernel through py-bitcoinkernel)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pbk
import pytest
from embit import bip32
from embit.descriptor import Descriptor
from embit.networks import NETWORKS
from embit.psbt import DerivationPath, PSBT
from embit.script import p2wpkh, Script, Witness
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput
from hwilib import commands
from hwilib.common import Chain

from custody.bitcoin import bip322
from custody_signer.device import Device, DeviceError
from custody_signer.hsm import check_policy, PolicyError, verify_log
from custody_signer.protocol import registration_message
from custody_signer.simulator import spawn
from custody_signer.wallets import MAX_INDEX
from regtest.testwallet import TestWallet

from .support import stop

BTC = 100_000_000
THIEF = TestWallet("fleet thief")
POLICY = {"approvers": {}, "rules": [{"wallet": "fleet", "to_wallets": ["custody"], "max_amount": 100 * BTC}]}
FLAGS_V0 = pbk.ScriptVerificationFlags.ALL & ~pbk.ScriptVerificationFlags.TAPROOT


def single_key(device: Device, kind: str = "wpkh", suffix: str = "/<0;1>/*") -> str:
    path = {"wpkh": "84h/1h/0h", "tr": "86h/1h/0h"}[kind]
    return f"{kind}([{device.fingerprint}/{path}]{device.xpub('m/' + path)}{suffix})"


def custody_descriptor(devices: list[Device]) -> str:
    keys = ",".join(f"[{d.fingerprint}/48h/1h/0h/2h]{d.xpub('m/48h/1h/0h/2h')}/<0;1>/*" for d in devices)
    return f"wsh(sortedmulti(2,{keys}))"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """The fleet's device with its wpkh payout wallet and the custody 2-of-3 (three other devices' keys)
    registered watch-only, under the fleet policy."""
    root = tmp_path_factory.mktemp("fleet")
    miner = Device.create(root / "miner")
    custody = custody_descriptor([Device.create(root / f"custodian{i}") for i in range(3)])
    miner.register("fleet", single_key(miner))
    miner.register_watch_only("custody", custody)
    miner.hsm.install(POLICY)
    return miner, single_key(miner), custody


def derivations(derived) -> dict:
    return {k.get_public_key(): DerivationPath(k.origin.fingerprint, k.origin.derivation) for k in derived.keys}


def sweep(wallet: str, custody: str, *, values=(1_000_000,) * 3, fee=10_000, custody_index=0,
          change=0) -> PSBT:
    """A PSBT spending the wallet's coins at receive indexes 0.. to the custody address at `custody_index`,
    carrying the custody keys' derivations on that output (as the coordinator does), and `change` back to
    the wallet's change index 0 if any."""
    desc, to = Descriptor.from_string(wallet), Descriptor.from_string(custody).derive(custody_index, branch_index=0)
    tx, prevs = Transaction(vin=[], vout=[]), []
    for i, value in enumerate(values):
        derived = desc.derive(i, branch_index=0)
        prev = Transaction(vin=[TransactionInput(hashlib.sha256(f"{wallet} {i}".encode()).digest(), 0)],
                           vout=[TransactionOutput(value, derived.script_pubkey())])
        prevs.append((prev, derived))
        tx.vin.append(TransactionInput(prev.txid(), 0))
    tx.vout = [TransactionOutput(sum(values) - fee - change, to.script_pubkey())]
    if change:
        tx.vout.append(TransactionOutput(change, desc.derive(0, branch_index=1).script_pubkey()))
    psbt = PSBT(tx, unknown={})                       # embit shares one default dict between PSBTs
    for scope, (prev, derived) in zip(psbt.inputs, prevs):
        scope.non_witness_utxo, scope.witness_utxo = prev, prev.vout[0]
        if desc.is_taproot:
            scope.taproot_bip32_derivations.update({p: ([], d) for p, d in derivations(derived).items()})
        else:
            scope.bip32_derivations.update(derivations(derived))
    psbt.outputs[0].bip32_derivations.update(derivations(to))
    if change:
        target = psbt.outputs[1].taproot_bip32_derivations if desc.is_taproot else psbt.outputs[1].bip32_derivations
        for pub, d in derivations(desc.derive(0, branch_index=1)).items():
            target[pub] = ([], d) if desc.is_taproot else d
    return psbt


def finalize(signed: PSBT) -> tuple[bytes, list[TransactionOutput]]:
    """The finished transaction: [signature, public key] per P2WPKH input, [signature] per taproot input."""
    tx = signed.tx
    for vin, scope in zip(tx.vin, signed.inputs):
        if b"\x13" in scope.unknown:
            vin.witness = Witness([scope.unknown[b"\x13"]])
        else:
            [(pub, sig)] = scope.partial_sigs.items()
            vin.witness = Witness([sig, pub.sec()])
    return tx.serialize(), [scope.witness_utxo for scope in signed.inputs]


def core_accepts(raw: bytes, spent: list[TransactionOutput]) -> bool:
    """Every input through Bitcoin Core's interpreter; taproot needs every spent output, v0 needs none."""
    tx = pbk.Transaction(raw)
    taproot = any(s.script_pubkey.data[:2] == b"\x51\x20" for s in spent)
    outputs = [pbk.TransactionOutput(pbk.ScriptPubkey(s.script_pubkey.data), s.value) for s in spent]
    data = pbk.script.PrecomputedTransactionData(tx, outputs if taproot else None)
    flags = pbk.ScriptVerificationFlags.ALL if taproot else FLAGS_V0
    return all(pbk.ScriptPubkey(s.script_pubkey.data).verify(s.value, tx, data, i, flags) for i, s in enumerate(spent))


def refused(device: Device, psbt: PSBT, message: str, *, by_policy: bool = False) -> None:
    """Refused with `message`; a policy refusal is logged as one, a failed check is refused before the policy."""
    log_before = len(device.hsm.log())
    with pytest.raises(DeviceError, match=message):
        device.sign_psbt(psbt.to_string())
    log = device.hsm.log()
    if by_policy:
        assert len(log) == log_before + 1 and log[-1]["event"] == "refuse"
        assert any(message in reason for reason in log[-1]["reasons"])
    else:
        assert len(log) == log_before


def test_registration_shows_the_single_key_and_the_custody_policy(fleet):
    miner, wallet, custody = fleet
    result = miner.register("fleet", wallet)                     # again: the same wallet, the same answer
    assert result["first_address"] == Descriptor.from_string(wallet).derive(0, branch_index=0).address(
        NETWORKS["regtest"])
    assert (result["threshold"], result["keys"], result["position"]) == (1, 1, 1)
    account = bip32.HDKey.from_base58(miner.xpub("m/84h/1h/0h"))
    assert bip322.verify_simple(p2wpkh(account.key).data, registration_message(result["policy_id"]), result["proof"])
    watch = miner.register_watch_only("custody", custody)
    assert watch["watch_only"] and (watch["threshold"], watch["keys"]) == (2, 3)
    screen = (miner.state / "screen.log").read_text()
    assert "Register watch-only custody?" in screen and "no key on this device" in screen
    assert f"first address {watch['first_address']}" in screen
    assert [w.name for w in miner.wallets()] == ["fleet"] and [w.name for w in miner.watch_only()] == ["custody"]
    assert miner.info()["watch_only"] == ["custody"]
    with pytest.raises(DeviceError, match="no wallet named 'custody'"):
        miner.display_address("custody", 0, 0)                    # watch-only: never a wallet it signs for


def test_registration_refusals(fleet, tmp_path):
    miner, _, custody = fleet
    other = Device.create(tmp_path / "other")
    with pytest.raises(DeviceError, match="the key is not this device's"):
        miner.register("theirs", single_key(other))
    impostor = single_key(other).replace(other.fingerprint, miner.fingerprint)
    with pytest.raises(DeviceError, match="claims this device's fingerprint but is not the key it holds"):
        miner.register("impostor", impostor)
    elsewhere = f"wpkh([{miner.fingerprint}/44h/1h/0h]{miner.xpub('m/44h/1h/0h')}/<0;1>/*)"
    with pytest.raises(DeviceError, match=r"single-key wpkh is at m/84h/1h/<account>h \(BIP-84\)"):
        miner.register("legacy-path", elsewhere)
    with pytest.raises(DeviceError, match="must end in"):
        miner.register("one-address", single_key(miner, suffix="/0/0"))
    with pytest.raises(DeviceError, match="a different wallet is already registered as 'custody'"):
        miner.register("custody", single_key(miner, suffix="/0/*"))
    mine = custody_descriptor([miner, other, Device.create(tmp_path / "third")])
    with pytest.raises(DeviceError, match="register it as a signing wallet"):
        miner.register_watch_only("mine", mine)
    with pytest.raises(DeviceError, match="a watch-only wallet is a custody multisig"):
        miner.register_watch_only("single", single_key(other))
    assert [w.name for w in miner.wallets()] == ["fleet"] and [w.name for w in miner.watch_only()] == ["custody"]


def test_a_fifty_input_sweep_to_custody_is_signed_and_core_accepts_it(fleet):
    miner, wallet, custody = fleet
    psbt = sweep(wallet, custody, values=[100_000 + i for i in range(50)], fee=20_000, custody_index=7)
    signed = PSBT.from_string(miner.sign_psbt(psbt.to_string()))
    assert all(len(scope.partial_sigs) == 1 and scope.witness_script is None for scope in signed.inputs)
    assert core_accepts(*finalize(signed))
    entry = miner.hsm.log()[-1]
    assert entry["event"] == "sign" and entry["rule"] == 0 and entry["destination_wallets"] == ["custody"]
    with_change = PSBT.from_string(miner.sign_psbt(sweep(wallet, custody, change=300_000).to_string()))
    assert core_accepts(*finalize(with_change))
    assert miner.hsm.log()[-1]["amount"] == 3_000_000 - 10_000 - 300_000     # change is not spent


def test_destinations_outside_custody_are_refused_by_the_policy(fleet):
    """An outside address; one claiming the custody keys' derivations that do not re-derive it (a swapped
    script); a custody address beyond the index bound. Each is a policy decision, logged."""
    miner, wallet, custody = fleet
    outside = sweep(wallet, custody)
    outside.outputs[0].bip32_derivations.clear()
    outside.outputs[0].script_pubkey = Script(THIEF.wpkh)
    refused(miner, outside, "destination is not a custody address", by_policy=True)
    swapped = sweep(wallet, custody)
    swapped.outputs[0].script_pubkey = Script(THIEF.wpkh)
    refused(miner, swapped, "destination is not a custody address", by_policy=True)
    refused(miner, sweep(wallet, custody, custody_index=MAX_INDEX + 1), "destination is not a custody address",
            by_policy=True)
    assert miner.hsm.log()[-1]["destination_wallets"] == [None]
    assert verify_log(miner.hsm.log()) is None


def test_spend_attacks_are_refused_before_the_policy(fleet):
    miner, wallet, custody = fleet
    foreign = sweep(wallet, custody)
    scope = foreign.inputs[1]
    scope.non_witness_utxo = Transaction(vin=[TransactionInput(b"\x07" * 32, 0)],
                                         vout=[TransactionOutput(1_000_000, Script(THIEF.wpkh))])
    scope.witness_utxo = scope.non_witness_utxo.vout[0]
    scope.txid, scope.vout = scope.non_witness_utxo.txid(), 0
    refused(miner, foreign, "foreign input")
    lying = sweep(wallet, custody)
    lying.inputs[0].witness_utxo = TransactionOutput(lying.inputs[0].witness_utxo.value + 5,
                                                     lying.inputs[0].witness_utxo.script_pubkey)
    refused(miner, lying, "a lying amount")
    missing = sweep(wallet, custody)
    missing.inputs[2].non_witness_utxo = None
    refused(miner, missing, "no non_witness_utxo")
    refused(miner, sweep(wallet, custody, values=(10 * BTC,), fee=6_000_000), "above this device's cap")
    anyone = sweep(wallet, custody)
    anyone.inputs[0].sighash_type = SIGHASH.ALL | SIGHASH.ANYONECANPAY
    refused(miner, anyone, "SIGHASH_ALL only")
    stolen_change = sweep(wallet, custody, change=300_000)
    stolen_change.outputs[1].script_pubkey = Script(THIEF.wpkh)
    refused(miner, stolen_change, "claims to be change but does not derive")


def test_a_receive_only_wallet_takes_change_on_its_one_branch(fleet, tmp_path):
    """`wpkh(.../0/*)` has no change branch: change goes to a receive index, and a path on branch 1 is refused."""
    _, _, custody = fleet
    miner = Device.create(tmp_path / "receive-only")
    wallet = single_key(miner, suffix="/0/*")
    miner.register("fleet", wallet)
    miner.register_watch_only("custody", custody)
    miner.hsm.install(POLICY)
    with pytest.raises(DeviceError, match="only receive"):
        miner.display_address("fleet", 1, 0)
    for branch, accepted in ((0, True), (1, False)):
        psbt = sweep(wallet, custody, change=300_000)
        [derived_key] = Descriptor.from_string(wallet).derive(9, branch_index=0).keys
        psbt.outputs[1].script_pubkey = Descriptor.from_string(wallet).derive(9, branch_index=0).script_pubkey()
        psbt.outputs[1].bip32_derivations = {derived_key.get_public_key(): DerivationPath(
            bytes.fromhex(miner.fingerprint), [*derived_key.origin.derivation[:3], branch, 9])}
        if accepted:
            miner.sign_psbt(psbt.to_string())
            assert miner.hsm.log()[-1]["amount"] == 3_000_000 - 10_000 - 300_000
        else:
            refused(miner, psbt, "claims to be change but does not derive")


def test_the_policy_field_is_checked():
    assert check_policy(POLICY)["rules"][0]["to_wallets"] == ["custody"]
    for bad in ("custody", [1], {"custody": True}):
        with pytest.raises(PolicyError, match="to_wallets is a list of wallet names"):
            check_policy({"rules": [{"to_wallets": bad}]})


def test_a_taproot_fleet_wallet_signs_key_path_spends(fleet, tmp_path):
    """BIP-86: the key tweaked with no script tree; BIP-341's digest commits to every input's proven coin."""
    _, _, custody = fleet
    miner = Device.create(tmp_path / "tr-miner")
    wallet = single_key(miner, "tr")
    assert miner.register("fleet", wallet)["first_address"].startswith("bcrt1p")
    miner.register_watch_only("custody", custody)
    miner.hsm.install(POLICY)
    signed = PSBT.from_string(miner.sign_psbt(sweep(wallet, custody, values=[200_000] * 5, change=50_000).to_string()))
    assert all(len(scope.unknown[b"\x13"]) == 64 for scope in signed.inputs)      # SIGHASH_DEFAULT
    assert core_accepts(*finalize(signed))


def test_the_fleet_through_hwi(tmp_path, monkeypatch):
    """The same registrations and a sweep signed through HWI's `signtx`, on a simulator process."""
    env = {**os.environ, "CUSTODY_SIGNER_DISCOVERY": str(tmp_path / "d")}
    monkeypatch.setenv("CUSTODY_SIGNER_DISCOVERY", env["CUSTODY_SIGNER_DISCOVERY"])
    process, info = spawn(tmp_path / "miner", env)
    try:
        client = commands.find_device(fingerprint=info["fingerprint"], chain=Chain.REGTEST)
        account = commands.getxpub(client, "m/84h/1h/0h")["xpub"]
        wallet = f"wpkh([{info['fingerprint']}/84h/1h/0h]{account}/<0;1>/*)"
        custody = custody_descriptor([Device.create(tmp_path / f"custodian{i}") for i in range(3)])
        assert client.register_policy("fleet", wallet)["position"] == 1
        assert client.register_watch_only("custody", custody)["watch_only"] is True
        policy = tmp_path / "policy.json"
        policy.write_text(json.dumps(POLICY))
        subprocess.run([sys.executable, "-m", "custody_signer.cli", "hsm-policy", "--state", str(tmp_path / "miner"),
                        str(policy)], check=True, capture_output=True, env=env)
        signed = commands.signtx(client, sweep(wallet, custody, values=[300_000] * 4).to_string())
        assert signed["signed"] is True and core_accepts(*finalize(PSBT.from_string(signed["psbt"])))
        assert client.policy_log()[-1]["destination_wallets"] == ["custody"]
    finally:
        stop(process)
