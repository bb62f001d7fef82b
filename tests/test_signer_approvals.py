"""Officers' approvals on the reference signer: the device counts an approval only if it verifies over the
message the device rebuilds from what it proved itself (the policy id, the txid, every output with its amount
and change flag, the fee), under a key of its own policy. Each kind of approver (an ed25519 key file, a P-256
key file, a passkey's WebAuthn assertion) is tried honestly and with each attack; every refusal names the
approver and why their approval did not count.

PSBTs are built offline, as in test_signer_attacks: the device proves every fact from the PSBT itself."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from embit.descriptor import Descriptor
from embit.networks import NETWORKS
from embit.psbt import DerivationPath, PSBT
from embit.script import Script
from embit.transaction import Transaction, TransactionInput, TransactionOutput

from custody_signer.device import Device, DeviceError
from custody_signer.hsm import check_policy, PolicyError
from custody_signer.protocol import (Approval, approval_message, b64url, challenge, pack_assertion, policy_id,
                                     unpack_assertion)
from regtest.testwallet import TestWallet

from .approval_keys import (ORIGIN, RP_ID, UP, UV, assertion, authenticator_data, carry, client_data_json,
                            ed25519_approval, ed25519_entry, ed25519_key, p256_approval, p256_entry, p256_key,
                            public_key, spend_message, spend_terms, webauthn_approval, webauthn_entry)

PAYEE = TestWallet("approvals payee")
THIEF = TestWallet("approvals thief")
ACCOUNT = "m/48h/1h/0h/2h"
KEYS = {"alice": ed25519_key("alice"), "amy": ed25519_key("amy"),          # key files, ed25519
        "bob": p256_key("bob"), "ben": p256_key("ben"),                    # key files, P-256
        "carol": p256_key("carol passkey"), "cora": p256_key("cora passkey")}  # passkeys
ENTRIES = {"alice": ed25519_entry(KEYS["alice"]), "amy": ed25519_entry(KEYS["amy"]),
           "bob": p256_entry(KEYS["bob"]), "ben": p256_entry(KEYS["ben"]),
           "carol": webauthn_entry(KEYS["carol"]), "cora": webauthn_entry(KEYS["cora"])}
OUTSIDERS = {"ed25519": ed25519_key("mallory"), "p256": p256_key("mallory"), "webauthn": p256_key("mallory passkey")}
KIND_OF = {"alice": "ed25519", "bob": "p256", "carol": "webauthn"}
REFUSED = "the signing policy refuses: rule 0: 0 valid approver signature(s), 1 needed; "


@pytest.fixture(scope="module")
def vault(tmp_path_factory):
    """Three devices' 2-of-3 wallet, registered as "vault" on the first; returns (its state, the descriptor)."""
    root = tmp_path_factory.mktemp("signers")
    devices = [Device.create(root / f"dev{i}") for i in range(3)]
    keys = ",".join(f"[{d.fingerprint}/48h/1h/0h/2h]{d.xpub(ACCOUNT)}/<0;1>/*" for d in devices)
    descriptor = f"wsh(sortedmulti(2,{keys}))"
    devices[0].register("vault", descriptor)
    return devices[0].state, descriptor


@pytest.fixture
def device(vault, tmp_path):
    """The registered device with a fresh signing policy state: one approval by any approver signs."""
    state = tmp_path / "signer"
    shutil.copytree(vault[0], state, ignore=shutil.ignore_patterns("hsm_*", "screen.log"))
    device = Device(state)
    device.hsm.install({"approvers": ENTRIES, "rules": [{"wallet": "vault", "min_approvers": 1}]})
    return device


@pytest.fixture
def descriptor(vault) -> str:
    return vault[1]


