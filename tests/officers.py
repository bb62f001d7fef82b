"""Officers who approve spends in tests: each an account with its own ed25519 approval key, enrolled on
first use. Their approvals are real signatures over the spend's unsigned transaction."""
from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import select

from coordinator.accounts import canonical_username
from custody.people import credentials
from custody.people.credential_models import ApproverCredential
from custody.people.models import User
from custody.spending import spends


def approval_key(name: str) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"officer {canonical_username(name)}".encode()).digest())


def public_hex(name: str) -> str:
    return approval_key(name).public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def key_file(tmp_path, name: str):
    """The officer's key as a PEM file, for the CLI."""
    path = tmp_path / f"{canonical_username(name)}.pem"
    path.write_bytes(approval_key(name).private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    return path


def enroll(session, name: str) -> User:
    """The officer's account (made if missing, with no password: it never logs in) and their key."""
    username = canonical_username(name)
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        user = User(username=username, role="officer", password_hash="")
        session.add(user)
        session.flush()
    if session.scalar(select(ApproverCredential.id).where(ApproverCredential.public_key == public_hex(name))) is None:
        credentials.enroll_key(session, user, public_hex(name), label="test key", actor="test")
    return user


def proof(session, spend, name: str) -> dict:
    return signed(spends.approval_message(session, spend), name)


def signed(message: bytes | str, name: str) -> dict:
    """`name`'s approval proof over `message` (the text of POST /api/spends/{id}/approval-request)."""
    message = message.encode() if isinstance(message, str) else message
    return {"kind": "ed25519", "public_key": public_hex(name), "signature": approval_key(name).sign(message).hex()}


def approve(session, spend, name: str):
    """`name` approves `spend` with their key."""
    enroll(session, name)
    return spends.decide(session, spend, name, True, proof(session, spend, name))


def enroll_via_api(call, name: str) -> None:
    """`name` enrols their key themself (POST /api/me/approval-credentials), unless it is enrolled already.
    `call(method, path, **kw)` makes a request as `name` and returns the response."""
    listed = call("GET", "/api/me/approval-credentials")
    assert listed.status_code == 200, listed.text
    if any(c["public_key"] == public_hex(name) for c in listed.json()):
        return
    made = call("POST", "/api/me/approval-credentials", json={"public_key": public_hex(name)})
    assert made.status_code == 201, made.text


def approve_via_api(call, spend_id: int, name: str):
    """`name` approves spend `spend_id` as an officer does over the API: enrol their key (first time), ask for
    the approval message, sign it, send the signature. `call(method, path, **kw)` makes a request as `name`.
    Returns the approval's response, or the approval request's when that was refused."""
    enroll_via_api(call, name)
    asked = call("POST", f"/api/spends/{spend_id}/approval-request")
    if asked.status_code != 200:
        return asked
    return call("POST", f"/api/spends/{spend_id}/approve", json={"proof": signed(asked.json()["message"], name)})


def proof_via_api(call, spend_id: int, name: str) -> dict:
    """`name`'s approval proof for spend `spend_id`, made as approve_via_api makes it but not sent (for tests
    that send it themselves, several times at once)."""
    enroll_via_api(call, name)
    asked = call("POST", f"/api/spends/{spend_id}/approval-request")
    assert asked.status_code == 200, asked.text
    return signed(asked.json()["message"], name)


def device_approvers(*names: str) -> dict:
    """The `approvers` of a device policy naming these officers' keys."""
    return {canonical_username(n): {"type": "ed25519", "key": public_hex(n)} for n in names}
