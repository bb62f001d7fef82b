"""How people log in to the coordinator: argon2id passwords, TOTP or passkey, lock-out, sessions, API tokens,
enrollment links. Who they are and which role they hold is the domain's (custody.people.roles: canonical
usernames, roles, role changes through governance); this module is the coordinator's side of it.

A token acts for its user with the role it was made for (the user's own role, or viewer), and only its
SHA-256 is stored. Logging in is safe against parallel attempts: an attempt is counted in the database
before its password is checked (so N parallel guesses check at most MAX_FAILED_LOGINS), and a TOTP code is
taken by a conditional UPDATE whose row count decides (so one code opens one session). A refusal never
says whether the account exists.

People own their credentials: an admin creates an account (`invite_user`) or resets one
(`reset_credentials`) and gets a one-time enrollment link, never a password or a secret; the holder
opens it and sets their own password and second factor (`complete_enrollment`), and later changes them
(`change_password`, `change_totp`, `change_to_passkey`). Until then the account can neither log in nor
have tokens.

The second factor is a TOTP secret or a passkey (custody.people.credentials, a login passkey of its own, never
an officer's approval key). A passkey login has two steps: the password first (`start_login`, counted
and refused exactly as any login, so nothing tells a passkey account apart before the password is
right), then an assertion over a fresh challenge kept for that pending login (`finish_passkey_login`).
`create_user`, which takes the password itself, is for the demo, the tests and scripted set-ups only.
"""
from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
import hmac
import os

import secrets
import struct
import time

from datetime import datetime, timedelta, timezone

import nacl.exceptions
import nacl.pwhash
from sqlalchemy import case, delete, literal, or_, select, update
from sqlalchemy.orm import Session

from custody.errors import CustodyError, NotFound
from custody.eventlog.log import record
from custody.governance import proposals as governance
from custody.people import credentials
from custody.people.models import ApiToken, Enrollment, LoginSession, User
# the people and their roles are the domain's; the interfaces find them here, beside the logins
from custody.people.roles import (ROLES, SECOND_FACTOR_ROLES, canonical_username, get_user,  # noqa: F401
                                  has_second_factor, list_users, set_role)
from custody.people.roles import find_user as _find_user, revoke_all as _revoke_all, valid_role as _valid_role

MIN_PASSWORD_LENGTH = 12
MIN_PASSWORD_SCORE = 3          # zxcvbn's 0-4: 3 is "safely unguessable", ~10^10 guesses
MAX_FAILED_LOGINS = 5
LOCKOUT = timedelta(minutes=15)
FAILED_LOGIN_LOG_INTERVAL = timedelta(minutes=1)   # at most one user.login_failed entry per account per minute
SESSION_LIFETIME = timedelta(hours=8)
# A session ends after this long without a request (CUSTODY_SESSION_IDLE_MINUTES; an app may set
# app.state.session_idle). Its last_seen_at is written at most once per SESSION_TOUCH.
SESSION_IDLE = timedelta(minutes=float(os.environ.get("CUSTODY_SESSION_IDLE_MINUTES") or 30))
SESSION_TOUCH = timedelta(minutes=1)
TOTP_STEP = 30
TOTP_DIGITS = 6
TOKEN_PREFIX = "cst_"
ENROLLMENT_LIFETIME = timedelta(hours=72)
# The kinds of second factor a user may enroll: a TOTP secret, or a login passkey (custody/people/credentials.py)
SECOND_FACTOR_KINDS = ("totp", "passkey")
# libsodium's "interactive" argon2id cost: 64 MiB, 2 passes (above OWASP's 19 MiB / 2 minimum)
_OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
_MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE


class AuthError(CustodyError):
    """Login refused. The message never says which of name, password or code was wrong, nor whether
    the account exists or is locked: it is LOGIN_REFUSED, always."""


LOGIN_REFUSED = (f"wrong username, password or code (after {MAX_FAILED_LOGINS} failed logins in a row an "
                 f"account is locked for {int(LOCKOUT.total_seconds() // 60)} minutes; an admin can unlock it)")
PASSKEY_ELSEWHERE = ("your second factor is a passkey: confirm with it on your account page in the console, "
                     "where your browser can use it")
CURRENT_REFUSED = (f"the current password or authenticator code is wrong (after {MAX_FAILED_LOGINS} failed "
                   f"attempts in a row the account is locked for {int(LOCKOUT.total_seconds() // 60)} minutes)")
