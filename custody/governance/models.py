"""Governance proposals: a change to a rule, a status or a role, waiting for other people's approval;
their decisions; and the quorum settings themselves."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from custody.store.base import Base, utcnow


class Proposal(Base):
    """One proposed change. pending -> scheduled (quorum reached) -> executed; or rejected, cancelled,
    or failed (the target changed since, or the change no longer applies: `reason` says which)."""
    __tablename__ = "governance_proposals"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))                # approval_rule, policy_status, device_status, ...
    target: Mapped[str] = mapped_column(String(200))             # policy name, device serial, username, "governance"
    change: Mapped[str] = mapped_column(Text)                    # canonical JSON: the target's state asked for
    before: Mapped[str] = mapped_column(Text)                    # canonical JSON: the target's state when proposed
    loosening: Mapped[bool] = mapped_column(Boolean)
    proposer: Mapped[str] = mapped_column(String(64))            # canonical username
    required: Mapped[int] = mapped_column(Integer)               # approvals needed (the quorum when proposed)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    reason: Mapped[str | None] = mapped_column(Text)             # why it failed, or the cancel/reject note
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    scheduled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    execute_after: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    executed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    __table_args__ = (Index("ix_governance_proposals_state", "state"),)


class ProposalVote(Base):
    """One person's decision on one proposal: each person decides once (the unique constraint holds even
    when the same decision is sent twice at once)."""
    __tablename__ = "governance_votes"
    id: Mapped[int] = mapped_column(primary_key=True)
    proposal_id: Mapped[int] = mapped_column(ForeignKey("governance_proposals.id"), index=True)
    voter: Mapped[str] = mapped_column(String(64))               # canonical username
    decision: Mapped[str] = mapped_column(String(10))            # approve or reject
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    __table_args__ = (UniqueConstraint("proposal_id", "voter"),)


class GovernanceSettings(Base):
    """The one row (id 1) of quorum settings; changing it is itself a proposal."""
    __tablename__ = "governance_settings"
    id: Mapped[int] = mapped_column(primary_key=True)
    quorum: Mapped[int] = mapped_column(Integer)                 # approvals by others than the proposer
    loosen_delay: Mapped[int] = mapped_column(Integer)           # seconds a loosening change waits after quorum