def spend(descriptor: str, pay: int = 400_000, to: bytes = PAYEE.wpkh, fee: int = 10_000) -> PSBT:
    """A 1,000,000 sat coin of the wallet paying `pay` to `to`, the rest less the fee back to change (output 1)."""
    desc = Descriptor.from_string(descriptor)
    coin, change = desc.derive(0, branch_index=0), desc.derive(0, branch_index=1)
    prev = Transaction(vin=[TransactionInput(hashlib.sha256(b"funding").digest(), 0)],
                       vout=[TransactionOutput(1_000_000, coin.script_pubkey())])
    tx = Transaction(vin=[TransactionInput(prev.txid(), 0, sequence=0xFFFFFFFD)],
                     vout=[TransactionOutput(pay, Script(to)),
                           TransactionOutput(1_000_000 - pay - fee, change.script_pubkey())])
    psbt = PSBT(tx, unknown={})                        # embit shares one default dict between PSBTs
    psbt.inputs[0].non_witness_utxo, psbt.inputs[0].witness_utxo = prev, prev.vout[0]
    psbt.inputs[0].witness_script = coin.witness_script()
    for scope, derived in ((psbt.inputs[0], coin), (psbt.outputs[1], change)):
        for key in derived.keys:
            scope.bip32_derivations[key.get_public_key()] = DerivationPath(key.origin.fingerprint,
                                                                           key.origin.derivation)
    return psbt


def message_of(psbt: PSBT, descriptor: str) -> bytes:
    """What the approvers of this spend sign, as the coordinator computes it."""
    return spend_message(psbt, policy_id("vault", descriptor), change=(1,))


def approval(name: str, message: bytes, key=None) -> Approval:
    """`name`'s approval of `message` in their own kind, made with `key` (their own unless given)."""
    key = key or KEYS[name]
    kind = KIND_OF.get(name) or {"amy": "ed25519", "ben": "p256", "cora": "webauthn"}[name]
    return {"ed25519": ed25519_approval, "p256": p256_approval, "webauthn": webauthn_approval}[kind](key, message)


def signs(device: Device, psbt: PSBT) -> list[str]:
    """The device signs; returns who its log says approved."""
    signed = PSBT.from_string(device.sign_psbt(psbt.to_string()))
    assert signed.inputs[0].partial_sigs
    entry = device.hsm.log()[-1]
    assert entry["event"] == "sign"
    return entry["approved_by"]


def refusal(device: Device, psbt: PSBT) -> str:
    """The device refuses; returns what it says. The refusal is logged, and no approver counted."""
    with pytest.raises(DeviceError) as refused:
        device.sign_psbt(psbt.to_string())
    entry = device.hsm.log()[-1]
    assert entry["event"] == "refuse" and entry["approved_by"] == []
    return str(refused.value)


# -- each kind: an honest approval counts ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["alice", "bob", "carol"])
def test_an_approval_of_the_spend_counts(device, descriptor, name):
    psbt = spend(descriptor)
    assert signs(device, carry(psbt, approval(name, message_of(psbt, descriptor)))) == [name]


def test_without_an_approval_the_rule_is_not_met(device, descriptor):
    assert refusal(device, spend(descriptor)) == REFUSED.removesuffix("; ")


# -- each kind: the attacks, each refused by name ----------------------------------------------------------
def _does_not_verify(name: str) -> str:
    return f"{name}'s signature does not verify for this transaction"


def _another_transaction(name: str) -> str:
    """A passkey's assertion names the message it approved (its challenge), so the device can say which."""
    return f"{name}'s passkey approved another transaction" if name == "carol" else _does_not_verify(name)


@pytest.mark.parametrize("name", ["alice", "bob", "carol"])
def test_an_approval_of_another_transaction_does_not_count(device, descriptor, name):
    approved = spend(descriptor, pay=100_000)
    psbt = carry(spend(descriptor, pay=900_000), approval(name, message_of(approved, descriptor)))
    assert refusal(device, psbt) == REFUSED + _another_transaction(name)


LIES = {
    "a lower fee": lambda outputs, fee: (outputs, fee - 9_000),
    "the change shown as a payment back": lambda outputs, fee: ([outputs[0], (*outputs[1][:2], False)], fee),
    "another destination": lambda outputs, fee: ([(Script(THIEF.wpkh).address(NETWORKS["regtest"]),
                                                   *outputs[0][1:]), outputs[1]], fee),
    "another amount": lambda outputs, fee: ([(outputs[0][0], outputs[0][1] - 1, False), outputs[1]], fee),
    "the outputs in another order": lambda outputs, fee: (outputs[::-1], fee),
}


