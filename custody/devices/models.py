"""Tables for the life of signing devices: registrations, firmware, ceremonies and rotations.
(Signatories and devices themselves are in `models`: `Signatory`, `SigningDevice`.)"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from custody.store.base import Base, utcnow


class DeviceRegistration(Base):
    """A policy registered on a device: the device's proof, and its holder's confirmation of the address."""
    __tablename__ = "device_registrations"
    device_id: Mapped[int] = mapped_column(ForeignKey("signing_devices.id"), primary_key=True)
    policy_id: Mapped[int] = mapped_column(ForeignKey("policies.id"), primary_key=True)
    state: Mapped[str] = mapped_column(String(12))            # registered, confirmed
    policy_hash: Mapped[str] = mapped_column(String(64))       # what the proof commits to
    proof: Mapped[str] = mapped_column(Text)                   # BIP-322 signature by the device's key
    proof_address: Mapped[str] = mapped_column(String(100))
    first_address: Mapped[str] = mapped_column(String(100))    # what the device showed
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    confirmed_by: Mapped[str | None] = mapped_column(String(200))
    confirmed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class FirmwareModel(Base):
    """Per hardware model: the release keys the coordinator trusts, how many must sign, the minimum version."""
    __tablename__ = "firmware_models"
    model: Mapped[str] = mapped_column(String(100), primary_key=True)
    trusted_keys: Mapped[str] = mapped_column(Text)            # JSON list of ed25519 public keys (hex)
    threshold: Mapped[int] = mapped_column(Integer)
    production: Mapped[bool] = mapped_column(default=True)     # refuse images for test keys
    min_version: Mapped[str | None] = mapped_column(String(20))


class FirmwareRelease(Base):
    __tablename__ = "firmware_releases"
    id: Mapped[int] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(ForeignKey("firmware_models.model"))
    version: Mapped[str] = mapped_column(String(20))
    epoch: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    signatures: Mapped[int] = mapped_column(Integer)           # valid, from distinct trusted keys
    image: Mapped[bytes] = mapped_column(LargeBinary)
    added_by: Mapped[str] = mapped_column(String(200))
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Ceremony(Base):
    """Building a policy with devices: keys with proof of possession, registration, confirmation."""
    __tablename__ = "ceremonies"
    id: Mapped[int] = mapped_column(primary_key=True)
    policy_name: Mapped[str] = mapped_column(String(200), unique=True)
    threshold: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(12), default="keys")   # keys, confirming, complete, abandoned
    policy_id: Mapped[int | None] = mapped_column(ForeignKey("policies.id"))
    replaces_policy_id: Mapped[int | None] = mapped_column(ForeignKey("policies.id"))   # a rotation's predecessor
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CeremonyMember(Base):
    __tablename__ = "ceremony_members"
    ceremony_id: Mapped[int] = mapped_column(ForeignKey("ceremonies.id"), primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("signing_devices.id"), primary_key=True)
    challenge: Mapped[str] = mapped_column(String(64))         # fresh, random: the proof of possession signs it
    key_id: Mapped[int | None] = mapped_column(ForeignKey("keys.id"))


class Rotation(Base):
    """Replacing devices or signatories: successor policy, test spend, migration, retirement."""
    __tablename__ = "rotations"
    id: Mapped[int] = mapped_column(primary_key=True)
    old_policy_id: Mapped[int] = mapped_column(ForeignKey("policies.id"))
    ceremony_id: Mapped[int] = mapped_column(ForeignKey("ceremonies.id"))
    retiring_devices: Mapped[str] = mapped_column(Text)        # JSON list of device ids to revoke at the end
    state: Mapped[str] = mapped_column(String(12), default="successor")   # successor, testing, migrating, complete
    test_spend_id: Mapped[int | None] = mapped_column(ForeignKey("spends.id"))
    migration_spend_id: Mapped[int | None] = mapped_column(ForeignKey("spends.id"))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
