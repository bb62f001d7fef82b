"""Spend requests, their approvals and signatures, and each policy's approval rule."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from custody.people import credential_models  # noqa: F401  (approvals refer to its table)
from custody.store.base import Base, utcnow


class ApprovalRule(Base):
    """What must be true before a spend of a policy may reach its signers. No rule: no spend."""
    __tablename__ = "approval_rules"
    policy_id: Mapped[int] = mapped_column(ForeignKey("policies.id"), primary_key=True)
    required_approvals: Mapped[int] = mapped_column(Integer)
    per_request_limit: Mapped[int | None] = mapped_column(BigInteger)      # sats
    daily_limit: Mapped[int | None] = mapped_column(BigInteger)            # sats, rolling 24 hours
    allow_list: Mapped[str | None] = mapped_column(Text)                   # JSON list of addresses; None: any
    delay_threshold: Mapped[int | None] = mapped_column(BigInteger)        # sats at or above which...
    delay_seconds: Mapped[int] = mapped_column(Integer, default=0)         # ...the spend waits this long


class Spend(Base):
    __tablename__ = "spends"
    id: Mapped[int] = mapped_column(primary_key=True)
    policy_id: Mapped[int] = mapped_column(ForeignKey("policies.id"), index=True)
    state: Mapped[str] = mapped_column(String(20), default="requested")
    requester: Mapped[str] = mapped_column(String(200))
    memo: Mapped[str | None] = mapped_column(Text)
    destinations: Mapped[str] = mapped_column(Text)          # JSON [{"address", "amount"}]
    amount: Mapped[int] = mapped_column(BigInteger)          # sats leaving the policy (excluding fee)
    fee_rate_milli: Mapped[int] = mapped_column(BigInteger)  # sat/vB x 1000
    sweep: Mapped[bool] = mapped_column(Boolean, default=False)
    coins: Mapped[str | None] = mapped_column(Text)          # JSON outpoints chosen by the requester
    psbt: Mapped[str | None] = mapped_column(Text)           # base64, with every verified signature
    txid: Mapped[str | None] = mapped_column(String(64))
    replaced_txids: Mapped[str | None] = mapped_column(Text)   # JSON list: earlier broadcasts this one replaced
    fee: Mapped[int | None] = mapped_column(BigInteger)
    change_index: Mapped[int | None] = mapped_column(Integer)
    signable_after: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    broadcast_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    confirmed_height: Mapped[int | None] = mapped_column(Integer)


class Approval(Base):
    __tablename__ = "approvals"
    id: Mapped[int] = mapped_column(primary_key=True)
    spend_id: Mapped[int] = mapped_column(ForeignKey("spends.id"), index=True)
    officer: Mapped[str] = mapped_column(String(200))
    decision: Mapped[str] = mapped_column(String(10))        # approve or reject
    # an approval is the officer's signature over the unsigned transaction (custody_signer.approvals),
    # made with one of their credentials; the same bytes travel in the PSBT to the devices
    credential_id: Mapped[int | None] = mapped_column(ForeignKey("approver_credentials.id"))
    proof: Mapped[str | None] = mapped_column(Text)          # hex: the signature or packed assertion
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    __table_args__ = (UniqueConstraint("spend_id", "officer"),)


class SpendSignature(Base):
    __tablename__ = "spend_signatures"
    id: Mapped[int] = mapped_column(primary_key=True)
    spend_id: Mapped[int] = mapped_column(ForeignKey("spends.id"), index=True)
    fingerprint: Mapped[str] = mapped_column(String(8))
    inputs_signed: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    __table_args__ = (UniqueConstraint("spend_id", "fingerprint"),)
