"""Officers' approvals of a spend: what the coordinator and a device agree on, and how a device checks one.

An approval is a signature by an officer's own key over `approval_message`: the spend's policy, its
unsigned transaction's id and every output (destination or change, with its amount) and the fee, so an
officer approves exactly one transaction and the coordinator cannot turn it into another. A device
rebuilds the message from the PSBT it proved itself (`inspection.Facts`), never from the coordinator's
word, and verifies each approval against the approver keys of its own policy (`hsm`).

Three kinds of approver key, named in the device's policy by their public keys:
- `ed25519`: a key file (CLI, automation); 64-byte signature over the message.
- `p256`: a key file; ECDSA P-256 / SHA-256 (DER) over the message.
- `webauthn`: a passkey (ES256). The browser's assertion: its client data's challenge is
  base64url(SHA-256(message)) and its type `webauthn.get`, its authenticator data names the policy's
  relying party (SHA-256 of the RP ID) with the user-present flag, and the ECDSA signature covers
  authenticatorData || SHA-256(clientDataJSON) (WebAuthn Level 2, section 7.2).

In a PSBT, approvals are BIP-174 proprietary global fields (type 0xFC, identifier "custody"): subtype
0x01 ed25519 (key data: the 32-byte key), 0x02 p256 and 0x03 webauthn (key data: the 33-byte compressed
point). The value is the signature, or for webauthn the packed assertion (`pack_assertion`).
"""
from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from urllib.parse import urlsplit

import nacl.exceptions
import nacl.signing
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

PROPRIETARY = b"\xfc\x07custody"          # 0xFC, compact-size length 7, identifier
SUBTYPES = {"ed25519": b"\x01", "p256": b"\x02", "webauthn": b"\x03"}
KEY_SIZES = {"ed25519": 32, "p256": 33, "webauthn": 33}
KINDS = {code: kind for kind, code in SUBTYPES.items()}
USER_PRESENT = 0x01                       # authenticator data flag bit 0 (UP)


class ApprovalError(ValueError):
    """An approver entry or an approval that cannot be read."""


@dataclass(frozen=True)
class Approver:
    """One approver of a device's policy: a name and the public key their approvals verify under."""
    name: str
    kind: str                              # ed25519, p256 or webauthn
    key: bytes                             # 32 bytes (ed25519) or a 33-byte compressed P-256 point
    rp_id: str | None = None               # webauthn: the relying party the passkey belongs to


@dataclass(frozen=True)
class Approval:
    """One approval as it travels in a PSBT."""
    kind: str
    key: bytes
    value: bytes                           # the signature, or the packed WebAuthn assertion


def approval_message(policy_id: str, txid: str, outputs: list[tuple[str, int, bool]], fee: int) -> bytes:
    """What an approver signs. `outputs`: (address, satoshis, is change) for every output, in order."""
    lines = ["custody approval v2", f"policy {policy_id}", f"txid {txid}"]
    lines += [f"{'change' if change else 'pay'} {address} {value}" for address, value, change in outputs]
    lines.append(f"fee {fee}")
    return ("\n".join(lines) + "\n").encode()


def challenge(message: bytes) -> bytes:
    """The WebAuthn challenge for a message: its SHA-256."""
    return hashlib.sha256(message).digest()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- approvers -------------------------------------------------------------------------------------------
def parse_approver(name: str, entry) -> Approver:
    """A policy's approver entry: a 64-hex-digit ed25519 key, or {"type", "key" (hex), "rp_id" (webauthn)}."""
    if isinstance(entry, str):
        entry = {"type": "ed25519", "key": entry}
    if not isinstance(entry, dict) or set(entry) - {"type", "key", "rp_id"}:
        raise ApprovalError(f"approver {name!r}: an ed25519 key in hex, or {{\"type\", \"key\", \"rp_id\"}}")
    kind, key_hex, rp_id = entry.get("type"), entry.get("key"), entry.get("rp_id")
    if kind not in SUBTYPES:
        raise ApprovalError(f"approver {name!r}: type is one of {', '.join(SUBTYPES)}")
    try:
        key = bytes.fromhex(key_hex)
    except (TypeError, ValueError):
        raise ApprovalError(f"approver {name!r}: the key is not hex") from None
    _check_key(name, kind, key)
    if kind == "webauthn":
        if not isinstance(rp_id, str) or not rp_id or rp_id != rp_id.strip().lower():
            raise ApprovalError(f"approver {name!r}: a passkey names its relying party (rp_id, lower case)")
    elif rp_id is not None:
        raise ApprovalError(f"approver {name!r}: only a passkey has an rp_id")
    return Approver(name, kind, key, rp_id)


def approver_entry(approver: Approver) -> dict:
    """The policy entry for an approver (the inverse of parse_approver)."""
    entry = {"type": approver.kind, "key": approver.key.hex()}
    return {**entry, "rp_id": approver.rp_id} if approver.rp_id else entry


def _check_key(name: str, kind: str, key: bytes) -> None:
    if len(key) != KEY_SIZES[kind]:
        raise ApprovalError(f"approver {name!r}: a {kind} public key is {KEY_SIZES[kind]} bytes, not {len(key)}")
    try:
        if kind == "ed25519":
            nacl.signing.VerifyKey(key)
        else:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key)
    except (ValueError, nacl.exceptions.CryptoError):
        raise ApprovalError(f"approver {name!r}: not a valid {kind} public key") from None


