"""The API of one's own account and of the accounts an admin manages: who am I, password and second factor,
users, enrollment links, API tokens."""
from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field

from coordinator import accounts
from custody.errors import CustodyError
from custody.governance import proposals as governance

from coordinator.api.common import ACCEPTED, Id, proposed, Strict
from coordinator.auth import route
from coordinator.context import actor, read, write

router = APIRouter(prefix="/api")


# -- who am I --------------------------------------------------------------------------------------
@route(router, "GET", "/me", "me")
def me(request: Request) -> dict:
    p = request.state.principal
    return {"username": p.username, "role": p.role, "via": p.via}


class PasswordChange(Strict):
    password: str = Field(min_length=1, max_length=1000, description="the current password")
    code: str = Field("", max_length=10, description="a current authenticator code (when the account has TOTP)")
    new_password: str = Field(min_length=12, max_length=1000)


class TotpChange(Strict):
    password: str = Field(min_length=1, max_length=1000, description="the current password")
    code: str = Field("", max_length=10, description="a current code of the present secret (when there is one)")
    new_secret: str = Field(min_length=32, max_length=64, description="base32, 160 bits or more: the new secret")
    new_code: str = Field(min_length=6, max_length=10, description="the code the new secret gives now")


def _own_credentials(request: Request, change) -> dict:
    """Run `change(session, user, keep_session)` as the caller; a wrong current password or code counts
    as a failed login (coordinator.accounts commits that itself) and is answered 400."""
    from coordinator.auth import SESSION_COOKIE
    from fastapi import HTTPException
    p = request.state.principal
    keep = request.cookies.get(SESSION_COOKIE) if p.via == "session" else None
    with request.app.state.sessions() as s:
        user = accounts.user_by_id(s, p.user_id)
        if p.role != user.role:
            raise HTTPException(403, "a viewer-scope token cannot change credentials")
        try:
            change(s, user, keep)
        except accounts.AuthError as e:
            raise CustodyError(str(e)) from None
        s.commit()
        return accounts.user_json(accounts.user_by_id(s, p.user_id))


@route(router, "POST", "/me/password", "me")
def change_password(request: Request, body: PasswordChange) -> dict:
    """Change one's own password; one's other login sessions end."""
    return _own_credentials(request, lambda s, user, keep: accounts.change_password(
        s, user, body.password, body.code, body.new_password, keep_session=keep))


@route(router, "POST", "/me/totp", "me")
def change_totp(request: Request, body: TotpChange) -> dict:
    """Enroll a new TOTP secret (make one with 20 random bytes in base32, or take the account page's)."""
    return _own_credentials(request, lambda s, user, keep: accounts.change_totp(
        s, user, body.password, body.code, body.new_secret, body.new_code, keep_session=keep))


# -- accounts and tokens ---------------------------------------------------------------------------
class UserIn(Strict):
    username: str = Field(min_length=1, max_length=64)
    role: Literal["admin", "officer", "signatory", "auditor", "viewer"]
    second_factor: bool = Field(False, description="require a second factor of a role that does not need one")


class UserChange(Strict):
    role: Literal["admin", "officer", "signatory", "auditor", "viewer"] | None = None
    disabled: bool | None = None
    unlock: bool = False


class TokenIn(Strict):
    name: str = Field(min_length=1, max_length=100)
    role: Literal["admin", "officer", "signatory", "auditor", "viewer"] | None = None
    expires_in_days: int = Field(90, ge=1, le=3650)


@route(router, "GET", "/users", "user.admin")
def list_users(request: Request) -> list[dict]:
    with read(request) as s:
        return [accounts.user_json(u) for u in accounts.list_users(s)]


def enrollment_shown(request: Request, token: str, link) -> dict:
    """The one-time link for the admin to hand over (its token is in no log and no database)."""
    return {"enrollment_link": str(request.base_url).rstrip("/") + f"/enroll/{token}",
            "enrollment_expires_at": link.expires_at.isoformat()}


@route(router, "POST", "/users", "user.admin", status_code=201)
def create_user(request: Request, body: UserIn) -> dict:
    """The account and its one-time enrollment link: its holder sets their own password and second factor.
    An admin or officer starts as a viewer and the role is proposed (`proposal`): others approve it."""
    with write(request) as s:
        user, token, link, proposal = accounts.invite(s, body.username, body.role, second_factor=body.second_factor,
                                                        actor=actor(request))
        answer = {**accounts.user_json(user), **enrollment_shown(request, token, link)}
        return {**answer, "proposal": governance.proposal_json(s, proposal)} if proposal else answer


@route(router, "POST", "/users/{username}/reset", "user.admin")
def reset_user(request: Request, username: str) -> dict:
    """Clear the user's password and second factor, end their sessions and tokens, and give a new link."""
    with write(request) as s:
        user = accounts.get_user(s, username)
        token, link = accounts.reset_credentials(s, user, actor=actor(request),
                                                 by=accounts.user_by_id(s, request.state.principal.user_id))
        return {**accounts.user_json(user), **enrollment_shown(request, token, link)}


@route(router, "PATCH", "/users/{username}", "user.admin", responses=ACCEPTED)
def change_user(request: Request, username: str, body: UserChange) -> dict:
    """Disabling and unlocking take effect at once; a new role is proposed (custody.governance.proposals), and then the
    answer is 202 with the proposal."""
    with write(request) as s:
        user = accounts.get_user(s, username)
        if user.id == request.state.principal.user_id and (body.disabled or (body.role and body.role != "admin")):
            raise CustodyError("an admin cannot disable or demote their own account")
        proposal = None
        if body.role is not None and body.role != user.role:
            proposal = governance.propose(s, "user_role", user.username, {"role": body.role}, actor(request))
        if body.disabled is not None:
            accounts.set_disabled(s, user, body.disabled, actor=actor(request))
        if body.unlock:
            accounts.unlock(s, user, actor=actor(request))
        return proposed(s, proposal) if proposal is not None else accounts.user_json(user)


@route(router, "GET", "/tokens", "token.self")
def list_tokens(request: Request) -> list[dict]:
    p = request.state.principal
    with read(request) as s:
        return accounts.list_tokens(s, None if p.role == "admin" else accounts.user_by_id(s, p.user_id))


@route(router, "POST", "/tokens", "token.write", status_code=201)
def create_token(request: Request, body: TokenIn) -> dict:
    p = request.state.principal
    with write(request) as s:
        user = accounts.user_by_id(s, p.user_id)
        # a token makes tokens of its own role or viewer only (coordinator.accounts.create_token)
        token, row = accounts.create_token(s, user, body.name, role=body.role or p.role,
                                           expires_in_days=body.expires_in_days,
                                           scope=p.role if p.via == "token" else None)
        return {"token": token, "id": row.id, "name": row.name, "role": row.role,
                "expires_at": row.expires_at.isoformat() if row.expires_at else None}


@route(router, "DELETE", "/tokens/{token_id}", "token.write", status_code=204)
def revoke_token(request: Request, token_id: Id):
    p = request.state.principal
    with write(request) as s:
        accounts.revoke_token(s, token_id, by=accounts.user_by_id(s, p.user_id), role=p.role)
    return Response(status_code=204)