# one answer for every link that does not enroll anyone: unknown, wrong, expired, used, replaced
ENROLLMENT_REFUSED = (f"this enrollment link is not valid: it has expired (links last "
                      f"{int(ENROLLMENT_LIFETIME.total_seconds() // 3600)} hours), was used already or was "
                      "replaced by a newer one. Ask an admin for a new link.")


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


def _check_new_password(password: str, username: str = "") -> None:
    """At least MIN_PASSWORD_LENGTH characters, and not easy to guess by zxcvbn's estimate (common and
    breached passwords, dictionary words, names, keyboard patterns, repeats, dates, the username)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise CustodyError(f"a password has at least {MIN_PASSWORD_LENGTH} characters")
    from zxcvbn import zxcvbn
    # zxcvbn takes at most 72 characters (its cost grows with length); a longer password is judged by
    # its first 72, which must then be strong on their own
    verdict = zxcvbn(password[:72], user_inputs=[username, "custody", "coordinator", "bitcoin"])
    if verdict["score"] < MIN_PASSWORD_SCORE:
        feedback = verdict.get("feedback") or {}
        why = " ".join(part for part in [feedback.get("warning") or "",
                                         *(feedback.get("suggestions") or [])] if part)
        raise CustodyError(f"this password is too easy to guess (strength {verdict['score']} of 4, at least "
                           f"{MIN_PASSWORD_SCORE} is needed)" + (f": {why}" if why else ""))


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
    return canonical_username(username)


def create_user(session: Session, username: str, role: str, password: str, *, second_factor: bool | None = None,
                actor: str = "coordinator") -> tuple[User, str | None]:
    """An account enrolled at once with this password, and its TOTP secret (returned once; admins and
    officers always get one). For the demo, the tests and scripted set-ups only: whoever calls this
    knows the credentials, so no operator-facing path (API, console, CLI) does; they use invite_user."""
    name, role = _valid_username(username), _valid_role(role)
    _check_new_password(password, name)
    _check_new_name(session, name)
    wants_totp = role in SECOND_FACTOR_ROLES or bool(second_factor)
    secret = new_totp_secret() if wants_totp else None
    user = User(username=name, role=role, password_hash=hash_password(password), totp_secret=secret,
                second_factor="totp" if wants_totp else None, last_totp_step=0, failed_logins=0,
                failures_unlogged=0, disabled=False, enrolled_at=_now())
    session.add(user)
    session.flush()
    record(session, "user.created", actor, f"user:{name}", {"role": role, "second_factor": wants_totp})
    return user, secret


def _check_new_name(session: Session, name: str) -> None:
    if session.scalar(select(User).where(User.username == name)) is not None:
        raise CustodyError(f"user {name!r} already exists")


def invite_user(session: Session, username: str, role: str, *, second_factor: bool = False,
                actor: str) -> tuple[User, str, Enrollment]:
    """A new account with no credentials, and the one-time enrollment link (its token, shown once) on
    which its holder sets them. Admins and officers, and anyone created with `second_factor`, must
    enroll a second factor there."""
    name, role = _valid_username(username), _valid_role(role)
    _check_new_name(session, name)
    user = User(username=name, role=role, password_hash="", totp_secret=None, second_factor=None, last_totp_step=0,
                failed_logins=0, failures_unlogged=0, disabled=False, enrolled_at=None)
    session.add(user)
    session.flush()
    required = role in SECOND_FACTOR_ROLES or second_factor
    record(session, "user.created", actor, f"user:{name}", {"role": role, "second_factor": required,
                                                            "enrollment": True})
    token, link = _issue_enrollment(session, user, required=required, actor=actor)
    return user, token, link


def reset_credentials(session: Session, user: User, *, actor: str, by: User | None) -> tuple[str, Enrollment]:
    """Clear the user's password and second factor, end their sessions and tokens, and issue a new
    enrollment link: the admin learns the link, never a credential.

    `by`: the logged-in admin asking (API, console). Nobody resets themselves that way (they change
    their own credentials on their account page, and would lock themselves out), so the admin resetting
    is always another working admin and the last one cannot be reset from the console. `by` None: the
    CLI, run by whoever holds the database, which may reset any account, the last admin included: it is
    the recovery path when the only admin has lost their authenticator."""
    if by is not None and by.id == user.id:
        raise CustodyError("you cannot reset your own account: change your password or authenticator on your "
                           "account page, or ask another admin")
    required = user.role in SECOND_FACTOR_ROLES or user.second_factor is not None
    user.password_hash, user.totp_secret, user.second_factor, user.enrolled_at = "", None, None, None
    user.last_totp_step = 0
    credentials.revoke_login_passkeys(session, user, actor=actor)
    _revoke_all(session, user)
    record(session, "user.credentials_reset", actor, f"user:{user.username}", {})
    return _issue_enrollment(session, user, required=required, actor=actor)


def _issue_enrollment(session: Session, user: User, *, required: bool, actor: str) -> tuple[str, Enrollment]:
    """A new link for `user`; any earlier link of theirs stops working."""
    now = _now()
    session.execute(update(Enrollment).where(Enrollment.user_id == user.id, Enrollment.spent_at.is_(None))
                    .values(spent_at=now).execution_options(synchronize_session=False))
    selector, verifier = secrets.token_urlsafe(12), secrets.token_urlsafe(32)
    row = Enrollment(user_id=user.id, selector=selector, verifier_hash=_sha256(verifier), second_factor_required=required,
                     created_by=actor, created_at=now, expires_at=now + ENROLLMENT_LIFETIME)
    session.add(row)
    session.flush()
    record(session, "user.enrollment_issued", actor, f"user:{user.username}",
           {"enrollment": row.id, "second_factor_required": required, "expires_at": row.expires_at.isoformat()})
    return f"{selector}.{verifier}", row


def find_enrollment(session: Session, token: str) -> tuple[Enrollment, User]:
    """The live link this token opens and its user, or CustodyError(ENROLLMENT_REFUSED), the one answer
    whatever is wrong. The verifier's hash is compared in constant time."""
    selector, _, verifier = (token or "").partition(".")
    row = session.scalar(select(Enrollment).where(Enrollment.selector == selector)) if selector and verifier else None
    matches = hmac.compare_digest(row.verifier_hash if row is not None else _sha256("-"), _sha256(verifier))
    if row is None or not matches or row.spent_at is not None or _aware(row.expires_at) <= _now():
        raise CustodyError(ENROLLMENT_REFUSED)
    user = session.get(User, row.user_id)
    if user is None or user.disabled or user.enrolled_at is not None:
        raise CustodyError(ENROLLMENT_REFUSED)
    return row, user


