"""Who may use the coordinator: accounts with roles, argon2id passwords, TOTP, lock-out, API tokens.

Roles separate duties: an admin configures (people, keys, policies, rules) but moves no money; officers
request and approve spends; signatories upload signatures; auditors and viewers read. A token acts for
its user with the role it was made for (the user's own role, or viewer), and only its SHA-256 is stored.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import time
from datetime import datetime, timedelta, timezone

import nacl.exceptions
import nacl.pwhash
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .account_models import ApiToken, LoginSession, User
from .errors import CustodyError, NotFound
from .eventlog import record

ROLES = ("admin", "officer", "signatory", "auditor", "viewer")
SECOND_FACTOR_ROLES = ("admin", "officer")     # these cannot log in without a TOTP code
MIN_PASSWORD_LENGTH = 12
MAX_FAILED_LOGINS = 5
LOCKOUT = timedelta(minutes=15)
SESSION_LIFETIME = timedelta(hours=8)
TOTP_STEP = 30
TOTP_DIGITS = 6
TOKEN_PREFIX = "cst_"
# libsodium's "interactive" argon2id cost: 64 MiB, 2 passes (above OWASP's 19 MiB / 2 minimum)
_OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
_MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE


class AuthError(CustodyError):
    """Login refused. The message never says which of name, password or code was wrong."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(moment: datetime | None) -> datetime | None:
    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=timezone.utc)


# -- passwords ---------------------------------------------------------------------------------------
def hash_password(password: str) -> str:
    return nacl.pwhash.argon2id.str(password.encode(), opslimit=_OPSLIMIT, memlimit=_MEMLIMIT).decode()


def check_password(encoded: str, password: str) -> bool:
    try:
        return nacl.pwhash.verify(encoded.encode(), password.encode())
    except (nacl.exceptions.InvalidkeyError, nacl.exceptions.CryptoError, ValueError):
        return False


# a verification against this keeps a login for an unknown name as slow as one for a known name
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


def _check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise CustodyError(f"a password has at least {MIN_PASSWORD_LENGTH} characters")


# -- TOTP (RFC 6238: HMAC-SHA1, 6 digits, 30-second steps) ----------------------------------------------
def new_totp_secret() -> str:
    return base64.b32encode(secrets.token_bytes(20)).decode()


def totp(secret: str, at: float | None = None, *, step_offset: int = 0) -> str:
    """The code for `secret` at time `at` (default now)."""
    counter = int((time.time() if at is None else at) // TOTP_STEP) + step_offset
    return _hotp(secret, counter)


def _hotp(secret: str, counter: int, digits: int = TOTP_DIGITS, digest=hashlib.sha1) -> str:
    key = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
    mac = hmac.new(key, struct.pack(">Q", counter), digest).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10 ** digits).zfill(digits)


def totp_uri(username: str, secret: str, issuer: str = "Custody") -> str:
    """otpauth:// URI for authenticator apps (as a QR code or typed in)."""
    from urllib.parse import quote
    return f"otpauth://totp/{quote(issuer)}:{quote(username)}?secret={secret}&issuer={quote(issuer)}&digits=6&period=30"


