"""Officers' approval credentials, and the approvals made with them.

An approval of a spend is the officer's own signature over the spend's unsigned transaction
(`custody_signer.approvals.approval_message`): a passkey assertion from the console (WebAuthn, checked
here with the `fido2` library) or a signature by a key file (ed25519 or P-256) from the CLI or
automation. The coordinator keeps only public keys; it checks each approval before recording it, and
the same bytes travel in the PSBT to the devices, which check them again against the keys their own
policy names. So a coordinator that invents or moves an approval is refused by the devices.
"""
from __future__ import annotations

import functools
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from embit.psbt import PSBT
from embit.script import Script
from embit.networks import NETWORKS
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from custody_signer import approvals as protocol
from custody_signer.wallets import policy_id

from .account_models import User
from .credential_models import ApprovalChallenge, ApproverCredential
from .errors import CustodyError, NotFound
from .eventlog import record
from .models import Address, Policy

RP_NAME = "Custody"
ENROLL_SECONDS = 300


def rp_id() -> str:
    """The relying party passkeys are made for: the console's host name (CUSTODY_RP_ID, default localhost)."""
    return os.environ.get("CUSTODY_RP_ID", "localhost").strip().lower()


@functools.lru_cache(maxsize=8)
def _server_for(rp: str):
    import fido2.utils
    from fido2.server import Fido2Server
    from fido2.webauthn import PublicKeyCredentialRpEntity
    # fido2 re-reads each data class's type hints on every parse (typing.get_type_hints: two thirds of an
    # enrolment's or approval's time, bench/approvals.py); a class's hints never change, so keep them
    if not hasattr(fido2.utils.get_type_hints, "cache_info"):
        fido2.utils.get_type_hints = functools.lru_cache(maxsize=None)(fido2.utils.get_type_hints)
    return Fido2Server(PublicKeyCredentialRpEntity(name=RP_NAME, id=rp))


def _server():
    return _server_for(rp_id())


def _enrolment_server():
    """The server for enrolments: ES256 keys only, since the devices verify P-256 signatures only."""
    from fido2.server import Fido2Server
    from fido2.webauthn import PublicKeyCredentialParameters, PublicKeyCredentialRpEntity, PublicKeyCredentialType
    _server()                                     # the type-hint cache above
    enrolling = Fido2Server(PublicKeyCredentialRpEntity(name=RP_NAME, id=rp_id()))
    enrolling.allowed_algorithms = [PublicKeyCredentialParameters(type=PublicKeyCredentialType.PUBLIC_KEY, alg=-7)]
    return enrolling


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _officer(session: Session, user: User) -> User:
    if user.role != "officer":
        raise CustodyError(f"{user.username} is {user.role}; only officers hold approval credentials")
    return user


# -- enrolment ---------------------------------------------------------------------------------------------
def enroll_key(session: Session, user: User, public_key: str, *, label: str, actor: str) -> ApproverCredential:
    """Enrol a key file's public key: 64 hex digits (ed25519), 66 (compressed P-256), or a PEM public key."""
    kind, raw = read_public_key(public_key)
    return _add(session, _officer(session, user), kind, raw, label=label, actor=actor)


def read_public_key(text: str) -> tuple[str, bytes]:
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode())
        except ValueError:
            raise CustodyError("not a PEM public key") from None
        return _public(key)
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise CustodyError("a public key is hex (32-byte ed25519 or 33-byte compressed P-256) or PEM") from None
    kind = {32: "ed25519", 33: "p256"}.get(len(raw))
    if kind is None:
        raise CustodyError("a public key is 32 bytes (ed25519) or a 33-byte compressed P-256 point")
    try:
        protocol.parse_approver("key", {"type": kind, "key": raw.hex()})
    except protocol.ApprovalError:
        raise CustodyError(f"not a valid {kind} public key") from None
    return kind, raw


def _public(key) -> tuple[str, bytes]:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519", key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "p256", key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    raise CustodyError("approval keys are ed25519 or P-256")


