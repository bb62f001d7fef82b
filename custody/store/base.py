"""What every table shares: the declarative base, the clock it stamps rows with, and the health probe's row."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import DateTime
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class HealthProbe(Base):
    """The one row /health rewrites and commits: proof that the database still takes writes (a full
    disk or a read-only database answers reads and refuses commits)."""
    __tablename__ = "health_probe"
    id: Mapped[int] = mapped_column(primary_key=True)
    checked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
