"""Rotations as the CLI and the API both call them (see custody.ledger.service for the conventions: the
caller owns the transaction; refusals raise CustodyError and leave the database as it was)."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from custody.devices.models import Rotation
from custody.rotation import rotations as rotation
from custody.spending.spends import parse_amount


def rotation_start(s: Session, policy: str, *, successor: str, replace: dict[str, str], actor: str) -> dict:
    from custody.ledger.registry import get_policy
    return rotation.summary(s, rotation.start(s, get_policy(s, policy), successor, replace, actor=actor))


def rotation_list(s: Session) -> list[dict]:
    return [rotation.summary(s, r) for r in s.scalars(select(Rotation).order_by(Rotation.id))]


def rotation_show(s: Session, rotation_id: int) -> dict:
    return rotation.summary(s, rotation.get(s, rotation_id))


def rotation_test(s: Session, rotation_id: int, *, amount: int | str, requester: str, fee_rate: float) -> dict:
    """Send the test spend to the successor: `amount` in satoshis, or text as a request takes it ("0.001", "5000sat")."""
    amount = amount if isinstance(amount, int) else parse_amount(amount)
    rotation.send_test(s, rotation.get(s, rotation_id), amount, requester=requester, fee_rate=fee_rate)
    return rotation_show(s, rotation_id)


def rotation_migrate(s: Session, rotation_id: int, *, requester: str, fee_rate: float) -> dict:
    rotation.migrate(s, rotation.get(s, rotation_id), requester=requester, fee_rate=fee_rate)
    return rotation_show(s, rotation_id)


def rotation_complete(s: Session, rotation_id: int, *, actor: str) -> dict:
    return rotation.complete(s, rotation.get(s, rotation_id), actor=actor)
