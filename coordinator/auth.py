"""Who is asking, and may they: the permission table, session cookies, API tokens and CSRF checks.

Every route is registered with an action; PERMISSIONS says which roles may perform it, and the server
refuses everyone else before the route runs. A route without an entry cannot be registered.
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import HTTPException, Request

from coordinator import accounts

ALL = ("admin", "officer", "signatory", "auditor", "viewer")
READERS = ALL
SESSION_COOKIE = "custody_session"
LOGIN_CSRF_COOKIE = "custody_login_csrf"
CSRF_HEADER = "x-csrf-token"

# action -> roles. Admins configure but move no money; officers request, approve and broadcast;
# signatories fetch PSBTs and upload signatures; auditors read everything incl. the event log.
PERMISSIONS: dict[str, tuple[str, ...]] = {
    "public": ("anonymous",) + ALL,
    "me": ALL,
    "dashboard.read": READERS,
    "ledger.read": READERS,
    "policy.read": READERS,
    "policy.export": ("admin", "officer", "signatory", "auditor"),
    "policy.write": ("admin",),
    "key.read": ("admin", "officer", "signatory", "auditor"),
    "key.write": ("admin",),
    "rule.write": ("admin",),
    "utxo.write": ("officer",),
    "label.read": ("admin", "officer", "auditor"),
    "label.write": ("officer",),
    "spend.read": READERS,
    "spend.request": ("officer",),
    "spend.decide": ("officer",),
    "approver.enroll": ("officer",),             # enrol and revoke one's own approval passkeys and key files
    "approver.read": ("admin", "officer", "signatory", "auditor"),   # the approver keys devices install
    "spend.operate": ("officer",),               # make the PSBT, broadcast, track, bump, cancel
    "psbt.download": ("officer", "signatory"),
    "psbt.upload": ("signatory",),
    "psbt.tools": ALL,
    "log.read": ("admin", "officer", "auditor"),
    "sync": ("admin", "officer"),
    "user.admin": ("admin",),
    "token.self": ALL,                           # list one's own tokens (admins: everyone's)
    # make one's own tokens, revoke one's own (admins: anyone's). Not viewers, so never a viewer-scope
    # token: read-only access stays read-only (coordinator.accounts.create_token keeps a token to its own
    # role or viewer, and revoke_token others' tokens to admin-scope callers)
    "token.write": ("admin", "officer", "signatory", "auditor"),
    "metrics": ("admin", "officer", "auditor", "viewer"),
    "device.read": ("admin", "officer", "signatory", "auditor"),
    "device.admin": ("admin",),                  # issue, connect, ceremonies, firmware, rotations
    "device.confirm": ("signatory",),            # the holder confirms what their device shows
    "device.sign": ("signatory",),               # have one's device sign a spend or a proof of reserves
    "reserves.read": ("admin", "officer", "signatory", "auditor"),   # runs, messages, packages, reports
    "reserves.create": ("officer",),             # start a run with the auditor's nonce, finalize, self-check
    "reserves.schedule": ("officer",),           # schedule re-proofs
    "mining.read": ("admin", "officer", "auditor"),      # treasury data: overview, statements, findings, sweeps
    "mining.configure": ("admin", "officer"),            # pools, accounts and their terms, fleet devices
    "mining.operate": ("officer",),              # import statements and telemetry, reconcile, resolve findings
    "mining.sweep": ("officer",),                # sweep the fleet wallet into custody
    # governance changes (rules, statuses, roles) are proposals that others approve (custody.governance.proposals)
    "governance.read": ("admin", "officer", "auditor"),
    "governance.propose": ("admin", "officer"),  # propose, and cancel one's own proposal
    "governance.decide": ("admin", "officer"),   # approve or reject others' proposals, run what is due
}


@dataclass(frozen=True)
class Principal:
    user_id: int
    username: str
    role: str
    via: str                    # "session" or "token"
    csrf_token: str | None      # sessions only


class LoginRequired(Exception):
    """A page asked for without a session: the console redirects to the login page."""


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def identify(request: Request) -> Principal | None:
    """The caller, from an `Authorization: Bearer` token or the session cookie; None if neither."""
    sessions = request.app.state.sessions
    token = _bearer(request)
    with sessions() as s:
        if token is not None:
            found = accounts.find_token(s, token)
            if found is None:
                raise HTTPException(401, "this API token is unknown, expired or revoked")
            row, user = found
            return Principal(user.id, user.username, row.role, "token", None)
        found = accounts.find_session(s, request.cookies.get(SESSION_COOKIE),
                                      idle=getattr(request.app.state, "session_idle", None))
        principal = None if found is None else Principal(found[1].id, found[1].username, found[1].role, "session",
                                                         found[0].csrf_token)
        s.commit()          # a session seen (at most once a minute) or ended for idling
        return principal


def allowed(action: str, role: str) -> bool:
    return role in PERMISSIONS[action]


def authorize(action: str, *, page: bool = False):
    """A FastAPI dependency: the Principal allowed to perform `action`, or 401/403 (pages: redirect)."""
    if action not in PERMISSIONS:
        raise KeyError(f"no permission entry for action {action!r}")

    async def dependency(request: Request) -> Principal | None:
        principal = await identified(request)
        permit(action, principal, page=page)
        if principal is None:
            return None
        if principal.via == "session" and request.method not in ("GET", "HEAD", "OPTIONS") and action != "public":
            await _check_csrf(request, principal.csrf_token)
        request.state.principal = principal
        return principal
    return dependency


def permit(action: str, principal: Principal | None, *, page: bool = False) -> None:
    """Refuse a caller `action` does not admit: 401 (pages: LoginRequired, the login redirect), or 403."""
    if principal is None:
        if "anonymous" in PERMISSIONS[action]:
            return
        if page:
            raise LoginRequired()
        raise HTTPException(401, "log in, or send an API token as 'Authorization: Bearer <token>'")
    if not allowed(action, principal.role):
        raise HTTPException(403, f"the {principal.role} role may not do this ({action})")


IDENTIFIED = "custody.identified"       # scope key: identify()'s answer for this request


async def identified(request: Request) -> Principal | None:
    """identify(), once per request and off the event loop (it reads and writes the database). The
    request gate asks first, before the body is read, and keeps the answer in the scope; an
    HTTPException (an unknown token) is kept and raised again for every asker."""
    if IDENTIFIED not in request.scope:
        if _bearer(request) is None and not request.cookies.get(SESSION_COOKIE):
            outcome = None                                  # nothing to look up
        else:
            import anyio.to_thread

            def look_up():
                try:
                    return identify(request)
                except HTTPException as e:
                    return e
            outcome = await anyio.to_thread.run_sync(look_up)
        request.scope[IDENTIFIED] = outcome
    outcome = request.scope[IDENTIFIED]
    if isinstance(outcome, HTTPException):
        raise HTTPException(outcome.status_code, outcome.detail, headers=outcome.headers)
    return outcome


async def _check_csrf(request: Request, expected: str | None) -> None:
    """Unsafe requests made with the session cookie carry the session's CSRF token, in a header (API,
    scripts) or in the form's csrf_token field (console forms)."""
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        given = (await request.form()).get("csrf_token")
    if not expected or not isinstance(given, str) or not hmac.compare_digest(given, expected):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")


def cookie_is_secure(request: Request) -> bool:
    """Secure cookies behind TLS (directly, or a proxy saying so)."""
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"


# Every (method, path, action) registered through `route`: the permission test walks this table.
ROUTE_TABLE: list[tuple[str, str, str]] = []
# (method, path) -> (action, page) of the same routes: the request gate (coordinator/body_limit.py)
# refuses by it before FastAPI reads a body.
ROUTE_ACCESS: dict[tuple[str, str], tuple[str, bool]] = {}


def route(router, method: str, path: str, action: str, *, page: bool = False, **kwargs):
    """Register a route whose permission is checked before it runs."""
    from fastapi import Depends
    dependency = Depends(authorize(action, page=page))

    def register(func):
        entry = (method, (getattr(router, "prefix", "") or "") + path, action)
        if entry not in ROUTE_TABLE:
            ROUTE_TABLE.append(entry)
        ROUTE_ACCESS[entry[:2]] = (action, page)
        kwargs.setdefault("include_in_schema", not page)
        if not page:
            from coordinator.refusals import declared
            kwargs["responses"] = {**declared(action), **kwargs.get("responses", {})}
        router.add_api_route(path, func, methods=[method], dependencies=[dependency], **kwargs)
        return func
    return register
