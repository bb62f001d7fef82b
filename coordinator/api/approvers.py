"""The API of officers' approval credentials: passkeys and key files, enrolled by the officer themself.

Only public keys reach the coordinator. `GET /api/approvers` is what each signatory reviews and installs
as the approvers of their device's policy; the devices then count only approvals by these keys.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path as PathParam, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from custody.people import credentials

from coordinator import accounts
from coordinator.auth import route
from coordinator.context import actor, read, write

router = APIRouter(prefix="/api")
Id = Annotated[int, PathParam(ge=1, le=2**31 - 1)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyIn(Strict):
    public_key: str = Field(min_length=64, max_length=2000, description="hex (32-byte ed25519 or 33-byte "
                            "compressed P-256) or a PEM public key; the private key stays with the officer")
    label: str = Field("key file", max_length=100)


class PasskeyIn(Strict):
    credential: dict = Field(description="the browser's PublicKeyCredential.toJSON() from navigator.credentials.create()")
    label: str = Field("passkey", max_length=100)


def _me(request: Request, s):
    return accounts.user_by_id(s, request.state.principal.user_id)


@route(router, "GET", "/me/approval-credentials", "approver.enroll")
def my_credentials(request: Request) -> list[dict]:
    with read(request) as s:
        return credentials.list_credentials(s, _me(request, s))


@route(router, "POST", "/me/approval-credentials", "approver.enroll", status_code=201)
def enroll_key(request: Request, body: KeyIn) -> dict:
    with write(request) as s:
        return credentials.credential_json(credentials.enroll_key(s, _me(request, s), body.public_key,
                                                                  label=body.label, actor=actor(request)))


@route(router, "POST", "/me/passkeys/options", "approver.enroll")
def passkey_options(request: Request) -> dict:
    """Options for navigator.credentials.create(); finish with POST /me/passkeys within five minutes."""
    with write(request) as s:
        return credentials.begin_passkey(s, _me(request, s))


@route(router, "POST", "/me/passkeys", "approver.enroll", status_code=201)
def enroll_passkey(request: Request, body: PasskeyIn) -> dict:
    with write(request) as s:
        return credentials.credential_json(credentials.finish_passkey(s, _me(request, s), body.credential,
                                                                      label=body.label, actor=actor(request)))


@route(router, "DELETE", "/me/approval-credentials/{credential_id}", "approver.enroll", status_code=204)
def revoke(request: Request, credential_id: Id) -> Response:
    with write(request) as s:
        credentials.revoke(s, _me(request, s), credential_id, actor=actor(request))
    return Response(status_code=204)


@route(router, "GET", "/approvers", "approver.read")
def approvers(request: Request) -> dict:
    """Every officer's active approval keys, as a device policy's `approvers` names them."""
    with read(request) as s:
        return {"approvers": credentials.device_approvers(s)}
