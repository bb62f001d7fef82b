"""The console's account pages: logging in and out (password, TOTP, passkey), enrolling by a one-time link,
one's own account, and the accounts and tokens an admin manages."""
from __future__ import annotations

import json
import secrets

from fastapi import APIRouter, Form, Path as PathParam, Request
from fastapi.responses import JSONResponse, RedirectResponse


from coordinator import accounts
from coordinator.accounts import AuthError
from coordinator.api.common import Id
from coordinator.auth import cookie_is_secure, LOGIN_CSRF_COOKIE, route, SESSION_COOKIE
from coordinator.console.pages import back, render, safe_next
from coordinator.context import actor, read, write
from custody.errors import CustodyError
from custody.people import credentials

router = APIRouter()


# -- logging in and out --------------------------------------------------------------------------
@route(router, "GET", "/login", "public", page=True)
def login_page(request: Request, next: str = "/"):
    token = secrets.token_urlsafe(24)
    response = render(request, "login.html", login_csrf=token, next=safe_next(next), error=None)
    response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=cookie_is_secure(request),
                        max_age=1800)
    return response


@route(router, "POST", "/login", "public", page=True)
def login(request: Request, username: str = Form(max_length=64), password: str = Form(max_length=1000),
          code: str = Form("", max_length=10), login_csrf: str = Form(max_length=100), next: str = Form("/")):
    expected = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not expected or not secrets.compare_digest(expected, login_csrf):
        return render(request, "login.html", status_code=403, login_csrf=expected or "", next=safe_next(next),
                      error="the login form expired: reload the page and try again")
    sessions = request.app.state.sessions
    with sessions() as s:
        try:
            user = accounts.start_login(s, username, password, code)
        except AuthError as e:
            s.commit()                # the failed attempt counts towards the lock-out
            return render(request, "login.html", status_code=401, login_csrf=expected, next=safe_next(next),
                          error=str(e), username=username)
        if isinstance(user, accounts.PasskeyLogin):     # the password was right: now the passkey
            return render(request, "login.html", login_csrf=expected, next=safe_next(next), error=None,
                          passkey=user)
        cookie, _ = accounts.start_session(s, user)
        s.commit()
    return _logged_in(request, cookie, next)


def _logged_in(request: Request, cookie: str, next: str) -> RedirectResponse:
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(SESSION_COOKIE, cookie, httponly=True, samesite="strict", secure=cookie_is_secure(request),
                        max_age=int(accounts.SESSION_LIFETIME.total_seconds()))
    response.delete_cookie(LOGIN_CSRF_COOKIE)
    return response


def _browser_json(text: str) -> dict | None:
    """A passkey ceremony's answer as the console's script posts it (PublicKeyCredential.toJSON()); None
    when the field is empty."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        raise CustodyError("the passkey's answer is not JSON: reload the page and try again") from None
    return value if isinstance(value, dict) else {}


@route(router, "POST", "/login/passkey", "public", page=True)
def login_passkey(request: Request, username: str = Form(max_length=64), pending: str = Form(max_length=100),
                  assertion: str = Form("", max_length=20_000), login_csrf: str = Form(max_length=100),
                  next: str = Form("/")):
    """The second step of a passkey account's login: the assertion over the challenge of its password step."""
    expected = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not expected or not secrets.compare_digest(expected, login_csrf):
        return render(request, "login.html", status_code=403, login_csrf=expected or "", next=safe_next(next),
                      error="the login form expired: reload the page and try again")
    with request.app.state.sessions() as s:
        try:
            try:
                answer = _browser_json(assertion)
            except CustodyError:
                answer = {}
            user = accounts.finish_passkey_login(s, username, pending, answer)
        except AuthError as e:
            s.commit()
            return render(request, "login.html", status_code=401, login_csrf=expected, next=safe_next(next),
                          error=str(e), username=username)
        cookie, _ = accounts.start_session(s, user)
        s.commit()
    return _logged_in(request, cookie, next)


def _passkey_options(request: Request, begin):
    """JSON for the console's script: `begin(session)`'s options, or {"detail": why} with 400."""
    try:
        with request.app.state.sessions.begin() as s:
            return JSONResponse(begin(s))
    except CustodyError as e:
        return JSONResponse({"detail": str(e)}, status_code=400)


# -- enrolling: the holder of a one-time link sets their own credentials --------------------------
def _totp_qr(uri: str) -> str:
    import segno
    return segno.make(uri, error="m", micro=False).svg_data_uri(scale=4, border=2)


def _enroll_page(request: Request, token: str, status_code: int = 200, *, error: str | None = None,
                 secret: str | None = None):
    """The enrollment form with a new TOTP secret (or the one being confirmed), or only the refusal."""
    with read(request) as s:
        try:
            link, user = accounts.find_enrollment(s, token)
        except CustodyError as e:
            return render(request, "enroll.html", status_code=404, error=str(e), form=None)
        form = {"username": user.username, "role": user.role,
                "required": accounts.second_factor_required(link, user)}
    secret = secret or accounts.new_totp_secret()
    uri = accounts.totp_uri(form["username"], secret)
    csrf_token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)
    response = render(request, "enroll.html", status_code=status_code, error=error, token=token, form=form,
                      secret=secret, qr=_totp_qr(uri), login_csrf=csrf_token,
                      min_length=accounts.MIN_PASSWORD_LENGTH)
    response.set_cookie(LOGIN_CSRF_COOKIE, csrf_token, httponly=True, samesite="strict",
                        secure=cookie_is_secure(request), max_age=1800)
    return response


