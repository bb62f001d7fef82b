"""Passkeys and keys: officers' approval credentials (the public keys their approvals of spends verify
under), and anyone's login passkey (their second factor)."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from custody.store.base import Base, utcnow


class ApproverCredential(Base):
    """One officer's approval key: a passkey (WebAuthn, ES256) or a key file (ed25519, P-256). The devices'
    policies name officers by these public keys, so the coordinator holds no secret of them. Or, with
    purpose "login", anyone's passkey as their second factor for logging in (never an approval key)."""
    __tablename__ = "approver_credentials"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    purpose: Mapped[str] = mapped_column(String(10), default="approval", server_default="approval")  # or "login"
    kind: Mapped[str] = mapped_column(String(10))                 # webauthn, ed25519 or p256
    public_key: Mapped[str] = mapped_column(String(66), unique=True)   # hex: 32 bytes, or a compressed P-256 point
    label: Mapped[str] = mapped_column(String(100))
    rp_id: Mapped[str | None] = mapped_column(String(253))        # webauthn: the relying party
    credential_id: Mapped[str | None] = mapped_column(String(1400))   # webauthn: base64url credential id
    attested: Mapped[str | None] = mapped_column(Text)            # webauthn: the attested credential data, hex
    sign_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApprovalChallenge(Base):
    """A WebAuthn ceremony begun and not yet finished, kept for its challenge and expiry: an approval
    passkey's enrolment ("enroll"), a login passkey's ("login-enroll"), the passkey step of a login
    ("login") or of a change of one's own credentials ("reauth")."""
    __tablename__ = "approval_challenges"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    purpose: Mapped[str] = mapped_column(String(20))              # enroll, login-enroll, login, reauth
    state: Mapped[str] = mapped_column(Text)                      # the library's state, JSON
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    __table_args__ = (UniqueConstraint("user_id", "purpose"),)