def second_factor_required(link: Enrollment, user: User) -> bool:
    return link.second_factor_required or user.role in SECOND_FACTOR_ROLES


def begin_enrollment_passkey(session: Session, token: str) -> dict:
    """Options for navigator.credentials.create() of the link holder's login passkey: the link itself
    authorises this (its holder has no session yet). Finished by complete_enrollment(passkey=...)."""
    _, user = find_enrollment(session, token)
    return credentials.begin_login_passkey(session, user)


def complete_enrollment(session: Session, token: str, password: str, *, totp_secret: str | None = None,
                        code: str | None = None, passkey: dict | None = None, now: float | None = None) -> User:
    """The holder of a link sets their password and their second factor: a TOTP secret, with a code
    proving their authenticator holds it, or a passkey (`passkey`: the browser's answer to the options of
    begin_enrollment_passkey). The link is spent by a conditional UPDATE whose row count decides, so it
    enrolls once however many submissions race. The caller commits."""
    link, user = find_enrollment(session, token)
    _check_new_password(password, user.username)
    step = new_passkey = None
    if passkey is not None:
        new_passkey = credentials.verify_login_passkey(session, user, passkey)
    elif totp_secret:
        totp_secret = _valid_totp_secret(totp_secret)
        step = _totp_step(totp_secret, code or "", time.time() if now is None else now)
        if step is None:
            raise CustodyError("the authenticator code does not match: add the secret to your authenticator app "
                               "and enter the code it shows now (check the phone's clock if it still fails)")
    elif second_factor_required(link, user):
        raise CustodyError(f"a {user.role} needs a second factor: add the secret to an authenticator app and "
                           "enter its code, or make a passkey")
    spent = session.execute(
        update(Enrollment).where(Enrollment.id == link.id, Enrollment.spent_at.is_(None),
                                 Enrollment.expires_at > literal(_now(), Enrollment.expires_at.type))
        .values(spent_at=_now()).execution_options(synchronize_session=False)).rowcount
    if spent != 1:
        raise CustodyError(ENROLLMENT_REFUSED)
    user.password_hash = hash_password(password)
    user.totp_secret, user.second_factor = (totp_secret, "totp") if totp_secret else (None, None)
    user.last_totp_step = step or 0          # the code that confirmed the secret does not log in again
    if new_passkey is not None:
        credentials.add_login_passkey(session, user, new_passkey, actor=user.username)
        user.second_factor = "passkey"
    user.enrolled_at, user.failed_logins, user.locked_until = _now(), 0, None
    record(session, "user.enrolled", user.username, f"user:{user.username}",
           {"enrollment": link.id, "second_factor": user.second_factor})
    return user