def _totp_step(secret: str, code: str, now: float) -> int | None:
    """The time step a code belongs to (one step of clock drift either way), or None."""
    code = code.strip().replace(" ", "")
    if not (code.isdigit() and len(code) == TOTP_DIGITS):
        return None
    current = int(now // TOTP_STEP)
    for step in (current, current - 1, current + 1):
        if hmac.compare_digest(_hotp(secret, step), code):
            return step
    return None


# -- accounts ----------------------------------------------------------------------------------------
def _valid_username(username: str) -> str:
    name = username.strip()
    if not (1 <= len(name) <= 64) or not all(c.isalnum() or c in "._-@" for c in name):
        raise CustodyError("a username is 1-64 letters, digits or . _ - @")
    return name


def _valid_role(role: str) -> str:
    if role not in ROLES:
        raise CustodyError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    return role


def create_user(session: Session, username: str, role: str, password: str, *, second_factor: bool | None = None,
                actor: str = "coordinator") -> tuple[User, str | None]:
    """Returns the user and their TOTP secret (shown once), which admins and officers always get."""
    name, role = _valid_username(username), _valid_role(role)
    _check_new_password(password)
    if session.scalar(select(User).where(User.username == name)) is not None:
        raise CustodyError(f"user {name!r} already exists")
    wants_totp = role in SECOND_FACTOR_ROLES or bool(second_factor)
    secret = new_totp_secret() if wants_totp else None
    user = User(username=name, role=role, password_hash=hash_password(password), totp_secret=secret,
                last_totp_step=0, failed_logins=0, disabled=False)
    session.add(user)
    session.flush()
    record(session, "user.created", actor, f"user:{name}", {"role": role, "second_factor": wants_totp})
    return user, secret


def get_user(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"no user {username!r}")
    return user


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def user_json(user: User) -> dict:
    locked = _aware(user.locked_until)
    return {"username": user.username, "role": user.role, "second_factor": user.totp_secret is not None,
            "disabled": user.disabled, "failed_logins": user.failed_logins,
            "locked_until": locked.isoformat() if locked and locked > _now() else None}


def set_role(session: Session, user: User, role: str, *, actor: str) -> User:
    user.role = _valid_role(role)
    if role in SECOND_FACTOR_ROLES and user.totp_secret is None:
        raise CustodyError(f"{user.username} has no second factor; {role}s need one (reset their TOTP first)")
    _revoke_all(session, user)
    record(session, "user.role_changed", actor, f"user:{user.username}", {"role": role})
    return user


def set_password(session: Session, user: User, password: str, *, actor: str) -> None:
    _check_new_password(password)
    user.password_hash = hash_password(password)
    _revoke_all(session, user)
    record(session, "user.password_changed", actor, f"user:{user.username}", {})


def reset_totp(session: Session, user: User, *, actor: str) -> str:
    secret = user.totp_secret = new_totp_secret()
    user.last_totp_step = 0
    _revoke_all(session, user)
    record(session, "user.totp_reset", actor, f"user:{user.username}", {})
    return secret


def set_disabled(session: Session, user: User, disabled: bool, *, actor: str) -> User:
    user.disabled = disabled
    if disabled:
        _revoke_all(session, user)
    record(session, "user.disabled" if disabled else "user.enabled", actor, f"user:{user.username}", {})
    return user


def unlock(session: Session, user: User, *, actor: str) -> User:
    user.failed_logins, user.locked_until = 0, None
    record(session, "user.unlocked", actor, f"user:{user.username}", {})
    return user


def _revoke_all(session: Session, user: User) -> None:
    """A changed role, password or second factor ends every session and token of the user."""
    session.execute(delete(LoginSession).where(LoginSession.user_id == user.id))
    for token in session.scalars(select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))):
        token.revoked_at = _now()


# -- logging in ----------------------------------------------------------------------------------------
def authenticate(session: Session, username: str, password: str, code: str | None = None, *,
                 now: float | None = None) -> User:
    """Check name, password and (when the account has one) TOTP code. A failure is counted, and the
    caller must commit it: MAX_FAILED_LOGINS failures in a row lock the account for LOCKOUT."""
    moment = time.time() if now is None else now
    when = datetime.fromtimestamp(moment, timezone.utc)
    user = session.scalar(select(User).where(User.username == username.strip()))
    if user is None:
        check_password(_DUMMY_HASH, password)
        record(session, "user.login_failed", username.strip()[:64] or "?", "user:?", {"reason": "unknown user"})
        raise AuthError("wrong username, password or code")
    if user.locked_until is not None and _aware(user.locked_until) > when:
        raise AuthError(f"account locked after {MAX_FAILED_LOGINS} failed logins until "
                        f"{_aware(user.locked_until):%H:%M} UTC; an admin can unlock it")
    reason = None
    if not check_password(user.password_hash, password):
        reason = "password"
    elif user.totp_secret is not None:
        step = _totp_step(user.totp_secret, code or "", moment)
        if step is None:
            reason = "second factor"
        elif step <= user.last_totp_step:
            reason = "second factor replayed"
        else:
            user.last_totp_step = step
    elif user.role in SECOND_FACTOR_ROLES:
        reason = "no second factor enrolled"
    if reason is None and user.disabled:
        reason = "disabled"
    if reason is not None:
        user.failed_logins += 1
        data = {"reason": reason, "failed_logins": user.failed_logins}
        if user.failed_logins >= MAX_FAILED_LOGINS:
            user.locked_until = when + LOCKOUT
            data["locked_until"] = user.locked_until.isoformat()
        record(session, "user.login_failed", user.username, f"user:{user.username}", data)
        if reason == "disabled":
            raise AuthError("this account is disabled")
        raise AuthError("wrong username, password or code")
    user.failed_logins, user.locked_until = 0, None
    record(session, "user.login", user.username, f"user:{user.username}", {})
    return user


