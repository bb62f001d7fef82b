"""Officers' approval credentials, and the approvals made with them.

An approval of a spend is the officer's own signature over the spend's unsigned transaction
(`custody_signer.protocol.approval_message`): a passkey assertion from the console (WebAuthn, checked
here with the `fido2` library) or a signature by a key file (ed25519 or P-256) from the CLI or
automation. The coordinator keeps only public keys; it checks each approval before recording it, and
the same bytes travel in the PSBT to the devices, which check them again against the keys their own
policy names. So a coordinator that invents or moves an approval is refused by the devices.

A login passkey (anyone's second factor, coordinator.accounts) is made and checked by the same WebAuthn
ceremonies, but it is a credential of its own (purpose "login"), never an approval key, and an approval
passkey never logs in: a login's challenge is whatever the coordinator sends, so an assertion made for
a login with an approval key could be the approval of a transaction the officer never saw.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
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

from custody_signer import protocol
from custody_signer.protocol import policy_id

from custody.errors import CustodyError, NotFound
from custody.eventlog.log import record
from custody.ledger.models import Address, Policy
from custody.people.credential_models import ApprovalChallenge, ApproverCredential
from custody.people.models import User

RP_NAME = "Custody"
ENROLL_SECONDS = 300
LOGIN_SECONDS = 120          # a login's (or a re-authentication's) passkey step: short-lived and single use
APPROVAL, LOGIN = "approval", "login"        # ApproverCredential.purpose


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


def _add(session: Session, user: User, kind: str, raw: bytes, *, label: str, actor: str, purpose: str = APPROVAL,
         **webauthn) -> ApproverCredential:
    label = label.strip() or kind
    if session.scalar(select(ApproverCredential.id).where(ApproverCredential.public_key == raw.hex())) is not None:
        raise CustodyError("this key is already enrolled: one key belongs to one officer" if purpose == APPROVAL
                           else "this passkey is already enrolled: make a new one")
    credential = ApproverCredential(user_id=user.id, kind=kind, public_key=raw.hex(), label=label[:100],
                                    sign_count=0, purpose=purpose, **webauthn)
    session.add(credential)
    session.flush()
    record(session, "approver.enrolled" if purpose == APPROVAL else "user.passkey_added", actor, f"user:{user.username}",
           {"credential": credential.id, "kind": kind, "public_key": raw.hex(), "label": credential.label,
            "rp_id": credential.rp_id})
    return credential


def begin_passkey(session: Session, user: User) -> dict:
    """Options for navigator.credentials.create(); the ceremony is finished by finish_passkey."""
    _officer(session, user)
    return _begin_registration(session, user, "enroll", f"custody-user-{user.id}", _active(session, user))


def finish_passkey(session: Session, user: User, response: dict, *, label: str, actor: str) -> ApproverCredential:
    raw, webauthn = _registered(session, user, "enroll", response)
    return _add(session, _officer(session, user), "webauthn", raw, label=label or "passkey", actor=actor, **webauthn)


def _begin_registration(session: Session, user: User, purpose: str, handle: str,
                        existing: list[ApproverCredential]) -> dict:
    from fido2.webauthn import PublicKeyCredentialUserEntity, ResidentKeyRequirement, UserVerificationRequirement
    options, state = _enrolment_server().register_begin(
        PublicKeyCredentialUserEntity(id=handle.encode(), name=user.username, display_name=user.username),
        credentials=[_attested(c) for c in existing if c.kind == "webauthn"],
        user_verification=UserVerificationRequirement.PREFERRED,
        resident_key_requirement=ResidentKeyRequirement.DISCOURAGED)
    _keep_state(session, user, purpose, state)
    return dict(options)


def _registered(session: Session, user: User, purpose: str, response: dict) -> tuple[bytes, dict]:
    """The new passkey's compressed P-256 key and its WebAuthn columns, once the browser's answer verifies
    against the registration begun for `purpose` (which this uses up)."""
    from fido2.cose import ES256
    from fido2.utils import websafe_encode
    state = _take_state(session, user, purpose)
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
    return raw, {"rp_id": rp_id(), "credential_id": websafe_encode(data.credential_id), "attested": bytes(data).hex()}


class NoCeremony(CustodyError):
    """No such ceremony is under way for this user (none begun, expired, used, or begun for another)."""


_UNDER_WAY = {"enroll": "no passkey enrolment is under way (or it expired): start again",
              "login-enroll": "no passkey enrolment is under way (or it expired): start again",
              "login": "no passkey login is under way (or it expired after two minutes): log in again",
              "reauth": "no passkey confirmation is under way (or it expired after two minutes): try again"}


def _keep_state(session: Session, user: User, purpose: str, state: dict, seconds: int = ENROLL_SECONDS) -> None:
    session.execute(ApprovalChallenge.__table__.delete().where(ApprovalChallenge.user_id == user.id,
                                                               ApprovalChallenge.purpose == purpose))
    session.add(ApprovalChallenge(user_id=user.id, purpose=purpose, state=json.dumps(state),
                                  expires_at=_now() + timedelta(seconds=seconds)))
    session.flush()


def _take_state(session: Session, user: User, purpose: str, binding: str | None = None) -> dict:
    """The ceremony's state, used up. `binding`: the secret the ceremony was begun for (a pending login,
    a session); a row begun for another is neither given nor used up."""
    row = session.scalar(select(ApprovalChallenge).where(ApprovalChallenge.user_id == user.id,
                                                         ApprovalChallenge.purpose == purpose))
    if row is None or _aware(row.expires_at) < _now():
        raise NoCeremony(_UNDER_WAY[purpose])
    state = json.loads(row.state)
    if binding is not None and not hmac.compare_digest(state.pop("binding", ""), _digest(binding)):
        raise NoCeremony(_UNDER_WAY[purpose])
    # one use: of parallel requests, only the one whose DELETE removed the row goes on
    if session.execute(ApprovalChallenge.__table__.delete().where(ApprovalChallenge.id == row.id)).rowcount != 1:
        raise NoCeremony(_UNDER_WAY[purpose])
    session.expunge(row)
    return state


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _attested(credential: ApproverCredential):
    from fido2.webauthn import AttestedCredentialData
    return AttestedCredentialData(bytes.fromhex(credential.attested))


def _active(session: Session, user: User, purpose: str = APPROVAL) -> list[ApproverCredential]:
    return list(session.scalars(select(ApproverCredential).where(
        ApproverCredential.user_id == user.id, ApproverCredential.purpose == purpose,
        ApproverCredential.revoked_at.is_(None)).order_by(ApproverCredential.id)))


def revoke(session: Session, user: User, credential_id: int, *, actor: str) -> None:
    credential = session.get(ApproverCredential, credential_id)
    if (credential is None or credential.user_id != user.id or credential.revoked_at is not None
            or credential.purpose != APPROVAL):
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
        ApproverCredential.user_id == user.id, ApproverCredential.purpose == APPROVAL).order_by(ApproverCredential.id))]


def device_approvers(session: Session) -> dict[str, dict]:
    """Every officer's active credentials as the devices' policy names them (`approvers` entries): what
    each signatory reviews and installs on their own device."""
    entries = {}
    for credential, user in session.execute(select(ApproverCredential, User).join(User).where(
            ApproverCredential.revoked_at.is_(None), ApproverCredential.purpose == APPROVAL,
            User.role == "officer").order_by(User.username, ApproverCredential.id)):
        name = f"{user.username}" if credential.kind != "webauthn" else f"{user.username}-passkey"
        name = name if name not in entries else f"{name}-{credential.id}"
        entries[name] = protocol.approver_entry(protocol.Approver(name, credential.kind, bytes.fromhex(credential.public_key),
                                                                  credential.rp_id))
    return entries


# -- approvals ---------------------------------------------------------------------------------------------
def approval_message(session: Session, policy: Policy, psbt_b64: str) -> bytes:
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
    from fido2.utils import websafe_encode
    state = {"challenge": websafe_encode(protocol.challenge(message)), "user_verification": None}
    credential, data = _verify_assertion(session, user, credentials, state, response, "approval refused")
    packed = protocol.pack_assertion(bytes(data.authenticator_data), bytes(data.client_data), data.signature)
    return credential, protocol.Approval("webauthn", bytes.fromhex(credential.public_key), packed)


def _verify_assertion(session: Session, user: User, credentials: list[ApproverCredential], state: dict, response,
                      refused: str):
    """The credential of `credentials` that made this assertion over the state's challenge, and the
    assertion, once its signature verifies and its signature counter has moved forward (stored here);
    otherwise CustodyError starting with `refused`."""
    from fido2.utils import websafe_decode
    from fido2.webauthn import AuthenticationResponse
    if not isinstance(response, dict):
        raise CustodyError(f"{refused}: no passkey assertion")
    try:
        parsed = AuthenticationResponse.from_dict(response)
    except (ValueError, KeyError, TypeError) as e:
        raise CustodyError(f"{refused}: not a passkey assertion ({e})") from None
    credential = next((c for c in credentials if websafe_decode(c.credential_id) == parsed.raw_id), None)
    if credential is None:
        raise CustodyError(f"{refused}: that passkey is not one of {user.username}'s enrolled passkeys")
    try:
        _server().authenticate_complete(state, [_attested(credential)], response)
    except ValueError as e:
        raise CustodyError(f"{refused}: {e}") from None
    data = parsed.response
    counter = data.authenticator_data.counter
    if counter and counter <= credential.sign_count:   # a cloned authenticator (WebAuthn 6.1.1); 0: not kept
        raise CustodyError(f"{refused}: the passkey's signature counter went backwards (a cloned key?)")
    moved = session.execute(update(ApproverCredential).where(ApproverCredential.id == credential.id,
                                                              ApproverCredential.sign_count == credential.sign_count)
                            .values(sign_count=counter)).rowcount
    if not moved:
        raise CustodyError(f"{refused}: the passkey was used at the same moment elsewhere; try again")
    return credential, data


# -- login passkeys: anyone's second factor (coordinator.accounts decides when one is asked for) -----------------
def begin_login_passkey(session: Session, user: User) -> dict:
    """Options for navigator.credentials.create() of a login passkey, for a user of any role."""
    # its own user handle, so that an authenticator keeping discoverable credentials per (site, handle)
    # does not replace the officer's approval passkey with it
    return _begin_registration(session, user, "login-enroll", f"custody-login-{user.id}", _active(session, user, LOGIN))


def verify_login_passkey(session: Session, user: User, response) -> tuple[bytes, dict]:
    """The new login passkey, verified (ES256 only) against the registration begun for it, which this
    uses up; stored by add_login_passkey once the rest of the change is allowed."""
    if not isinstance(response, dict):
        raise CustodyError("the passkey was not enrolled: no answer from the browser's navigator.credentials.create()")
    return _registered(session, user, "login-enroll", response)


def add_login_passkey(session: Session, user: User, verified: tuple[bytes, dict], *, actor: str) -> ApproverCredential:
    """Store a verified login passkey as the user's only one (earlier login passkeys are revoked)."""
    revoke_login_passkeys(session, user, actor=actor)
    raw, webauthn = verified
    return _add(session, user, "webauthn", raw, label="login passkey", actor=actor, purpose=LOGIN, **webauthn)


