"""What a coordinator and a custody signer agree on: the device's public protocol.

A coordinator needs nothing else of the signer. It asks a device (through HWI) to prove it holds a key
and to register a policy, sends it PSBTs carrying officers' approvals, and installs firmware releases;
for each of these both sides must build or read the same bytes:
- the device model name (`MODEL`), which firmware images and the coordinator's inventory name;
- proof of possession: a BIP-322 signature by the key at its path over `possession_message(challenge)`;
- registration: `policy_id(name, descriptor)` (over the normalised descriptor, `normalise`), and the
  BIP-322 proof by the device's key in the wallet over `registration_message(policy_id)`;
- approvals of a spend: `approval_message`, the approver entries of a device's policy (`parse_approver`,
  `approver_entry`), the PSBT fields carrying them (`psbt_field`, `approvals_in`; `pack_assertion` for
  a passkey) and `verify`, which the coordinator runs when an officer submits an approval and a device
  runs again, for itself, before it signs;
- the PSBT fields beyond BIP-174's own that a device reads or writes (`PROPRIETARY`, `TAP_KEY_SIG`, and a
  proof of reserves's message fields, whose shape is the auditor's: `audit.proof_format`);
- firmware images: their format (`read_image`) and `verify_image`, the checks a device makes before it
  installs one and the coordinator makes before it keeps a release (how a device stages, boots and falls
  back is its own: `firmware`, `flash`).

Versioning: each message names its own version in its bytes (the approval message's first line is
"custody approval v2"; the firmware manifest's signing domain is "... v1" and the image magic ends in
\\x01; the possession and registration messages are version 1, untagged). A change that alters any bytes
defined here is a new version of that message, with a new tag, and a device refuses what it cannot read
rather than guess. Nothing here imports the rest of the signer, so what a coordinator imports is exactly
this module.
"""
from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import dataclass
from urllib.parse import urlsplit

import nacl.exceptions
import nacl.signing
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from audit import proof_format

MODEL = "custody-signer-sim"                # the reference signer's hardware model


# -- keys and wallets ------------------------------------------------------------------------------------
def possession_message(challenge: str) -> bytes:
    """What a device signs (BIP-322, the key's P2WPKH address) to prove it holds the key it reports."""
    return f"custody proof of possession\n{challenge}\n".encode()


def normalise(descriptor: str) -> str:
    """The descriptor as the device stores and compares it: no checksum, `h` for hardened."""
    return descriptor.strip().split("#")[0].replace("'", "h")


def policy_id(name: str, descriptor: str) -> str:
    """What a registration proof commits to: the name and the normalised descriptor. The coordinator
    computes it too, to check the proof against the policy it sent."""
    return hashlib.sha256(f"{name}\n{normalise(descriptor)}".encode()).hexdigest()


def registration_message(policy_id: str) -> bytes:
    """What a device signs with its key in a wallet when it registers it."""
    return f"custody-signer registration\n{policy_id}\n".encode()


# -- PSBT fields -----------------------------------------------------------------------------------------
PROPRIETARY = b"\xfc\x07custody"          # BIP-174 proprietary global field: 0xFC, compact-size length 7, identifier
SUBTYPES = {"ed25519": b"\x01", "p256": b"\x02", "webauthn": b"\x03"}     # approvals, by approver kind
KEY_SIZES = {"ed25519": 32, "p256": 33, "webauthn": 33}
KINDS = {code: kind for kind, code in SUBTYPES.items()}
TAP_KEY_SIG = b"\x13"                      # BIP-371 PSBT_IN_TAP_KEY_SIG (no key data): a taproot signature
POR_MESSAGE = proof_format.PSBT_GLOBAL_GENERIC_SIGNED_MESSAGE       # a proof of reserves's message (BIP-322)
POR_COMMITMENT = proof_format.PSBT_IN_POR_COMMITMENT                # ... or in input 0 (BIP-127)


# -- approvals -------------------------------------------------------------------------------------------
# An approval is a signature by an officer's own key over `approval_message`: the spend's policy, its
# unsigned transaction's id and every output (destination or change, with its amount) and the fee, so an
# officer approves exactly one transaction and the coordinator cannot turn it into another. A device
# rebuilds the message from the PSBT it proved itself, never from the coordinator's word.
#
# Three kinds of approver key, named in a device's policy by their public keys:
# - `ed25519`: a key file (CLI, automation); 64-byte signature over the message.
# - `p256`: a key file; ECDSA P-256 / SHA-256 (DER) over the message.
# - `webauthn`: a passkey (ES256). The browser's assertion: its client data's challenge is
#   base64url(SHA-256(message)) and its type `webauthn.get`, its authenticator data names the policy's
#   relying party (SHA-256 of the RP ID) with the user-present flag, and the ECDSA signature covers
#   authenticatorData || SHA-256(clientDataJSON) (WebAuthn Level 2, section 7.2).
#
# In a PSBT an approval is a proprietary global field: PROPRIETARY + subtype (0x01 ed25519, whose key data
# is the 32-byte key; 0x02 p256 and 0x03 webauthn, the 33-byte compressed point). The value is the
# signature, or for webauthn the packed assertion (`pack_assertion`).
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