@route(router, "GET", "/enroll/{token}", "public", page=True)
def enroll_page(request: Request, token: str = PathParam(max_length=100)):
    return _enroll_page(request, token)


@route(router, "POST", "/enroll/{token}/passkey-options", "public", page=True)
def enroll_passkey_options(request: Request, token: str = PathParam(max_length=100),
                           login_csrf: str = Form(max_length=100)):
    """Options for navigator.credentials.create() of the link holder's login passkey (JSON): the link
    authorises it, since its holder has no session yet."""
    expected = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not expected or not secrets.compare_digest(expected, login_csrf):
        return JSONResponse({"detail": "the form expired: reload the page"}, status_code=403)
    return _passkey_options(request, lambda s: accounts.begin_enrollment_passkey(s, token))


@route(router, "POST", "/enroll/{token}", "public", page=True)
def enroll(request: Request, token: str = PathParam(max_length=100), password: str = Form(max_length=1000),
           password_again: str = Form(max_length=1000), totp_secret: str = Form("", max_length=64),
           code: str = Form("", max_length=10), passkey: str = Form("", max_length=20_000),
           login_csrf: str = Form(max_length=100)):
    """Set the password and second factor (a TOTP secret, or a passkey the page made), spend the link, and
    log in."""
    expected = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not expected or not secrets.compare_digest(expected, login_csrf):
        return _enroll_page(request, token, 403, error="the form expired: enter your choices again")
    if password != password_again:
        return _enroll_page(request, token, 400, error="the two passwords differ", secret=totp_secret or None)
    try:
        with request.app.state.sessions.begin() as s:
            new_passkey = _browser_json(passkey)
            _, cookie = accounts.enroll_and_log_in(s, token, password, code=code, passkey=new_passkey,
                                                   totp_secret=None if new_passkey else totp_secret or None)
    except CustodyError as e:
        return _enroll_page(request, token, 400, error=str(e), secret=totp_secret or None)
    response = RedirectResponse("/account", status_code=303)
    response.set_cookie(SESSION_COOKIE, cookie, httponly=True, samesite="strict", secure=cookie_is_secure(request),
                        max_age=int(accounts.SESSION_LIFETIME.total_seconds()))
    response.delete_cookie(LOGIN_CSRF_COOKIE)
    return response


