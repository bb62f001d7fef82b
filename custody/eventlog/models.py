"""The event log's tables: its entries and the checkpoints of its head that were published."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from custody.store.base import Base


class EventLogEntry(Base):
    """One custody event in the tamper-evident log (custody.eventlog.log): `hash` covers the entry and the
    previous entry's hash, `signature` is the coordinator's ed25519 signature over `hash`."""
    __tablename__ = "event_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, unique=True)          # 1..n, no gaps
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # UTC
    kind: Mapped[str] = mapped_column(String(64))                    # e.g. spend.approved
    actor: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(String(200), index=True)    # e.g. spend:12
    data: Mapped[str] = mapped_column(Text)                          # canonical JSON object
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))
    key_id: Mapped[str] = mapped_column(String(64))                  # the signing ed25519 public key, hex


class EventLogCheckpoint(Base):
    """A signed head of the event log (custody.eventlog.checkpoints): where it was published, so a log cut below
    it is caught even without the published copy."""
    __tablename__ = "event_log_checkpoints"
    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)                        # the head's seq (0: an empty log)
    head_hash: Mapped[str] = mapped_column(String(64))
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    document: Mapped[str] = mapped_column(Text)                      # the signed checkpoint, as published
    destination: Mapped[str] = mapped_column(String(500))            # a file path, or reserves:ID