@pytest.mark.parametrize("lie", LIES)
@pytest.mark.parametrize("name", ["alice", "bob", "carol"])
def test_an_approval_of_the_same_txid_with_other_terms_does_not_count(device, descriptor, name, lie):
    """The approver was shown this transaction's id with outputs or a fee the device does not prove: the
    message the device rebuilds is not the one approved."""
    psbt = spend(descriptor)
    txid, outputs, fee = spend_terms(psbt, change=(1,))
    shown = approval_message(policy_id("vault", descriptor), txid, *LIES[lie](outputs, fee))
    assert refusal(device, carry(psbt, approval(name, shown))) == REFUSED + _another_transaction(name)


@pytest.mark.parametrize("name", ["alice", "bob", "carol"])
def test_an_approval_under_another_policy_does_not_count(device, descriptor, name):
    psbt = spend(descriptor)
    txid, outputs, fee = spend_terms(psbt, change=(1,))
    shown = approval_message(policy_id("treasury", descriptor), txid, outputs, fee)
    assert refusal(device, carry(psbt, approval(name, shown))) == REFUSED + _another_transaction(name)


@pytest.mark.parametrize("kind", ["ed25519", "p256", "webauthn"])
def test_a_key_not_in_the_policy_does_not_count(device, descriptor, kind):
    psbt = spend(descriptor)
    make = {"ed25519": ed25519_approval, "p256": p256_approval, "webauthn": webauthn_approval}[kind]
    outsider = make(OUTSIDERS[kind], message_of(psbt, descriptor))
    reason = f"a {kind} approval by a key not in this policy ({public_key(OUTSIDERS[kind]).hex()[:16]}…)"
    assert refusal(device, carry(psbt, outsider)) == REFUSED + reason


@pytest.mark.parametrize("name, other", [("alice", "amy"), ("bob", "ben"), ("carol", "cora")])
def test_another_approvers_signature_under_this_approvers_key_does_not_count(device, descriptor, name, other):
    psbt = spend(descriptor)
    theirs = approval(other, message_of(psbt, descriptor))
    carry(psbt, Approval(theirs.kind, public_key(KEYS[name]), theirs.value))
    assert refusal(device, psbt) == REFUSED + _does_not_verify(name)


@pytest.mark.parametrize("name", ["alice", "bob", "carol"])
def test_a_tampered_signature_does_not_count(device, descriptor, name):
    psbt = spend(descriptor)
    honest = approval(name, message_of(psbt, descriptor))
    tampered = honest.value[:-1] + bytes([honest.value[-1] ^ 0x01])
    assert refusal(device, carry(psbt, Approval(honest.kind, honest.key, tampered))) == REFUSED + _does_not_verify(name)


# -- passkeys: what the assertion says, not only its signature ---------------------------------------------
def _carol(device: Device, descriptor: str, make) -> str:
    """The device's answer to carol's assertion made by `make(message)` for the spend."""
    psbt = spend(descriptor)
    return refusal(device, carry(psbt, make(message_of(psbt, descriptor))))


def _resign(auth_data: bytes, client_data: bytes) -> Approval:
    return assertion(KEYS["carol"], auth_data, client_data)


@pytest.mark.parametrize("make, reason", [
    (lambda m: _resign(authenticator_data(RP_ID), client_data_json(b"another message", ORIGIN)),
     "carol's passkey approved another transaction"),
    (lambda m: _resign(authenticator_data(RP_ID), client_data_json(m, ORIGIN, type_="webauthn.create")),
     "carol's passkey assertion is not an authentication (webauthn.get)"),
    (lambda m: webauthn_approval(KEYS["carol"], m, rp_id="evil.example", origin="https://evil.example"),
     "carol's passkey assertion comes from 'https://evil.example', not custody.example"),
    (lambda m: webauthn_approval(KEYS["carol"], m, origin="https://evil.example"),
     "carol's passkey assertion comes from 'https://evil.example', not custody.example"),
    (lambda m: webauthn_approval(KEYS["carol"], m, origin="https://notcustody.example"),
     "carol's passkey assertion comes from 'https://notcustody.example', not custody.example"),
    (lambda m: webauthn_approval(KEYS["carol"], m, origin="https://[::1"),
     "carol's passkey assertion comes from 'https://[::1', not custody.example"),
    (lambda m: webauthn_approval(KEYS["carol"], m, rp_id="evil.example"),
     "carol's passkey assertion is for another relying party than custody.example"),
    (lambda m: webauthn_approval(KEYS["carol"], m, flags=UV),
     "carol's passkey assertion was made without the user present"),
    (lambda m: _resign(authenticator_data(RP_ID),
                       json.dumps({"type": "webauthn.get", "challenge": b64url(challenge(m)), "origin": ORIGIN,
                                   "crossOrigin": True}).encode()),
     "carol's passkey assertion was made in a frame of another site (crossOrigin)"),
    (lambda m: _resign(authenticator_data(RP_ID), b'{"type": "webauthn.get", '),
     "carol's passkey assertion is malformed"),
    (lambda m: _resign(authenticator_data(RP_ID), b"[" * 60_000),
     "carol's passkey assertion is malformed"),
    (lambda m: _resign(authenticator_data(RP_ID), b'"webauthn.get"'),
     "carol's passkey assertion is not an authentication (webauthn.get)"),
], ids=["wrong challenge", "webauthn.create", "another relying party and origin", "origin of another host",
        "origin of a look-alike host", "origin not a URL", "rp id hash of another site", "user not present",
        "cross-origin frame", "malformed json", "json nested too deep", "json not an object"])