def _add(session: Session, user: User, kind: str, raw: bytes, *, label: str, actor: str, **webauthn) -> ApproverCredential:
    label = label.strip() or kind
    if session.scalar(select(ApproverCredential.id).where(ApproverCredential.public_key == raw.hex())) is not None:
        raise CustodyError("this key is already enrolled: one key belongs to one officer")
    credential = ApproverCredential(user_id=user.id, kind=kind, public_key=raw.hex(), label=label[:100],
                                    sign_count=0, **webauthn)
    session.add(credential)
    session.flush()
    record(session, "approver.enrolled", actor, f"user:{user.username}",
           {"credential": credential.id, "kind": kind, "public_key": raw.hex(), "label": credential.label,
            "rp_id": credential.rp_id})
    return credential


def begin_passkey(session: Session, user: User) -> dict:
    """Options for navigator.credentials.create(); the ceremony is finished by finish_passkey."""
    from fido2.webauthn import PublicKeyCredentialUserEntity, ResidentKeyRequirement, UserVerificationRequirement
    _officer(session, user)
    existing = [_attested(c) for c in _active(session, user) if c.kind == "webauthn"]
    options, state = _enrolment_server().register_begin(
        PublicKeyCredentialUserEntity(id=f"custody-user-{user.id}".encode(), name=user.username,
                                      display_name=user.username),
        credentials=existing, user_verification=UserVerificationRequirement.PREFERRED,
        resident_key_requirement=ResidentKeyRequirement.DISCOURAGED)
    _keep_state(session, user, "enroll", state)
    return dict(options)


def finish_passkey(session: Session, user: User, response: dict, *, label: str, actor: str) -> ApproverCredential:
    from fido2.cose import ES256
    state = _take_state(session, user, "enroll")
    try:
        auth_data = _server().register_complete(state, response)
    except (ValueError, KeyError, TypeError) as e:
        raise CustodyError(f"the passkey was not enrolled: {e}") from None
    data = auth_data.credential_data
    if not isinstance(data.public_key, ES256):
        raise CustodyError("the passkey must use ES256 (P-256): the devices verify only that")
    point = ec.EllipticCurvePublicNumbers(int.from_bytes(data.public_key[-2], "big"),
                                          int.from_bytes(data.public_key[-3], "big"), ec.SECP256R1()).public_key()
    raw = point.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    from fido2.utils import websafe_encode
    return _add(session, _officer(session, user), "webauthn", raw, label=label or "passkey", actor=actor,
                rp_id=rp_id(), credential_id=websafe_encode(data.credential_id), attested=bytes(data).hex())


def _keep_state(session: Session, user: User, purpose: str, state: dict) -> None:
    session.execute(ApprovalChallenge.__table__.delete().where(ApprovalChallenge.user_id == user.id,
                                                               ApprovalChallenge.purpose == purpose))
    session.add(ApprovalChallenge(user_id=user.id, purpose=purpose, state=json.dumps(state),
                                  expires_at=_now() + timedelta(seconds=ENROLL_SECONDS)))
    session.flush()


def _take_state(session: Session, user: User, purpose: str) -> dict:
    row = session.scalar(select(ApprovalChallenge).where(ApprovalChallenge.user_id == user.id,
                                                         ApprovalChallenge.purpose == purpose))
    if row is None or _aware(row.expires_at) < _now():
        raise CustodyError("no passkey enrolment is under way (or it expired): start again")
    session.delete(row)            # one use
    session.flush()
    return json.loads(row.state)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _attested(credential: ApproverCredential):
    from fido2.webauthn import AttestedCredentialData
    return AttestedCredentialData(bytes.fromhex(credential.attested))


def _active(session: Session, user: User) -> list[ApproverCredential]:
    return list(session.scalars(select(ApproverCredential).where(
        ApproverCredential.user_id == user.id, ApproverCredential.revoked_at.is_(None)).order_by(ApproverCredential.id)))