# -- approvals in a PSBT ---------------------------------------------------------------------------------
def psbt_field(approval: Approval) -> tuple[bytes, bytes]:
    """The (key, value) of the PSBT global field carrying an approval."""
    return PROPRIETARY + SUBTYPES[approval.kind] + approval.key, approval.value


def approvals_in(unknown: dict) -> list[Approval]:
    """The approvals among a PSBT's global unknown fields (fields of another size are not approvals)."""
    found = []
    for field, value in unknown.items():
        if not field.startswith(PROPRIETARY) or len(field) <= len(PROPRIETARY):
            continue
        kind = KINDS.get(field[len(PROPRIETARY):len(PROPRIETARY) + 1])
        key = field[len(PROPRIETARY) + 1:]
        if kind is not None and len(key) == KEY_SIZES[kind]:
            found.append(Approval(kind, key, value))
    return found


def pack_assertion(authenticator_data: bytes, client_data_json: bytes, signature: bytes) -> bytes:
    return _sized(authenticator_data) + _sized(client_data_json) + signature


def unpack_assertion(value: bytes) -> tuple[bytes, bytes, bytes]:
    """(authenticatorData, clientDataJSON, signature) from a packed assertion."""
    authenticator_data, rest = _unsized(value)
    client_data_json, signature = _unsized(rest)
    return authenticator_data, client_data_json, signature


def _sized(data: bytes) -> bytes:
    if len(data) < 0xFD:
        return bytes([len(data)]) + data
    if len(data) > 0xFFFF:
        raise ApprovalError("an assertion part over 64 KiB")
    return b"\xfd" + len(data).to_bytes(2, "little") + data


def _unsized(data: bytes) -> tuple[bytes, bytes]:
    if not data:
        raise ApprovalError("a truncated assertion")
    size, start = (int.from_bytes(data[1:3], "little"), 3) if data[0] == 0xFD else (data[0], 1)
    if data[0] > 0xFD or len(data) < start + size:
        raise ApprovalError("a truncated assertion")
    return data[start:start + size], data[start + size:]


# -- verification ----------------------------------------------------------------------------------------
def verify(approver: Approver, approval: Approval, message: bytes) -> str | None:
    """None when `approval` is `approver`'s valid approval of `message`; otherwise why not."""
    if approval.kind != approver.kind or approval.key != approver.key:
        return f"not {approver.name}'s key"
    try:
        if approver.kind == "ed25519":
            nacl.signing.VerifyKey(approver.key).verify(message, approval.value)
            return None
        if approver.kind == "p256":
            _p256(approver.key).verify(approval.value, message, ec.ECDSA(hashes.SHA256()))
            return None
        return _verify_assertion(approver, approval.value, message)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, InvalidSignature, ValueError):
        return f"{approver.name}'s signature does not verify for this transaction"


def _verify_assertion(approver: Approver, packed: bytes, message: bytes) -> str | None:
    try:
        authenticator_data, client_data_json, signature = unpack_assertion(packed)
        client_data = json.loads(client_data_json)
    except (ApprovalError, ValueError, RecursionError):      # RecursionError: JSON nested thousands deep
        return f"{approver.name}'s passkey assertion is malformed"
    if not isinstance(client_data, dict) or client_data.get("type") != "webauthn.get":
        return f"{approver.name}'s passkey assertion is not an authentication (webauthn.get)"
    if client_data.get("challenge") != b64url(challenge(message)):
        return f"{approver.name}'s passkey approved another transaction"
    if client_data.get("crossOrigin", False) is not False:
        return f"{approver.name}'s passkey assertion was made in a frame of another site (crossOrigin)"
    origin = client_data.get("origin")
    host = _host(origin)
    if host is None or not (host == approver.rp_id or host.endswith("." + approver.rp_id)):
        return f"{approver.name}'s passkey assertion comes from {origin!r}, not {approver.rp_id}"
    if len(authenticator_data) < 37 or authenticator_data[:32] != hashlib.sha256(approver.rp_id.encode()).digest():
        return f"{approver.name}'s passkey assertion is for another relying party than {approver.rp_id}"
    if not authenticator_data[32] & USER_PRESENT:
        return f"{approver.name}'s passkey assertion was made without the user present"
    signed = authenticator_data + hashlib.sha256(client_data_json).digest()
    _p256(approver.key).verify(signature, signed, ec.ECDSA(hashes.SHA256()))
    return None


def _host(origin) -> str | None:
    try:
        return urlsplit(origin).hostname if isinstance(origin, str) else None
    except ValueError:                     # e.g. "https://[::1": not an origin at all
        return None


def _p256(key: bytes) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key)


def valid_approvers(approvers: list[Approver], approvals: list[Approval], message: bytes) -> tuple[set[str], list[str]]:
    """The names whose approval of `message` verifies, and why each other approval by a policy key does not."""
    by_key = {(a.kind, a.key): a for a in approvers}
    valid, refused = set(), []
    for approval in approvals:
        approver = by_key.get((approval.kind, approval.key))
        if approver is None:
            continue
        why = verify(approver, approval, message)
        if why is None:
            valid.add(approver.name)
        else:
            refused.append(why)
    return valid, refused