def test_a_passkey_assertion_is_checked_for_what_it_says(device, descriptor, make, reason):
    assert _carol(device, descriptor, make) == REFUSED + reason


def _altered(part: int, change) -> callable:
    """Carol's honest assertion with one of its parts (0 authenticator data, 1 client data) changed after
    it was signed."""
    def make(message: bytes) -> Approval:
        honest = webauthn_approval(KEYS["carol"], message)
        parts = list(unpack_assertion(honest.value))
        parts[part] = change(parts[part])
        return Approval("webauthn", honest.key, pack_assertion(*parts))
    return make


@pytest.mark.parametrize("make", [
    _altered(0, lambda data: data[:33] + (2).to_bytes(4, "big")),                 # the counter
    _altered(0, lambda data: data + b"\xa0"),                                      # extension bytes added
    _altered(1, lambda data: data.replace(ORIGIN.encode(), b"https://app.custody.example")),
    _altered(1, lambda data: data + b" "),
], ids=["counter", "extensions", "origin", "whitespace"])
def test_a_passkey_assertion_altered_after_signing_does_not_verify(device, descriptor, make):
    assert _carol(device, descriptor, make) == REFUSED + _does_not_verify("carol")


@pytest.mark.parametrize("cut", [0, 1, 20, 37, 38])
def test_a_truncated_passkey_assertion_is_malformed(device, descriptor, cut):
    def make(message):
        honest = webauthn_approval(KEYS["carol"], message)
        return Approval("webauthn", honest.key, honest.value[:cut])
    assert _carol(device, descriptor, make) == REFUSED + "carol's passkey assertion is malformed"


def test_a_passkey_of_a_subdomain_origin_and_any_counter_counts(device, descriptor):
    """The relying party's own subdomains are its origins (WebAuthn's registrable suffix rule)."""
    psbt = spend(descriptor)
    made = webauthn_approval(KEYS["carol"], message_of(psbt, descriptor), origin="https://app.custody.example",
                             flags=UP, counter=0)
    assert signs(device, carry(psbt, made)) == ["carol"]


# -- counting approvers ------------------------------------------------------------------------------------
def _two_needed(device: Device, **rule) -> None:
    device.hsm.install({"approvers": ENTRIES, "rules": [{"wallet": "vault", "min_approvers": 2, **rule}]})


def test_two_distinct_approvers_meet_two_needed(device, descriptor):
    _two_needed(device)
    psbt = spend(descriptor)
    message = message_of(psbt, descriptor)
    assert signs(device, carry(psbt, approval("alice", message), approval("carol", message))) == ["alice", "carol"]
    psbt = spend(descriptor)
    assert signs(device, carry(psbt, *(approval(n, message_of(psbt, descriptor)) for n in ("bob", "ben", "cora")))) \
        == ["ben", "bob", "cora"]


