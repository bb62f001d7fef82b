"""Tables for the mining treasury: pools and accounts with their contract terms, the fleet's devices and
workers, pool statement lines (append-only, revisions kept), telemetry samples, reconciliation findings
and sweeps. Amounts are integer satoshis; difficulty counters are exact decimals."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Integer, String, Text, TypeDecorator, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from custody.store.base import Base, utcnow

class DecimalText(TypeDecorator):
    """An exact decimal kept as its text: SQLite stores NUMERIC as a binary float (15-17 digits), and a
    year of a miner's difficulty-accepted counter needs 20. Compared in Python, never in SQL."""
    impl = String(60)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else format(Decimal(value), "f")

    def process_result_value(self, value, dialect):
        return None if value is None else Decimal(value)


DIFFICULTY = DecimalText()


class Pool(Base):
    __tablename__ = "mining_pools"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    kind: Mapped[str] = mapped_column(String(20))               # braiins, foundry, f2pool, luxor, ocean, generic


class PoolAccount(Base):
    """One account (sub-account) at a pool and its contract terms."""
    __tablename__ = "mining_accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("mining_pools.id"))
    name: Mapped[str] = mapped_column(String(80))
    scheme: Mapped[str] = mapped_column(String(10))             # PPS, FPPS, PPLNS, TIDES, SOLO
    pool_fee_bps: Mapped[int] = mapped_column(Integer)          # 250 = 2.5 %
    fee_method: Mapped[str] = mapped_column(String(20))         # how the pool computes the FPPS fee ratio
    payout_threshold: Mapped[int] = mapped_column(BigInteger)   # satoshis
    schedule: Mapped[str] = mapped_column(String(20))           # daily, per-block, ...
    payout_addresses: Mapped[str] = mapped_column(Text)         # JSON list: the whitelist
    fleet_policy_id: Mapped[int | None] = mapped_column(ForeignKey("policies.id"))   # the fleet payout wallet
    __table_args__ = (UniqueConstraint("pool_id", "name"),)


class MiningDevice(Base):
    """A machine of the fleet, the worker name it mines under, and where its API answers (if polled)."""
    __tablename__ = "mining_devices"
    id: Mapped[int] = mapped_column(primary_key=True)
    serial: Mapped[str] = mapped_column(String(80), unique=True)
    model: Mapped[str] = mapped_column(String(80))
    account_id: Mapped[int] = mapped_column(ForeignKey("mining_accounts.id"))
    worker: Mapped[str] = mapped_column(String(120))
    api_host: Mapped[str | None] = mapped_column(String(200))
    api_port: Mapped[int | None] = mapped_column(Integer)
    __table_args__ = (UniqueConstraint("account_id", "worker"),)


class StatementLine(Base):
    """A line of a pool statement, normalised. Never updated: a restated line is a new revision, and the
    one it replaces is marked superseded."""
    __tablename__ = "mining_statement_lines"
    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("mining_accounts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(10))               # earning, payout, balance
    key: Mapped[str] = mapped_column(String(200))               # the pool's identity for the line (day, tx id)
    revision: Mapped[int] = mapped_column(Integer)
    day: Mapped[str] = mapped_column(String(10), index=True)    # accounting day, UTC, YYYY-MM-DD
    amount: Mapped[int] = mapped_column(BigInteger)             # satoshis
    fee: Mapped[int | None] = mapped_column(BigInteger)
    txid: Mapped[str | None] = mapped_column(String(64))
    address: Mapped[str | None] = mapped_column(String(100))
    details: Mapped[str] = mapped_column(Text)                  # JSON: the pool's other fields, normalised
    raw_sha256: Mapped[str] = mapped_column(String(64))         # of the payload the line came from
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    superseded: Mapped[bool] = mapped_column(Boolean, default=False)
    __table_args__ = (UniqueConstraint("account_id", "kind", "key", "revision"),)


class TelemetrySample(Base):
    __tablename__ = "mining_telemetry"
    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int | None] = mapped_column(ForeignKey("mining_devices.id"), index=True)
    worker: Mapped[str] = mapped_column(String(120))
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    difficulty_accepted: Mapped[Decimal] = mapped_column(DIFFICULTY)   # monotonic counter (resets on restart)
    mhs_av: Mapped[Decimal | None] = mapped_column(DIFFICULTY)
    source: Mapped[str] = mapped_column(String(20))             # cgminer, braiins, file


class Discrepancy(Base):
    """A reconciliation finding: its category (the reference note's names), how bad, and where."""
    __tablename__ = "mining_discrepancies"
    id: Mapped[int] = mapped_column(primary_key=True)
    category: Mapped[str] = mapped_column(String(40), index=True)
    severity: Mapped[str] = mapped_column(String(10))           # info, warn, alert, critical
    account_id: Mapped[int | None] = mapped_column(ForeignKey("mining_accounts.id"))
    day: Mapped[str | None] = mapped_column(String(10))
    ref: Mapped[str] = mapped_column(String(200))               # what it is about: a txid, a line, a worker
    detail: Mapped[str] = mapped_column(Text)
    amount: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolved_by: Mapped[str | None] = mapped_column(String(200))
    __table_args__ = (UniqueConstraint("category", "ref"),)


class Sweep(Base):
    """One sweep of matured fleet payouts into custody: a spend of the fleet wallet, with what it left."""
    __tablename__ = "mining_sweeps"
    id: Mapped[int] = mapped_column(primary_key=True)
    fleet_policy_id: Mapped[int] = mapped_column(ForeignKey("policies.id"))
    spend_id: Mapped[int | None] = mapped_column(ForeignKey("spends.id"))
    destination: Mapped[str] = mapped_column(String(100))
    inputs: Mapped[int] = mapped_column(Integer)
    amount: Mapped[int] = mapped_column(BigInteger)
    fee: Mapped[int] = mapped_column(BigInteger)
    vsize: Mapped[int] = mapped_column(Integer)
    deferred: Mapped[str] = mapped_column(Text)                 # JSON: outpoint -> reason (immature, stranded, ...)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
