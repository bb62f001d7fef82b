"""The people who hold roles, named one way: a username is an identity, stored canonical (NFKC, case-folded,
a small ASCII alphabet), so "OLGA", "Olga" and fullwidth "ＯＬＧＡ" are the one officer olga.

Roles separate duties: an admin configures (people, keys, policies, rules) but moves no money; officers
request and approve spends; signatories upload signatures; auditors and viewers read. A role changes
only through governance (a quorum of admins); how a person logs in is the coordinator's (coordinator.accounts).
"""
from __future__ import annotations

import re
import unicodedata
from datetime import datetime, timezone

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from custody.errors import CustodyError, NotFound
from custody.eventlog.log import record
from custody.people.models import ApiToken, Enrollment, LoginSession, User

ROLES = ("admin", "officer", "signatory", "auditor", "viewer")
SECOND_FACTOR_ROLES = ("admin", "officer")     # these cannot log in without a TOTP code
USERNAME = re.compile(r"[a-z0-9][a-z0-9._@-]{1,63}")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def canonical_username(username: str) -> str:
    """The one spelling of a username: NFKC-normalised, case-folded, then 2-64 characters of a-z, 0-9
    and . _ - @ starting with a letter or digit. Refuses anything else (letters of other scripts, which
    can look like these, invisible characters, spaces) with a message saying so."""
    if not isinstance(username, str):
        raise CustodyError("a username is text")
    name = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", username).strip().casefold())
    if not USERNAME.fullmatch(name):
        raise CustodyError(f"{username!r} is not a valid username: a username is 2-64 characters, the letters "
                           "a-z (case does not matter), digits and . _ - @, starting with a letter or digit")
    return name


def find_user(session: Session, username: str) -> User | None:
    try:
        name = canonical_username(username)
    except CustodyError:
        return None
    return session.scalar(select(User).where(User.username == name))


def get_user(session: Session, username: str) -> User:
    """The user of that name in any spelling of it ("OLGA" is olga)."""
    user = find_user(session, username)
    if user is None:
        raise NotFound(f"no user {username!r}")
    return user


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def has_second_factor(session: Session, user: User) -> bool:
    """True when the user logs in with a second factor, or cannot log in before enrolling one (an open
    enrollment link that requires it)."""
    if user.second_factor is not None or user.totp_secret is not None:
        return True
    return user.enrolled_at is None and session.scalar(select(Enrollment.id).where(
        Enrollment.user_id == user.id, Enrollment.spent_at.is_(None), Enrollment.second_factor_required)) is not None


def set_role(session: Session, user: User, role: str, *, actor: str) -> User:
    user.role = valid_role(role)
    if role in SECOND_FACTOR_ROLES and not has_second_factor(session, user):
        raise CustodyError(f"{user.username} has no second factor; {role}s need one (reset their account first)")
    revoke_all(session, user)
    record(session, "user.role_changed", actor, f"user:{user.username}", {"role": role})
    return user


def revoke_all(session: Session, user: User) -> None:
    """A changed role or an admin's reset ends every session and token of the user."""
    session.execute(delete(LoginSession).where(LoginSession.user_id == user.id))
    for token in session.scalars(select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))):
        token.revoked_at = _now()


def valid_role(role: str) -> str:
    if role not in ROLES:
        raise CustodyError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    return role