def _valid_totp_secret(secret: str) -> str:
    """A base32 TOTP secret of at least 160 bits (RFC 4226's recommendation), as new_totp_secret makes."""
    cleaned = secret.strip().replace(" ", "").upper().rstrip("=")
    try:
        key = base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
    except (ValueError, base64.binascii.Error):
        key = b""
    if len(key) < 20 or len(cleaned) > 64:
        raise CustodyError("a TOTP secret is base32 text of 160 bits or more (32 characters), as shown with the QR code")
    return cleaned


def user_by_id(session: Session, user_id: int) -> User | None:
    """The logged-in person's row (a principal holds the id), for the interfaces, which read no tables."""
    return session.get(User, user_id)


def user_json(user: User) -> dict:
    locked = _aware(user.locked_until)
    return {"username": user.username, "role": user.role, "second_factor": user.second_factor,
            "enrolled": user.enrolled_at is not None, "disabled": user.disabled, "failed_logins": user.failed_logins,
            "locked_until": locked.isoformat() if locked and locked > _now() else None}


def change_password(session: Session, user: User, current_password: str, code: str | None, new_password: str,
                    *, keep_session: str | None = None, assertion: dict | None = None, now: float | None = None) -> None:
    """The user changes their own password, proving the current one and a current code. Their other
    login sessions end (`keep_session`: the cookie of the one asking, which stays); API tokens stay
    (they are listed on the account page; an admin reset ends them too). The new password is checked
    first, so a refused one costs no attempt. Commits the attempt as authenticate does; on success the
    caller commits. A wrong password or code raises AuthError(CURRENT_REFUSED). A passkey account
    proves its second factor with `assertion`, over the challenge passkey_challenge kept for its session."""
    _check_new_password(new_password, user.username)
    user = _reauthenticate(session, user, current_password, code, now, assertion, keep_session)
    user.password_hash = hash_password(new_password)
    _end_other_sessions(session, user, keep_session)
    record(session, "user.password_changed", user.username, f"user:{user.username}", {})


def change_totp(session: Session, user: User, current_password: str, code: str | None, new_secret: str,
                new_code: str, *, keep_session: str | None = None, assertion: dict | None = None,
                now: float | None = None) -> None:
    """The user enrolls a new TOTP secret (or their first, when they have no second factor), proving
    their password and current code (or passkey), and a code of the new secret that shows their
    authenticator holds it. A login passkey it replaces is revoked. Their other login sessions end.
    Commits and answers as change_password."""
    moment = time.time() if now is None else now
    new_secret = _valid_totp_secret(new_secret)
    new_step = _totp_step(new_secret, new_code or "", moment)
    if new_step is None:
        raise CustodyError("the code of the new secret does not match: add it to your authenticator app and enter "
                           "the code it shows now")
    user = _reauthenticate(session, user, current_password, code, now, assertion, keep_session)
    replaced = user.second_factor
    user.totp_secret, user.second_factor = new_secret, "totp"
    user.last_totp_step = new_step
    credentials.revoke_login_passkeys(session, user, actor=user.username)
    _end_other_sessions(session, user, keep_session)
    record(session, "user.totp_changed", user.username, f"user:{user.username}",
           {"replaced": "passkey"} if replaced == "passkey" else {})