def revoke(session: Session, user: User, credential_id: int, *, actor: str) -> None:
    credential = session.get(ApproverCredential, credential_id)
    if credential is None or credential.user_id != user.id or credential.revoked_at is not None:
        raise NotFound(f"{user.username} has no active credential #{credential_id}")
    credential.revoked_at = _now()
    record(session, "approver.revoked", actor, f"user:{user.username}",
           {"credential": credential.id, "public_key": credential.public_key})


def credential_json(credential: ApproverCredential) -> dict:
    return {"id": credential.id, "kind": credential.kind, "label": credential.label,
            "public_key": credential.public_key, "rp_id": credential.rp_id,
            "created_at": credential.created_at.isoformat(),
            "revoked_at": credential.revoked_at.isoformat() if credential.revoked_at else None}


def list_credentials(session: Session, user: User) -> list[dict]:
    return [credential_json(c) for c in session.scalars(select(ApproverCredential).where(
        ApproverCredential.user_id == user.id).order_by(ApproverCredential.id))]


def device_approvers(session: Session) -> dict[str, dict]:
    """Every officer's active credentials as the devices' policy names them (`approvers` entries): what
    each signatory reviews and installs on their own device."""
    entries = {}
    for credential, user in session.execute(select(ApproverCredential, User).join(User).where(
            ApproverCredential.revoked_at.is_(None), User.role == "officer").order_by(User.username, ApproverCredential.id)):
        name = f"{user.username}" if credential.kind != "webauthn" else f"{user.username}-passkey"
        name = name if name not in entries else f"{name}-{credential.id}"
        entries[name] = protocol.approver_entry(protocol.Approver(name, credential.kind, bytes.fromhex(credential.public_key),
                                                                  credential.rp_id))
    return entries


# -- approvals ---------------------------------------------------------------------------------------------
def approval_message(session: Session, policy: Policy, psbt_b64: str, change_index: int | None = None) -> bytes:
    """The message officers sign for a spend's unsigned transaction, as the devices will rebuild it: an
    output is change when it pays this policy's own address and the PSBT gives its derivation."""
    psbt = PSBT.from_string(psbt_b64)
    network = NETWORKS[policy.network]
    outputs = []
    for tx_out, scope in zip(psbt.tx.vout, psbt.outputs):
        ours = session.scalar(select(Address.id).where(Address.policy_id == policy.id,
                                                       Address.script_pubkey == tx_out.script_pubkey.data))
        derived = bool(scope.bip32_derivations or getattr(scope, "taproot_bip32_derivations", None))
        outputs.append((Script(tx_out.script_pubkey.data).address(network), tx_out.value, ours is not None and derived))
    fee = sum(i.utxo.value for i in psbt.inputs) - sum(o.value for o in psbt.tx.vout)
    return protocol.approval_message(policy_id(policy.name, policy.descriptor), psbt.tx.txid().hex(), outputs, fee)


def assertion_options(session: Session, user: User, message: bytes) -> dict | None:
    """Options for navigator.credentials.get(): the challenge is the message's SHA-256, so the assertion
    is an approval of exactly this transaction. None when the officer has no passkey (key files only)."""
    from fido2.webauthn import UserVerificationRequirement
    passkeys = [_attested(c) for c in _active(session, _officer(session, user)) if c.kind == "webauthn"]
    if not passkeys:
        return None
    options, _ = _server().authenticate_begin(passkeys, user_verification=UserVerificationRequirement.PREFERRED,
                                              challenge=protocol.challenge(message))
    return dict(options)


