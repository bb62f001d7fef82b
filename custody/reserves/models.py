"""Tables for proof of reserves: each run (its challenge, PSBT, package and verification report) and the
re-proofs officers schedule."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from custody.store.base import Base, utcnow


class ReserveRun(Base):
    """One proof of reserves: the auditor's challenge, the coins held at `height`, and the proof as it is
    signed (`psbt`), finalized (`package`, the file the auditor verifies) and checked (`report`)."""
    __tablename__ = "reserve_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    audit: Mapped[str] = mapped_column(String(80))
    nonce: Mapped[str] = mapped_column(String(128))
    custodian: Mapped[str] = mapped_column(String(80))
    kind: Mapped[str] = mapped_column(String(10))               # bip322 or bip127
    height: Mapped[int] = mapped_column(Integer)
    block_hash: Mapped[str] = mapped_column(String(64))          # of the block at `height`
    message: Mapped[str] = mapped_column(Text)
    policies: Mapped[str] = mapped_column(Text)                  # JSON list of policy names
    coins: Mapped[int] = mapped_column(Integer)
    total: Mapped[int] = mapped_column(BigInteger)               # satoshis
    state: Mapped[str] = mapped_column(String(12))               # signing, complete
    psbt: Mapped[str] = mapped_column(Text)                      # base64
    package: Mapped[str | None] = mapped_column(Text)            # JSON, once finalized
    verdict: Mapped[str | None] = mapped_column(String(12))      # valid, invalid, inconclusive
    report: Mapped[str | None] = mapped_column(Text)             # signed JSON report of the last check
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finalized_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ReserveSchedule(Base):
    """A re-proof an officer asked for: when it is due, the auditor's next challenge starts a run."""
    __tablename__ = "reserve_schedules"
    id: Mapped[int] = mapped_column(primary_key=True)
    audit: Mapped[str] = mapped_column(String(80))
    policies: Mapped[str] = mapped_column(Text)                  # JSON list of policy names
    every_days: Mapped[int] = mapped_column(Integer)
    next_due: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