def test_the_same_approver_twice_counts_once(device, descriptor):
    """Bob's key signs as his key file and as a passkey assertion: one holder, one approver."""
    _two_needed(device)
    psbt = spend(descriptor)
    message = message_of(psbt, descriptor)
    as_passkey = webauthn_approval(KEYS["bob"], message)
    with pytest.raises(DeviceError) as refused:
        device.sign_psbt(carry(psbt, approval("bob", message), as_passkey).to_string())
    assert str(refused.value) == ("the signing policy refuses: rule 0: 1 valid approver signature(s), 2 needed; "
                                  "bob approves with a p256 key, not a webauthn approval")
    assert device.hsm.log()[-1]["approved_by"] == ["bob"]


def test_the_refusal_names_each_approval_that_did_not_count(device, descriptor):
    _two_needed(device, approvers=["alice", "bob", "carol"])
    psbt = spend(descriptor)
    message, other = message_of(psbt, descriptor), message_of(spend(descriptor, pay=1), descriptor)
    carry(psbt, approval("alice", message), approval("bob", other), approval("carol", other), approval("amy", message))
    with pytest.raises(DeviceError) as refused:
        device.sign_psbt(psbt.to_string())
    assert str(refused.value) == (
        "the signing policy refuses: rule 0: 1 valid approver signature(s), 2 needed; "
        "bob's signature does not verify for this transaction; carol's passkey approved another transaction; "
        "amy's approval does not count for this rule")


def test_a_policy_with_a_bare_hex_approver_still_installs_and_counts(device, descriptor):
    """Policies written before approver kinds name an ed25519 key by its hex alone."""
    bare = public_key(KEYS["alice"]).hex()
    device.hsm.install({"approvers": {"alice": bare.upper()}, "rules": [{"wallet": "vault", "min_approvers": 1}]})
    assert device.hsm.policy["approvers"] == {"alice": {"type": "ed25519", "key": bare}}
    psbt = spend(descriptor)
    assert signs(device, carry(psbt, approval("alice", message_of(psbt, descriptor)))) == ["alice"]
    with pytest.raises(DeviceError, match="alice's signature does not verify"):
        device.sign_psbt(carry(spend(descriptor, pay=1), approval("alice", message_of(psbt, descriptor))).to_string())


@pytest.mark.parametrize("approvers, message", [
    ({"alice": ENTRIES["alice"], "alias": public_key(KEYS["alice"]).hex()},
     "approvers 'alice' and 'alias' share one key"),
    ({"bob": ENTRIES["bob"], "bobby": webauthn_entry(KEYS["bob"])}, "approvers 'bob' and 'bobby' share one key"),
    ({"carol": {"type": "webauthn", "key": ENTRIES["carol"]["key"]}}, "a passkey names its relying party"),
    ({"carol": {**ENTRIES["carol"], "rp_id": "Custody.Example"}}, "a passkey names its relying party"),
    ({"bob": {**ENTRIES["bob"], "rp_id": RP_ID}}, "only a passkey has an rp_id"),
    ({"bob": {"type": "rsa", "key": ENTRIES["bob"]["key"]}}, "type is one of ed25519, p256, webauthn"),
    ({"bob": {"type": "p256", "key": "02" + "00" * 31 + "01"}}, "not a valid p256 public key"),  # x=1: no point
    ({"bob": {"type": "p256", "key": "zz"}}, "the key is not hex"),
    ({"bob": {"type": "p256", "key": ENTRIES["alice"]["key"]}}, "a p256 public key is 33 bytes, not 32"),
    ({"bob": {**ENTRIES["bob"], "note": "x"}}, "an ed25519 key in hex, or"),
    ({"bob": 7}, "an ed25519 key in hex, or"),
])
def test_an_unreadable_or_duplicated_approver_is_not_installed(device, approvers, message):
    installed = device.hsm.policy
    with pytest.raises(PolicyError, match=message):
        device.hsm.install({"approvers": approvers, "rules": []})
    assert device.hsm.policy == installed


def test_the_policy_is_stored_normalised(device):
    checked = check_policy({"approvers": {"alice": public_key(KEYS["alice"]).hex(), "carol": ENTRIES["carol"]},
                            "rules": []})
    assert checked["approvers"] == {"alice": {"type": "ed25519", "key": public_key(KEYS["alice"]).hex()},
                                    "carol": {"type": "webauthn", "key": public_key(KEYS["carol"]).hex(),
                                              "rp_id": RP_ID}}