def change_to_passkey(session: Session, user: User, current_password: str, code: str | None, new_passkey: dict, *,
                      keep_session: str | None = None, assertion: dict | None = None, now: float | None = None) -> None:
    """The user makes a passkey their second factor (in place of their TOTP secret or earlier passkey, or
    as their first), proving their password and current code or passkey; `new_passkey` is the browser's
    answer to the options of begin_login_passkey. Their other login sessions end. Commits and answers
    as change_password."""
    verified = credentials.verify_login_passkey(session, user, new_passkey)     # nothing is stored before the proof
    user = _reauthenticate(session, user, current_password, code, now, assertion, keep_session)
    replaced = user.second_factor
    credentials.add_login_passkey(session, user, verified, actor=user.username)
    user.totp_secret, user.second_factor, user.last_totp_step = None, "passkey", 0
    _end_other_sessions(session, user, keep_session)
    record(session, "user.second_factor_changed", user.username, f"user:{user.username}",
           {"second_factor": "passkey", "replaced": replaced})


def passkey_challenge(session: Session, user: User, keep_session: str) -> dict:
    """Options for navigator.credentials.get() that confirm a change of one's own credentials: a challenge
    for this session only, used once, within two minutes. The caller commits."""
    if user.second_factor != "passkey":
        raise CustodyError("your second factor is not a passkey")
    return credentials.login_challenge(session, user, "reauth", keep_session)


def _reauthenticate(session: Session, user: User, password: str, code: str | None, now: float | None,
                    assertion: dict | None = None, keep_session: str | None = None) -> User:
    if user.second_factor == "passkey" and (assertion is None or not keep_session):
        raise CustodyError(PASSKEY_ELSEWHERE)     # said before anything is counted: the caller is logged in
    proof = PasskeyProof("reauth", keep_session, assertion) if assertion is not None else None
    try:
        return _check_credentials(session, user.username, password, code, now=now, purpose="reauthentication",
                                  passkey=proof)[0]
    except AuthError:
        raise AuthError(CURRENT_REFUSED) from None


def _end_other_sessions(session: Session, user: User, keep_session: str | None) -> None:
    query = delete(LoginSession).where(LoginSession.user_id == user.id)
    if keep_session:
        query = query.where(LoginSession.id != _sha256(keep_session))
    session.execute(query)


def set_disabled(session: Session, user: User, disabled: bool, *, actor: str) -> User:
    user.disabled = disabled
    if disabled:
        _revoke_all(session, user)
    record(session, "user.disabled" if disabled else "user.enabled", actor, f"user:{user.username}", {})
    return user


def unlock(session: Session, user: User, *, actor: str) -> User:
    session.execute(update(User).where(User.id == user.id).values(failed_logins=0, locked_until=None)
                    .execution_options(synchronize_session=False))
    user.failed_logins, user.locked_until = 0, None
    record(session, "user.unlocked", actor, f"user:{user.username}", {})
    return user


# -- logging in ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PasskeyProof:
    """A passkey assertion over the challenge kept for `purpose` ("login", "reauth") and `binding`."""
    purpose: str
    binding: str
    assertion: dict


@dataclass(frozen=True)
class PasskeyLogin:
    """A login whose password was right, waiting for the account's passkey: `options` go to the browser's
    navigator.credentials.get(), and `pending` (the secret of this one login) comes back with the answer."""
    username: str
    pending: str
    options: dict


PASSKEY_NEXT = "passkey next"      # _check_credentials: a passkey account's password step alone


def authenticate(session: Session, username: str, password: str, code: str | None = None, *,
                 now: float | None = None) -> User:
    """Check name, password and (when the account has one) TOTP code; raise AuthError(LOGIN_REFUSED)
    otherwise, as _check_credentials does. A passkey account cannot log in here (see start_login). On
    success the caller commits (with the session it starts)."""
    user, _ = _check_credentials(session, username, password, code, now=now)
    return _logged_in(session, user)


def _logged_in(session: Session, user: User) -> User:
    record(session, "user.login", user.username, f"user:{user.username}",
           {"failures_not_logged": user.failures_unlogged} if user.failures_unlogged else {})
    user.failures_unlogged = 0
    return user


def start_login(session: Session, username: str, password: str, code: str | None = None, *,
                now: float | None = None) -> User | PasskeyLogin:
    """The console's login: authenticate, except that a passkey account whose password is right (and
    which is neither locked nor disabled) gets the PasskeyLogin to finish with finish_passkey_login.
    That attempt stays counted towards the lock-out until the passkey step succeeds. Commits a
    PasskeyLogin; for a User the caller commits (with the session it starts)."""
    user, attempt = _check_credentials(session, username, password, code, now=now, passkey=PASSKEY_NEXT)
    if attempt is None:
        return _logged_in(session, user)
    pending = secrets.token_urlsafe(32)
    options = credentials.login_challenge(session, user, "login", pending, {"attempt": attempt})
    session.commit()
    return PasskeyLogin(user.username, pending, options)


