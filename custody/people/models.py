"""People who use the coordinator, their enrollment links, API tokens and login sessions."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from custody.store.base import Base, utcnow


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    # canonical (coordinator.accounts.canonical_username: NFKC, case-folded, [a-z0-9._@-]), so that the
    # unique constraint is on the identity itself: "OLGA" and "olga" are one officer
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))                  # admin, officer, signatory, auditor, viewer
    # argon2id, libsodium's encoded string; "" while the account waits for its holder to enroll
    password_hash: Mapped[str] = mapped_column(String(200))
    # the kind of second factor enrolled: "totp" (a passkey later); None: none
    second_factor: Mapped[str | None] = mapped_column(String(16))
    totp_secret: Mapped[str | None] = mapped_column(String(64))    # base32, when second_factor is "totp"
    last_totp_step: Mapped[int] = mapped_column(Integer, default=0)  # a code is accepted once
    # failed logins in a row; an attempt is counted (committed) before its password is checked
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # failed logins are logged at most once a minute per account: those not yet in the log, and when
    # the last such entry was written
    failures_unlogged: Mapped[int] = mapped_column(Integer, default=0)
    failure_logged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # when its holder set their own password (and second factor); None: created or reset by an admin and
    # not enrolled yet, so it can neither log in nor have tokens
    enrolled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Enrollment(Base):
    """A one-time link for a person to set their own credentials. The link holds `selector.verifier`:
    the selector finds the row, and only the verifier's SHA-256 is kept, so the database cannot
    give the link back."""
    __tablename__ = "enrollments"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    selector: Mapped[str] = mapped_column(String(32), unique=True)
    verifier_hash: Mapped[str] = mapped_column(String(64))
    # a second factor must be enrolled even when the user's role does not require one
    second_factor_required: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # used, or replaced by a newer link: set once, by a conditional UPDATE
    spent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiToken(Base):
    """Only the SHA-256 of a token is kept; the token itself is shown once, when it is made."""
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class LoginSession(Base):
    """A browser login: the cookie holds a random value whose SHA-256 is the id."""
    __tablename__ = "login_sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # the last request seen, to the minute (written at most once a minute); None: not since created_at
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