def revoke_login_passkeys(session: Session, user: User, *, actor: str) -> None:
    """Revoke the user's login passkeys and forget their passkey steps under way (a reset, a change)."""
    for credential in _active(session, user, LOGIN):
        credential.revoked_at = _now()
        record(session, "user.passkey_revoked", actor, f"user:{user.username}",
               {"credential": credential.id, "public_key": credential.public_key})
    session.execute(ApprovalChallenge.__table__.delete().where(ApprovalChallenge.user_id == user.id,
                                                               ApprovalChallenge.purpose.in_(("login", "reauth"))))


def login_challenge(session: Session, user: User, purpose: str, binding: str, note: dict | None = None) -> dict:
    """Options for navigator.credentials.get() with the user's login passkeys and a fresh random
    challenge, kept LOGIN_SECONDS for the one ceremony `binding` names (the secret the browser holds for
    a pending login, or its session) and used once. `purpose`: "login" or "reauth". `note`: kept with
    the challenge and given back by check_login_assertion."""
    from fido2.webauthn import UserVerificationRequirement
    passkeys = [_attested(c) for c in _active(session, user, LOGIN)]
    if not passkeys:
        raise CustodyError(f"{user.username} has no login passkey")
    options, state = _server().authenticate_begin(passkeys, user_verification=UserVerificationRequirement.PREFERRED)
    _keep_state(session, user, purpose, {**state, "binding": _digest(binding), "note": note or {}},
                seconds=LOGIN_SECONDS)
    return dict(options)


def check_login_assertion(session: Session, user: User, purpose: str, binding: str, response) -> dict:
    """Verify an assertion made over the challenge login_challenge kept for `binding`, by one of the
    user's login passkeys; the challenge is used up whatever the outcome (the caller commits that).
    Returns the challenge's note. CustodyError says why an assertion is refused."""
    state = _take_state(session, user, purpose, binding)
    note = state.pop("note", {})
    _verify_assertion(session, user, _active(session, user, LOGIN), state, response, "passkey refused")
    return note


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