def finish_passkey_login(session: Session, username: str, pending: str, assertion, *,
                         now: float | None = None) -> User:
    """The second step of a passkey account's login: an assertion over the challenge start_login kept
    for this pending login (and no other), within two minutes, once. Refused with AuthError(LOGIN_REFUSED)
    when no such login is under way (nothing is counted: its password step was), when the account was
    since disabled, reset or locked by later attempts, or when the assertion is wrong: another passkey's,
    another challenge's, or with a signature counter that did not increase (a cloned or replayed one);
    those failures are logged as any failed login and keep the account's attempt counted. On success
    the attempt counter is cleared and the caller commits (with the session it starts)."""
    when = datetime.fromtimestamp(time.time() if now is None else now, timezone.utc)
    user = _find_user(session, username)
    if user is None or not isinstance(pending, str) or not pending:
        raise AuthError(LOGIN_REFUSED)
    try:
        note, reason = credentials.check_login_assertion(session, user, "login", pending, assertion), None
    except credentials.NoCeremony:
        raise AuthError(LOGIN_REFUSED) from None       # not this login's (or none): nothing to count
    except CustodyError as e:
        note, reason = {}, str(e)
    attempt = note.get("attempt")
    if reason is None and (user.disabled or user.enrolled_at is None or user.second_factor != "passkey"):
        reason = "passkey refused: the account was disabled or reset during the login"
    locked = _aware(user.locked_until)
    if reason is None and locked is not None and locked > when and user.failed_logins != attempt:
        reason = "passkey refused: the account was locked by later attempts"
    if reason is not None:
        _log_failure(session, user.id, user.username, reason, when,
                     locks=user.failed_logins >= MAX_FAILED_LOGINS)
        session.commit()
        raise AuthError(LOGIN_REFUSED)
    session.execute(update(User).where(User.id == user.id).values(failed_logins=0, locked_until=None)
                    .execution_options(synchronize_session=False))
    session.refresh(user)
    return _logged_in(session, user)