def check_approval(session: Session, user: User, message: bytes, proof: dict) -> tuple[ApproverCredential, protocol.Approval]:
    """The officer's credential and the approval to carry in the PSBT, once `proof` verifies as their
    approval of `message`; otherwise CustodyError saying why. `proof` is either
    {"kind": "webauthn", "credential": <the browser's PublicKeyCredential JSON>} or
    {"kind": "ed25519"|"p256", "public_key": hex, "signature": hex}."""
    _officer(session, user)
    if not isinstance(proof, dict) or proof.get("kind") not in protocol.SUBTYPES:
        raise CustodyError("an approval is a passkey assertion or a key file's signature")
    credentials = [c for c in _active(session, user) if c.kind == proof["kind"]]
    if proof["kind"] == "webauthn":
        credential, approval = _check_assertion(session, user, credentials, message, proof.get("credential"))
    else:
        credential, approval = _check_signature(user, credentials, message, proof)
    why = protocol.verify(protocol.Approver(user.username, credential.kind, bytes.fromhex(credential.public_key),
                                            credential.rp_id), approval, message)
    if why is not None:
        raise CustodyError(f"approval refused: {why}")
    return credential, approval


def _check_signature(user: User, credentials: list[ApproverCredential], message: bytes, proof: dict):
    wanted = str(proof.get("public_key", "")).lower()
    credential = next((c for c in credentials if c.public_key == wanted), None)
    if credential is None:
        raise CustodyError(f"approval refused: that key is not one of {user.username}'s enrolled approval keys")
    try:
        signature = bytes.fromhex(str(proof.get("signature", "")))
    except ValueError:
        raise CustodyError("approval refused: the signature is not hex") from None
    return credential, protocol.Approval(credential.kind, bytes.fromhex(credential.public_key), signature)


def _check_assertion(session: Session, user: User, credentials: list[ApproverCredential], message: bytes, response):
    from fido2.utils import websafe_decode
    from fido2.webauthn import AuthenticationResponse
    if not isinstance(response, dict):
        raise CustodyError("approval refused: no passkey assertion")
    try:
        parsed = AuthenticationResponse.from_dict(response)
    except (ValueError, KeyError, TypeError) as e:
        raise CustodyError(f"approval refused: not a passkey assertion ({e})") from None
    credential = next((c for c in credentials if websafe_decode(c.credential_id) == parsed.raw_id), None)
    if credential is None:
        raise CustodyError(f"approval refused: that passkey is not one of {user.username}'s enrolled passkeys")
    from fido2.utils import websafe_encode
    state = {"challenge": websafe_encode(protocol.challenge(message)), "user_verification": None}
    try:
        _server().authenticate_complete(state, [_attested(credential)], response)
    except ValueError as e:
        raise CustodyError(f"approval refused: {e}") from None
    data = parsed.response
    counter = data.authenticator_data.counter
    if counter and counter <= credential.sign_count:   # a cloned authenticator (WebAuthn 6.1.1); 0: not kept
        raise CustodyError("approval refused: the passkey's signature counter went backwards (a cloned key?)")
    moved = session.execute(update(ApproverCredential).where(ApproverCredential.id == credential.id,
                                                              ApproverCredential.sign_count == credential.sign_count)
                            .values(sign_count=counter)).rowcount
    if not moved:
        raise CustodyError("approval refused: the passkey was used at the same moment elsewhere; try again")
    packed = protocol.pack_assertion(bytes(data.authenticator_data), bytes(data.client_data), data.signature)
    return credential, protocol.Approval("webauthn", bytes.fromhex(credential.public_key), packed)


# -- key files (the officer's side: CLI, automation) -------------------------------------------------------
def generate_key_file(path: Path, kind: str = "ed25519") -> str:
    """Write a new private key (PKCS#8 PEM, mode 0600) and return its public key in hex."""
    key = ed25519.Ed25519PrivateKey.generate() if kind == "ed25519" else ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return _public(key.public_key())[1].hex()


def sign_with_key_file(path: Path, message: bytes) -> dict:
    """An approval proof signed with a key file: {"kind", "public_key", "signature"}."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise CustodyError(f"cannot read the approval key {path}: {e}") from None
    kind, public = _public(key.public_key())
    signature = key.sign(message) if kind == "ed25519" else key.sign(message, ec.ECDSA(hashes.SHA256()))
    return {"kind": kind, "public_key": public.hex(), "signature": signature.hex()}