@route(router, "POST", "/logout", "me", page=True)
def logout(request: Request):
    with write(request) as s:
        accounts.end_session(s, request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


# -- account and administration ------------------------------------------------------------------
def _account(request: Request, status_code: int = 200, *, new_token: str | None = None, error: str | None = None,
             secret: str | None = None, flash: str = ""):
    """The account page: tokens, and the forms to change one's password and authenticator (with a new
    secret to enroll, or the one being confirmed)."""
    p = request.state.principal
    with read(request) as s:
        user = accounts.user_by_id(s, p.user_id)
        tokens = accounts.list_tokens(s, user)
        second_factor = user.second_factor
    secret = secret or accounts.new_totp_secret()
    return render(request, "account.html", status_code=status_code, tokens=tokens, new_token=new_token,
                  error=error, flash=flash, second_factor=second_factor, new_secret=secret,
                  new_secret_qr=_totp_qr(accounts.totp_uri(p.username, secret)),
                  min_length=accounts.MIN_PASSWORD_LENGTH)


@route(router, "GET", "/account", "me", page=True)
def account_page(request: Request, flash: str = ""):
    return _account(request, flash=flash)


def _change_own(request: Request, change, done: str, secret: str | None = None):
    """Run `change(session, user, cookie)` for the logged-in user: a wrong current password or code
    counts as a failed login (coordinator.accounts commits that itself); any refusal shows the page again
    with the reason."""
    p = request.state.principal
    try:
        with request.app.state.sessions() as s:
            change(s, accounts.user_by_id(s, p.user_id), request.cookies.get(SESSION_COOKIE))
            s.commit()
    except CustodyError as e:
        return _account(request, 400, error=str(e), secret=secret)
    return back("/account", flash=done)


@route(router, "POST", "/account/password", "me", page=True)
def change_password(request: Request, password: str = Form(max_length=1000), code: str = Form("", max_length=10),
                    new_password: str = Form(max_length=1000), new_password_again: str = Form(max_length=1000),
                    assertion: str = Form("", max_length=20_000)):
    if new_password != new_password_again:
        return _account(request, 400, error="the two new passwords differ")
    return _change_own(request, lambda s, user, cookie: accounts.change_password(
        s, user, password, code, new_password, keep_session=cookie, assertion=_browser_json(assertion)),
        "Password changed; your other sessions have ended.")


@route(router, "POST", "/account/totp", "me", page=True)
def change_totp(request: Request, password: str = Form(max_length=1000), code: str = Form("", max_length=10),
                new_secret: str = Form(max_length=64), new_code: str = Form(max_length=10),
                assertion: str = Form("", max_length=20_000)):
    return _change_own(request, lambda s, user, cookie: accounts.change_totp(
        s, user, password, code, new_secret, new_code, keep_session=cookie, assertion=_browser_json(assertion)),
        "Authenticator changed; your other sessions have ended.", secret=new_secret)


@route(router, "POST", "/account/passkey", "me", page=True)
def change_to_passkey(request: Request, password: str = Form(max_length=1000), code: str = Form("", max_length=10),
                      new_passkey: str = Form(max_length=20_000), assertion: str = Form("", max_length=20_000)):
    """Make a new passkey (the page's script made it) one's second factor, in place of the present one."""
    return _change_own(request, lambda s, user, cookie: accounts.change_to_passkey(
        s, user, password, code, _browser_json(new_passkey) or {}, keep_session=cookie,
        assertion=_browser_json(assertion)), "Your second factor is now this passkey; your other sessions have ended.")


@route(router, "POST", "/account/passkey/options", "me", page=True)
def new_passkey_options(request: Request):
    """Options for navigator.credentials.create() of a new login passkey (JSON)."""
    user_id = request.state.principal.user_id
    return _passkey_options(request, lambda s: credentials.begin_login_passkey(s, accounts.user_by_id(s, user_id)))


@route(router, "POST", "/account/passkey/challenge", "me", page=True)
def passkey_challenge(request: Request):
    """Options for navigator.credentials.get() that confirm a change on this page, for this session (JSON)."""
    p, cookie = request.state.principal, request.cookies.get(SESSION_COOKIE)
    if p.via != "session" or not cookie:
        return JSONResponse({"detail": "confirm with a passkey in the console, logged in"}, status_code=400)
    return _passkey_options(request, lambda s: accounts.passkey_challenge(s, accounts.user_by_id(s, p.user_id), cookie))


@route(router, "POST", "/account/tokens", "token.write", page=True)
def create_token(request: Request, name: str = Form(max_length=100), role: str = Form("", max_length=16),
                 days: int = Form(90)):
    p = request.state.principal
    with write(request) as s:
        user = accounts.user_by_id(s, p.user_id)
        token, _ = accounts.create_token(s, user, name, role=role or p.role, expires_in_days=days,
                                         scope=p.role if p.via == "token" else None)
    return _account(request, new_token=token)


@route(router, "POST", "/account/tokens/{token_id}/revoke", "token.write", page=True)
def revoke_token(request: Request, token_id: Id):
    p = request.state.principal
    with write(request) as s:
        accounts.revoke_token(s, token_id, by=accounts.user_by_id(s, p.user_id), role=p.role)
    return back("/account")


@route(router, "GET", "/admin/users", "user.admin", page=True)
def users_page(request: Request, flash: str = ""):
    from custody.governance import proposals as governance
    with read(request) as s:
        users = [accounts.user_json(u) for u in accounts.list_users(s)]
        # role changes are proposals (custody.governance.proposals): show the ones waiting beside their user
        waiting = {p["target"]: p for p in governance.list_proposals(s, states=list(governance.OPEN))
                   if p["kind"] == "user_role"}
    return render(request, "users.html", users=users, created=None, roles=accounts.ROLES, waiting=waiting,
                  flash=flash)


def _users_with_link(request: Request, username: str, role: str, token: str, link, what: str):
    """The users page showing the one-time link to hand over (this once; only its hash is kept)."""
    from coordinator.api.accounts import enrollment_shown
    created = {"username": username, "role": role, "what": what, **enrollment_shown(request, token, link)}
    with read(request) as s:
        users = [accounts.user_json(u) for u in accounts.list_users(s)]
    return render(request, "users.html", users=users, created=created, roles=accounts.ROLES)


@route(router, "POST", "/admin/users", "user.admin", page=True)
def create_user(request: Request, username: str = Form(max_length=64), role: str = Form(max_length=16)):
    with write(request) as s:
        user, token, link, proposal = accounts.invite(s, username, role, actor=actor(request))
        name = user.username
        note = (f"Created as viewer; the {role!r} role is proposed (proposal #{proposal.id}): other admins or "
                "officers approve it" if proposal else "Created")
    return _users_with_link(request, name, role, token, link, note)


@route(router, "POST", "/admin/users/{username}/reset", "user.admin", page=True)
def reset_user(request: Request, username: str):
    with write(request) as s:
        user = accounts.get_user(s, username)
        token, link = accounts.reset_credentials(s, user, actor=actor(request),
                                                 by=accounts.user_by_id(s, request.state.principal.user_id))
        name, role = user.username, user.role
    return _users_with_link(request, name, role, token, link, "Reset")


@route(router, "POST", "/admin/users/{username}/unlock", "user.admin", page=True)
def unlock_user(request: Request, username: str):
    with write(request) as s:
        accounts.unlock(s, accounts.get_user(s, username), actor=actor(request))
    return back("/admin/users")