def _check_credentials(session: Session, username: str, password: str, code: str | None = None, *,
                       now: float | None = None, purpose: str = "login",
                       passkey: PasskeyProof | str | None = None) -> tuple[User, int | None]:
    """Commits its own steps, so that parallel attempts cannot race:

    1. the attempt is counted before the password is checked, by one conditional UPDATE that also
       takes the lock-out decision (refused while locked; the MAX_FAILED_LOGINS-th attempt in a row
       locks), committed at once; N parallel wrong passwords therefore check at most MAX_FAILED_LOGINS;
    2. the password is checked outside any transaction (argon2id takes a while);
    3. the code's time step is taken with `UPDATE ... WHERE last_totp_step < step`, and only the one
       request whose UPDATE changed the row may use it;
    4. a failure is logged at most once a minute per account (with the count since the last entry;
       the entry that locks the account is always written), and committed here. Unknown names are not
       logged at all, and cost the same argon2id verification as known ones.

    An account waiting for enrollment has no password: it is refused as a wrong one, after the same
    argon2id cost. `purpose` names the check in a failure's log entry.

    A passkey account's second factor is `passkey`: a PasskeyProof, checked in step 3's place, or
    PASSKEY_NEXT for a login's password step alone; then the answer is (user, the attempt's number),
    the attempt stays counted and the caller asks for the passkey. Otherwise the answer is (user, None).
    On success the caller commits."""
    moment = time.time() if now is None else now
    when = datetime.fromtimestamp(moment, timezone.utc)
    user = _find_user(session, username)
    if user is not None:
        user_id, name, password_hash = user.id, user.username, user.password_hash
        role, secret, disabled = user.role, user.totp_secret, user.disabled
        kind, enrolled = user.second_factor, user.enrolled_at is not None
    session.commit()                 # no transaction (or connection) is held while a password is hashed
    if user is None:
        check_password(_DUMMY_HASH, password)
        raise AuthError(LOGIN_REFUSED)
    not_locked = or_(User.locked_until.is_(None), User.locked_until <= literal(when, User.locked_until.type))
    counted = session.execute(
        update(User).where(User.id == user_id, not_locked)
        .values(failed_logins=User.failed_logins + 1,
                locked_until=case((User.failed_logins + 1 >= MAX_FAILED_LOGINS,
                                   literal(when + LOCKOUT, User.locked_until.type)), else_=None))
        .execution_options(synchronize_session=False)).rowcount
    if counted == 1:
        failed = session.scalar(select(User.failed_logins).where(User.id == user_id))   # ours: the row is locked
    session.commit()
    if counted != 1:                 # locked: not checked, and not told apart from a wrong password
        check_password(_DUMMY_HASH, password)
        raise AuthError(LOGIN_REFUSED)
    locks = failed >= MAX_FAILED_LOGINS

    reason = None
    if not check_password(password_hash or _DUMMY_HASH, password) or not enrolled:
        reason = "password" if enrolled else "not enrolled"
    elif disabled:
        reason = "disabled"
    elif kind == "totp" and secret is not None:
        step = _totp_step(secret, code or "", moment)
        if step is None:
            reason = "second factor"
        elif session.execute(update(User).where(User.id == user_id, User.last_totp_step < step)
                             .values(last_totp_step=step).execution_options(synchronize_session=False)).rowcount != 1:
            reason = "second factor replayed"
    elif kind == "passkey" and isinstance(passkey, PasskeyProof):
        try:
            credentials.check_login_assertion(session, user, passkey.purpose, passkey.binding, passkey.assertion)
        except CustodyError as e:
            reason = str(e)
    elif kind == "passkey" and passkey == PASSKEY_NEXT:
        return user, failed            # the password is right; the passkey step decides (start_login)
    elif kind is not None:
        reason = f"second factor {kind} not given"
    elif role in SECOND_FACTOR_ROLES:
        reason = "no second factor enrolled"
    if reason is not None:
        _log_failure(session, user_id, name, reason if purpose == "login" else f"{purpose}: {reason}", when,
                     locks=locks)
        session.commit()
        raise AuthError(LOGIN_REFUSED)
    session.execute(update(User).where(User.id == user_id)
                    .values(failed_logins=0, locked_until=None)
                    .execution_options(synchronize_session=False))
    session.refresh(user)
    return user, None


def _log_failure(session: Session, user_id: int, name: str, reason: str, when: datetime, *, locks: bool) -> None:
    """Count the failure; write a user.login_failed entry when the account's last one is a minute old
    (or this failure locks it), carrying how many failures it stands for."""
    session.execute(update(User).where(User.id == user_id).values(failures_unlogged=User.failures_unlogged + 1)
                    .execution_options(synchronize_session=False))
    # read under the row lock the UPDATE took (PostgreSQL) or SQLite's writer lock: no one else's
    row = session.execute(select(User.failures_unlogged, User.failure_logged_at, User.failed_logins,
                                 User.locked_until).where(User.id == user_id)).one()
    last = _aware(row.failure_logged_at)
    if not locks and last is not None and when - last < FAILED_LOGIN_LOG_INTERVAL:
        return
    session.execute(update(User).where(User.id == user_id).values(failures_unlogged=0, failure_logged_at=when)
                    .execution_options(synchronize_session=False))
    data = {"reason": reason, "failures": row.failures_unlogged, "failed_logins": row.failed_logins}
    if locks and row.locked_until is not None:
        data["locked_until"] = _aware(row.locked_until).isoformat()
    record(session, "user.login_failed", name, f"user:{name}", data)


def enroll_and_log_in(session: Session, token: str, password: str, *, totp_secret: str | None = None,
                      code: str | None = None, passkey: dict | None = None) -> tuple[User, str]:
    """complete_enrollment, then the holder's first session (logged as their login): (user, session cookie)."""
    user = complete_enrollment(session, token, password, totp_secret=totp_secret, code=code, passkey=passkey)
    record(session, "user.login", user.username, f"user:{user.username}", {"enrolled": True})
    cookie, _ = start_session(session, user)
    return user, cookie


