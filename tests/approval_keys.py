"""Officers' approval keys for tests: ed25519 and P-256 key files and passkeys (real WebAuthn assertions made
with `cryptography`, as an authenticator would make them), and the approval message an honest coordinator
builds for a PSBT. Keys are derived from a seed text so that every run uses the same ones."""
from __future__ import annotations

import hashlib
import json

import nacl.signing
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from embit.networks import NETWORKS
from embit.psbt import PSBT

from custody_signer.protocol import Approval, approval_message, b64url, challenge, pack_assertion, psbt_field

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
RP_ID = "custody.example"
ORIGIN = "https://custody.example"
UP, UV = 0x01, 0x04                                      # authenticator data flags: user present, verified


# -- keys ------------------------------------------------------------------------------------------------
def ed25519_key(seed: str) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(hashlib.sha256(f"ed25519 {seed}".encode()).digest())


def p256_key(seed: str) -> ec.EllipticCurvePrivateKey:
    scalar = int.from_bytes(hashlib.sha256(f"p256 {seed}".encode()).digest(), "big") % (P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def public_key(private_key) -> bytes:
    """32 bytes for ed25519, the 33-byte compressed point for P-256."""
    if isinstance(private_key, nacl.signing.SigningKey):
        return private_key.verify_key.encode()
    return private_key.public_key().public_bytes(serialization.Encoding.X962,
                                                 serialization.PublicFormat.CompressedPoint)


def ed25519_entry(private_key: nacl.signing.SigningKey) -> dict:
    """A device policy's approver entry (`approvals.parse_approver`)."""
    return {"type": "ed25519", "key": public_key(private_key).hex()}


def p256_entry(private_key: ec.EllipticCurvePrivateKey) -> dict:
    return {"type": "p256", "key": public_key(private_key).hex()}


def webauthn_entry(private_key: ec.EllipticCurvePrivateKey, rp_id: str = RP_ID) -> dict:
    return {"type": "webauthn", "key": public_key(private_key).hex(), "rp_id": rp_id}


# -- approvals -------------------------------------------------------------------------------------------
def ed25519_approval(private_key: nacl.signing.SigningKey, message: bytes) -> Approval:
    return Approval("ed25519", public_key(private_key), private_key.sign(message).signature)


def p256_approval(private_key: ec.EllipticCurvePrivateKey, message: bytes) -> Approval:
    return Approval("p256", public_key(private_key), private_key.sign(message, ec.ECDSA(hashes.SHA256())))


def authenticator_data(rp_id: str, flags: int = UP | UV, counter: int = 1) -> bytes:
    """WebAuthn authenticatorData of an assertion: SHA-256(RP ID), flags, signature counter (no extensions)."""
    return hashlib.sha256(rp_id.encode()).digest() + bytes([flags]) + counter.to_bytes(4, "big")


def client_data_json(message: bytes, origin: str, type_: str = "webauthn.get") -> bytes:
    """What a browser hands the authenticator to hash: the challenge is base64url(SHA-256(message))."""
    return json.dumps({"type": type_, "challenge": b64url(challenge(message)), "origin": origin,
                       "crossOrigin": False}, separators=(",", ":")).encode()


def assertion(private_key: ec.EllipticCurvePrivateKey, auth_data: bytes, client_data: bytes) -> Approval:
    """A passkey's assertion over exactly these bytes: ES256 over authenticatorData || SHA-256(clientDataJSON)."""
    signature = private_key.sign(auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256()))
    return Approval("webauthn", public_key(private_key), pack_assertion(auth_data, client_data, signature))


def webauthn_approval(private_key: ec.EllipticCurvePrivateKey, message: bytes, rp_id: str = RP_ID,
                      origin: str = ORIGIN, flags: int = UP | UV, counter: int = 1) -> Approval:
    return assertion(private_key, authenticator_data(rp_id, flags, counter), client_data_json(message, origin))


# -- in a PSBT -------------------------------------------------------------------------------------------
def carry(psbt: PSBT, *approvals: Approval) -> PSBT:
    """Put approvals in the PSBT's global fields, as the coordinator does before a device signs."""
    for approval in approvals:
        field, value = psbt_field(approval)
        psbt.unknown[field] = value
    return psbt


def spend_message(psbt: PSBT, policy_id: str, change: tuple[int, ...], network: str = "regtest") -> bytes:
    """The approval message of a spend as the coordinator knows it: its policy, which outputs are change, and
    the inputs' amounts from their previous transactions."""
    return approval_message(policy_id, *spend_terms(psbt, change, network))


def spend_terms(psbt: PSBT, change: tuple[int, ...], network: str = "regtest") -> tuple[str, list, int]:
    """(txid, [(address, satoshis, is change)], fee): what an approver of this PSBT reads."""
    tx = psbt.tx
    spent = sum(scope.non_witness_utxo.vout[vin.vout].value for scope, vin in zip(psbt.inputs, tx.vin))
    outputs = [(_address(out.script_pubkey, network), out.value, n in change) for n, out in enumerate(tx.vout)]
    return tx.txid().hex(), outputs, spent - sum(out.value for out in tx.vout)


def _address(script_pubkey, network: str) -> str:
    try:
        return script_pubkey.address(NETWORKS[network])
    except Exception:                              # OP_RETURN and other scripts without an address
        return "script:" + script_pubkey.data.hex()
