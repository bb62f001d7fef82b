"""The custody database: who holds which keys, which policies guard what, and every coin they hold.

Amounts are integer satoshis (BigInteger). Chain data (transactions, UTXOs, blocks) is kept in step
with the node by `custody.ledger.sync`; the `blocks` table is the cursor that makes a reorg detectable.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import (BigInteger, Boolean, DateTime, ForeignKey, Integer, LargeBinary, String, Text,
                        UniqueConstraint, Index)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from custody.store.base import Base, utcnow


class Organization(Base):
    __tablename__ = "organizations"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Signatory(Base):
    __tablename__ = "signatories"
    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"))
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    status: Mapped[str] = mapped_column(String(20), default="active")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    __table_args__ = (UniqueConstraint("organization_id", "name"),)


class SigningDevice(Base):
    __tablename__ = "signing_devices"
    id: Mapped[int] = mapped_column(primary_key=True)
    signatory_id: Mapped[int | None] = mapped_column(ForeignKey("signatories.id"))
    model: Mapped[str] = mapped_column(String(100))
    serial: Mapped[str] = mapped_column(String(100), unique=True)
    fingerprint: Mapped[str | None] = mapped_column(String(8))
    firmware_version: Mapped[str | None] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(20), default="issued")   # issued, active, suspended, revoked
    hwi_type: Mapped[str | None] = mapped_column(String(40))            # HWI's device type, once connected
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Key(Base):
    __tablename__ = "keys"
    id: Mapped[int] = mapped_column(primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(200))          # m/48h/1h/0h/2h
    xpub: Mapped[str] = mapped_column(String(120), unique=True)  # canonical xpub/tpub
    network: Mapped[str] = mapped_column(String(10))       # main / test
    signatory_id: Mapped[int | None] = mapped_column(ForeignKey("signatories.id"))
    device_id: Mapped[int | None] = mapped_column(ForeignKey("signing_devices.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    @property
    def descriptor_key(self) -> str:
        return f"[{self.fingerprint}{self.path[1:]}]{self.xpub}"


class Policy(Base):
    __tablename__ = "policies"
    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"))
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(30))
    threshold: Mapped[int] = mapped_column(Integer)
    network: Mapped[str] = mapped_column(String(10))
    descriptor: Mapped[str] = mapped_column(Text)          # multipath <0;1>/* with checksum
    status: Mapped[str] = mapped_column(String(10), default="draft")   # draft, active, retiring, retired
    recovery_threshold: Mapped[int] = mapped_column(Integer, default=0)
    recovery_after: Mapped[int] = mapped_column(Integer, default=0)
    gap_limit: Mapped[int] = mapped_column(Integer, default=20)
    scanned_height: Mapped[int | None] = mapped_column(Integer)   # set once scantxoutset discovery ran
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    keys: Mapped[list["PolicyKey"]] = relationship(order_by="PolicyKey.position", cascade="all, delete-orphan")


class PolicyKey(Base):
    __tablename__ = "policy_keys"
    policy_id: Mapped[int] = mapped_column(ForeignKey("policies.id"), primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("keys.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(10), default="quorum")   # quorum or recovery
    key: Mapped[Key] = relationship()


class Address(Base):
    __tablename__ = "addresses"
    id: Mapped[int] = mapped_column(primary_key=True)
    policy_id: Mapped[int] = mapped_column(ForeignKey("policies.id"))
    branch: Mapped[int] = mapped_column(Integer)           # 0 receive, 1 change
    index: Mapped[int] = mapped_column(Integer)
    script_pubkey: Mapped[bytes] = mapped_column(LargeBinary)
    address: Mapped[str] = mapped_column(String(100))
    used: Mapped[bool] = mapped_column(Boolean, default=False)
    __table_args__ = (UniqueConstraint("policy_id", "branch", "index"), UniqueConstraint("script_pubkey"))


class Block(Base):
    """The chain as the ledger applied it: one row per block, the sync cursor."""
    __tablename__ = "blocks"
    height: Mapped[int] = mapped_column(Integer, primary_key=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    time: Mapped[int] = mapped_column(BigInteger)


class ChainTransaction(Base):
    __tablename__ = "transactions"
    id: Mapped[int] = mapped_column(primary_key=True)
    txid: Mapped[str] = mapped_column(String(64), unique=True)
    block_height: Mapped[int | None] = mapped_column(Integer, index=True)   # None: in the mempool
    block_hash: Mapped[str | None] = mapped_column(String(64))
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    fee: Mapped[int | None] = mapped_column(BigInteger)


class PolicyTransaction(Base):
    """A transaction's effect on one policy: what it received and what it spent, in satoshis."""
    __tablename__ = "policy_transactions"
    policy_id: Mapped[int] = mapped_column(ForeignKey("policies.id"), primary_key=True)
    transaction_id: Mapped[int] = mapped_column(ForeignKey("transactions.id", ondelete="CASCADE"), primary_key=True)
    received: Mapped[int] = mapped_column(BigInteger, default=0)
    spent: Mapped[int] = mapped_column(BigInteger, default=0)


class Utxo(Base):
    """A coin of a policy. Its state is derived (see custody.ledger.coins.utxo_state)."""
    __tablename__ = "utxos"
    id: Mapped[int] = mapped_column(primary_key=True)
    policy_id: Mapped[int] = mapped_column(ForeignKey("policies.id"), index=True)
    address_id: Mapped[int] = mapped_column(ForeignKey("addresses.id"))
    txid: Mapped[str] = mapped_column(String(64))
    vout: Mapped[int] = mapped_column(Integer)
    value: Mapped[int] = mapped_column(BigInteger)
    height: Mapped[int | None] = mapped_column(Integer)          # None: unconfirmed
    coinbase: Mapped[bool] = mapped_column(Boolean, default=False)
    spent_txid: Mapped[str | None] = mapped_column(String(64))
    spent_height: Mapped[int | None] = mapped_column(Integer)   # None while the spend is unconfirmed
    frozen: Mapped[bool] = mapped_column(Boolean, default=False)
    freeze_reason: Mapped[str | None] = mapped_column(Text)
    reserved_by: Mapped[str | None] = mapped_column(String(64))
    # migration 0004 adds partial indexes over unspent coins for the console's sorted pages
    __table_args__ = (UniqueConstraint("txid", "vout"), Index("ix_utxos_spent", "policy_id", "spent_txid"))


class Label(Base):
    """BIP-329 labels: type is tx, addr, pubkey, input, output or xpub; ref is what it labels."""
    __tablename__ = "labels"
    id: Mapped[int] = mapped_column(primary_key=True)
    type: Mapped[str] = mapped_column(String(10))
    ref: Mapped[str] = mapped_column(String(200))
    label: Mapped[str] = mapped_column(Text)
    origin: Mapped[str | None] = mapped_column(Text)
    spendable: Mapped[bool | None] = mapped_column(Boolean)
    __table_args__ = (UniqueConstraint("type", "ref"),)