def start_session(session: Session, user: User) -> tuple[str, LoginSession]:
    """Returns the cookie value (shown to the browser only) and the stored session."""
    cookie = secrets.token_urlsafe(32)
    now = _now()
    row = LoginSession(id=_sha256(cookie), user_id=user.id, csrf_token=secrets.token_urlsafe(32),
                       created_at=now, last_seen_at=now, expires_at=now + SESSION_LIFETIME)
    session.add(row)
    return cookie, row


def find_session(session: Session, cookie: str | None, *,
                 idle: timedelta | None = None) -> tuple[LoginSession, User] | None:
    """The live session of this cookie and its user, or None: unknown, past its lifetime, idle for
    `idle` (SESSION_IDLE), or its user disabled. A session idle too long is deleted. Marks the session
    seen, writing at most once per SESSION_TOUCH; the caller commits."""
    if not cookie:
        return None
    row = session.get(LoginSession, _sha256(cookie))
    if row is None:
        return None
    now = _now()
    seen = _aware(row.last_seen_at or row.created_at)
    if _aware(row.expires_at) <= now or now - seen >= (SESSION_IDLE if idle is None else idle):
        session.execute(delete(LoginSession).where(LoginSession.id == row.id))
        return None
    user = session.get(User, row.user_id)
    if user is None or user.disabled or user.enrolled_at is None:
        return None
    if now - seen >= SESSION_TOUCH:
        cutoff = literal(now - SESSION_TOUCH, LoginSession.last_seen_at.type)
        session.execute(update(LoginSession)
                        .where(LoginSession.id == row.id,
                               or_(LoginSession.last_seen_at.is_(None), LoginSession.last_seen_at <= cutoff))
                        .values(last_seen_at=now).execution_options(synchronize_session=False))
    return row, user


def end_session(session: Session, cookie: str | None) -> None:
    if cookie:
        session.execute(delete(LoginSession).where(LoginSession.id == _sha256(cookie)))


# -- API tokens ----------------------------------------------------------------------------------------
def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def create_token(session: Session, user: User, name: str, *, role: str | None = None,
                 expires_in_days: int | None = 90, scope: str | None = None) -> tuple[str, ApiToken]:
    """A token for `user` with their own role, or narrowed to viewer. Returns (token, row).

    `scope`: the role of the token making this one, when a token does (None: a login session or the
    CLI). A token makes tokens of its own role or viewer only, and a viewer-scope token none at all."""
    if user.enrolled_at is None:
        raise CustodyError(f"{user.username} has not enrolled yet (set their own password on their enrollment "
                           "link): an account without credentials has no tokens")
    if scope is not None:
        _valid_role(scope)
        if scope == "viewer":
            raise CustodyError("a viewer-scope token cannot make tokens")
    role = role or scope or user.role
    _valid_role(role)
    if role not in (user.role, "viewer"):
        raise CustodyError(f"a token carries its user's role ({user.role}) or viewer, not {role}")
    if scope is not None and role not in (scope, "viewer"):
        raise CustodyError(f"a token can only make tokens of its own role ({scope}) or viewer, not {role}")
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
    if user is None or user.disabled or user.enrolled_at is None:
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


def revoke_token(session: Session, token_id: int, *, by: User, role: str | None = None) -> None:
    """`by` revokes one of their own tokens, or as an admin anyone's. `role`: the role `by` acts with
    (a token's scope; None: their own role). A viewer-scope token revokes nothing."""
    role = role or by.role
    if role == "viewer":
        raise CustodyError("a viewer-scope token cannot revoke tokens")
    row = session.get(ApiToken, token_id)
    if row is None or (row.user_id != by.id and (role != "admin" or by.role != "admin")):
        raise NotFound(f"no token #{token_id}")
    if row.revoked_at is None:
        row.revoked_at = _now()
        record(session, "token.revoked", by.username, f"token:{token_id}", {})


def invite(session: Session, username: str, role: str, *, actor: str, second_factor: bool = False):
    """A new account and its enrollment link. Someone who would govern or approve spends (admin, officer)
    starts as a viewer with a second factor, and the role is proposed: one admin alone cannot make the
    second person a quorum needs. Returns (user, token, link, proposal or None)."""
    if role not in governance.DECIDERS:
        user, token, link = invite_user(session, username, role, second_factor=second_factor, actor=actor)
        return user, token, link, None
    user, token, link = invite_user(session, username, "viewer", second_factor=True, actor=actor)
    return user, token, link, governance.propose(session, "user_role", user.username, {"role": role}, actor)