def start_session(session: Session, user: User) -> tuple[str, LoginSession]:
    """Returns the cookie value (shown to the browser only) and the stored session."""
    cookie = secrets.token_urlsafe(32)
    row = LoginSession(id=_sha256(cookie), user_id=user.id, csrf_token=secrets.token_urlsafe(32),
                       expires_at=_now() + SESSION_LIFETIME)
    session.add(row)
    return cookie, row


def find_session(session: Session, cookie: str | None) -> tuple[LoginSession, User] | None:
    if not cookie:
        return None
    row = session.get(LoginSession, _sha256(cookie))
    if row is None or _aware(row.expires_at) <= _now():
        return None
    user = session.get(User, row.user_id)
    if user is None or user.disabled:
        return None
    return row, user


def end_session(session: Session, cookie: str | None) -> None:
    if cookie:
        session.execute(delete(LoginSession).where(LoginSession.id == _sha256(cookie)))


# -- API tokens ----------------------------------------------------------------------------------------
def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def create_token(session: Session, user: User, name: str, *, role: str | None = None,
                 expires_in_days: int | None = 90) -> tuple[str, ApiToken]:
    """A token for `user` with their own role, or narrowed to viewer. Returns (token, row)."""
    role = role or user.role
    _valid_role(role)
    if role not in (user.role, "viewer"):
        raise CustodyError(f"a token carries its user's role ({user.role}) or viewer, not {role}")
    if not name.strip() or len(name) > 100:
        raise CustodyError("a token needs a name of at most 100 characters")
    if expires_in_days is not None and not 1 <= expires_in_days <= 3650:
        raise CustodyError("a token expires in 1 to 3650 days")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, name=name.strip(), role=role, token_hash=_sha256(token), prefix=token[:10],
                   expires_at=_now() + timedelta(days=expires_in_days) if expires_in_days else None)
    session.add(row)
    session.flush()
    record(session, "token.created", user.username, f"user:{user.username}",
           {"token": row.id, "name": row.name, "role": role,
            "expires_at": row.expires_at.isoformat() if row.expires_at else None})
    return token, row


def find_token(session: Session, token: str | None) -> tuple[ApiToken, User] | None:
    if not token or not token.startswith(TOKEN_PREFIX):
        return None
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == _sha256(token)))
    if row is None or row.revoked_at is not None or (row.expires_at and _aware(row.expires_at) <= _now()):
        return None
    user = session.get(User, row.user_id)
    if user is None or user.disabled:
        return None
    return row, user


def list_tokens(session: Session, user: User | None = None) -> list[dict]:
    query = select(ApiToken, User).join(User, User.id == ApiToken.user_id).order_by(ApiToken.id)
    if user is not None:
        query = query.where(ApiToken.user_id == user.id)
    return [{"id": t.id, "user": u.username, "name": t.name, "role": t.role, "prefix": t.prefix,
             "created_at": t.created_at.isoformat(),
             "expires_at": t.expires_at.isoformat() if t.expires_at else None,
             "revoked": t.revoked_at is not None} for t, u in session.execute(query)]


def revoke_token(session: Session, token_id: int, *, by: User) -> None:
    row = session.get(ApiToken, token_id)
    if row is None or (row.user_id != by.id and by.role != "admin"):
        raise NotFound(f"no token #{token_id}")
    if row.revoked_at is None:
        row.revoked_at = _now()
        record(session, "token.revoked", by.username, f"token:{token_id}", {})