# -- firmware images -------------------------------------------------------------------------------------
# An image is `MAGIC`, the length of the header, the header (canonical JSON: the manifest (hardware model,
# version, security epoch, payload SHA-256 and size, which key set signed it) and its signatures by ed25519
# release keys over DOMAIN + the manifest), then the payload. Test keys (derived from public seeds, as
# Jade's "fakeprod" keys) are marked as such and refused by a production device.
MAGIC = b"CUSTODY-SIGNER-FW\x01"
DOMAIN = b"custody-signer firmware manifest v1\n"     # signatures cover this prefix and the manifest
TEST_KEY_SEED = "custody-signer TEST release key {}"   # public: anyone can sign with these


class FirmwareError(ValueError):
    """An image refused; the message names the check it failed."""


@dataclass(frozen=True)
class Manifest:
    model: str
    version: tuple[int, int, int]
    epoch: int
    payload_sha256: str
    payload_size: int
    key_set: str                     # "test" or "production"

    def canonical(self) -> bytes:
        return json.dumps({"model": self.model, "version": version_text(self.version), "epoch": self.epoch,
                           "payload_sha256": self.payload_sha256, "payload_size": self.payload_size,
                           "key_set": self.key_set}, sort_keys=True, separators=(",", ":")).encode()


def version_text(version: tuple[int, int, int]) -> str:
    return ".".join(map(str, version))


def parse_version(text: str) -> tuple[int, int, int]:
    parts = text.split(".")
    if len(parts) != 3 or not all(p.isdigit() and len(p) <= 6 for p in parts):
        raise FirmwareError(f"version {text!r} is not MAJOR.MINOR.PATCH")
    return tuple(int(p) for p in parts)        # type: ignore[return-value]


def test_release_keys(count: int = 3) -> list[nacl.signing.SigningKey]:
    """The public test keys: for CI, simulators and demos, never for a production device."""
    return [nacl.signing.SigningKey(hashlib.sha256(TEST_KEY_SEED.format(n).encode()).digest()) for n in range(count)]


def test_release_public_keys(count: int = 3) -> set[str]:
    return {k.verify_key.encode().hex() for k in test_release_keys(count)}


def pack_image(manifest: Manifest, signatures: list[tuple[str, str]], payload: bytes) -> bytes:
    """The image's bytes: the inverse of read_image (signatures as (key, signature) pairs, in hex)."""
    header = json.dumps({"manifest": json.loads(manifest.canonical()),
                         "signatures": [{"key": k, "sig": s} for k, s in signatures]},
                        sort_keys=True, separators=(",", ":")).encode()
    return MAGIC + struct.pack(">I", len(header)) + header + payload


def read_image(image: bytes) -> tuple[Manifest, list[tuple[str, str]], bytes]:
    """Parse without trusting anything: the manifest, the (key, signature) pairs and the payload."""
    if not image.startswith(MAGIC) or len(image) < len(MAGIC) + 4:
        raise FirmwareError("not a custody-signer firmware image")
    (size,) = struct.unpack(">I", image[len(MAGIC):len(MAGIC) + 4])
    start = len(MAGIC) + 4
    if start + size > len(image):
        raise FirmwareError("the image is truncated")
    try:
        header = json.loads(image[start:start + size])
        fields = header["manifest"]
        manifest = Manifest(str(fields["model"]), parse_version(fields["version"]), int(fields["epoch"]),
                            str(fields["payload_sha256"]), int(fields["payload_size"]), str(fields["key_set"]))
        signatures = [(str(s["key"]), str(s["sig"])) for s in header["signatures"]]
    except (ValueError, KeyError, TypeError) as e:
        raise FirmwareError(f"the image's manifest is malformed ({e})") from None
    return manifest, signatures, image[start + size:]


def verify_image(image: bytes, *, trusted_keys: set[str], threshold: int, model: str,
                 installed_version: tuple[int, int, int], epoch_counter: int, production: bool) -> Manifest:
    """Every check a device makes before installing; FirmwareError names the first that fails."""
    manifest, signatures, payload = read_image(image)
    if production and manifest.key_set != "production":
        raise FirmwareError("a production device refuses images built for test keys")
    valid = set()
    for key, signature in signatures:
        if key not in trusted_keys:
            continue
        try:
            nacl.signing.VerifyKey(bytes.fromhex(key)).verify(DOMAIN + manifest.canonical(), bytes.fromhex(signature))
        except (nacl.exceptions.BadSignatureError, ValueError):
            raise FirmwareError(f"release key {key[:16]}… did not sign this manifest (bad signature)") from None
        valid.add(key)
    if production and valid & test_release_public_keys(10):
        raise FirmwareError("a production device refuses signatures by test keys")
    if len(valid) < threshold:
        raise FirmwareError(f"{len(valid)} valid release signature(s) from distinct trusted keys; {threshold} needed")
    if manifest.model != model:
        raise FirmwareError(f"the image is for hardware {manifest.model!r}, this device is {model!r}")
    if len(payload) != manifest.payload_size or hashlib.sha256(payload).hexdigest() != manifest.payload_sha256:
        raise FirmwareError("the payload does not match the signed hash")
    if manifest.version <= installed_version:
        raise FirmwareError(f"version {version_text(manifest.version)} is not newer than the installed "
                            f"{version_text(installed_version)} (no downgrades or reinstalls)")
    if manifest.epoch < epoch_counter:
        raise FirmwareError(f"security epoch {manifest.epoch} is below the device's anti-rollback counter {epoch_counter}")
    return manifest
