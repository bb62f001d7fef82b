"""Rotation: replace devices or signatories by moving every coin to a successor policy.

1. `start`: a ceremony for the successor policy with the old policy's devices, minus those leaving,
   plus their replacements. It runs like any onboarding (keys with proof, registration, confirmation).
2. `send_test`: once the successor is active, a small spend from the old policy to the successor's
   first address goes through the normal approval and signing flow.
3. `migrate`: once the ledger sees the test coin confirmed in the successor, a sweep of every old coin
   to the successor is requested. The successor's addresses are added to the old policy's allow-list,
   and the sweep to the successor is exempt from the old rule's amount limits (not from its approvals).
   The old policy becomes `retiring`.
4. `complete`: only once the migration has confirmed and nothing is left in the old policy: the old
   policy is retired and the leaving devices are revoked.
Every step is in the tamper-evident log.
"""
from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from custody.devices import ceremony as ceremonies, inventory as devices
from custody.devices.models import Ceremony, CeremonyMember, DeviceRegistration, Rotation
from custody.errors import CustodyError, NotFound
from custody.eventlog.log import record
from custody.ledger import coins as ledger
from custody.ledger.models import Address, Policy, SigningDevice, Utxo
from custody.ledger.registry import receive_address, set_status
from custody.spending import spends
from custody.spending.models import ApprovalRule, Spend


def get(session: Session, rotation_id: int) -> Rotation:
    rotation = session.get(Rotation, rotation_id)
    if rotation is None:
        raise NotFound(f"no rotation #{rotation_id}")
    return rotation


def start(session: Session, old: Policy, successor_name: str, replace: dict[str, str], *, actor: str,
          threshold: int | None = None) -> Rotation:
    """`replace`: serial of a leaving device -> serial of the device that takes its place."""
    if old.status != "active":
        raise CustodyError(f"policy {old.name!r} is {old.status}; only an active policy is rotated")
    if session.scalar(select(Rotation).where(Rotation.old_policy_id == old.id, Rotation.state != "complete")):
        raise CustodyError(f"policy {old.name!r} already has a rotation under way")
    current = [d.serial for d in session.scalars(select(SigningDevice).join(
        DeviceRegistration, DeviceRegistration.device_id == SigningDevice.id).where(
        DeviceRegistration.policy_id == old.id).order_by(SigningDevice.id))]
    unknown = [s for s in replace if s not in current]
    if unknown:
        raise CustodyError(f"device {unknown[0]} is not registered for policy {old.name!r}")
    if not replace:
        raise CustodyError("a rotation replaces at least one device")
    serials = [replace.get(s, s) for s in current]
    ceremony = ceremonies.start(session, successor_name, threshold or old.threshold, serials, actor=actor,
                                replaces=old)
    leaving = [devices.get(session, s).id for s in replace]
    rotation = Rotation(old_policy_id=old.id, ceremony_id=ceremony.id, retiring_devices=json.dumps(leaving),
                        state="successor", created_by=actor)
    session.add(rotation)
    session.flush()
    record(session, "rotation.started", actor, f"policy:{old.name}",
           {"rotation": rotation.id, "successor": successor_name, "replace": replace, "ceremony": ceremony.id})
    return rotation


def _successor(session: Session, rotation: Rotation) -> Policy:
    ceremony = session.get(Ceremony, rotation.ceremony_id)
    if ceremony.state != "complete":
        raise CustodyError(f"the successor policy's ceremony #{ceremony.id} is {ceremony.state}; finish it first")
    return session.get(Policy, ceremony.policy_id)


def send_test(session: Session, rotation: Rotation, amount: int, *, requester: str, fee_rate: float) -> Spend:
    if rotation.state != "successor":
        raise CustodyError(f"rotation #{rotation.id} is {rotation.state}; the test spend comes first")
    successor = _successor(session, rotation)
    old = session.get(Policy, rotation.old_policy_id)
    first = receive_address(session, successor, 0)
    _allow(session, old, successor, requester)
    spend = spends.request_spend(session, old, requester, [(first, amount)], fee_rate=fee_rate,
                                 memo=f"rotation #{rotation.id}: test spend to {successor.name}")
    rotation.test_spend_id, rotation.state = spend.id, "testing"
    record(session, "rotation.test", requester, f"policy:{old.name}",
           {"rotation": rotation.id, "spend": spend.id, "address": first, "amount": amount})
    return spend


def migrate(session: Session, rotation: Rotation, *, requester: str, fee_rate: float) -> Spend:
    if rotation.state != "testing":
        raise CustodyError(f"rotation #{rotation.id} is {rotation.state}; migration follows the test spend")
    test = session.get(Spend, rotation.test_spend_id)
    successor = _successor(session, rotation)
    if test.state != "confirmed" or not session.scalar(select(Utxo.txid).where(
            Utxo.policy_id == successor.id, Utxo.txid == test.txid, Utxo.height.is_not(None))):
        raise CustodyError(f"the test spend #{test.id} has not reached {successor.name!r} in a block yet "
                           "(sync the ledger once it confirms)")
    old = session.get(Policy, rotation.old_policy_id)
    destination = receive_address(session, successor, 1)
    _allow(session, old, successor, requester)
    spend = spends.request_spend(session, old, requester, [(destination, 0)], fee_rate=fee_rate, sweep=True,
                                 memo=f"rotation #{rotation.id}: migration to {successor.name}")
    rotation.migration_spend_id, rotation.state = spend.id, "migrating"
    set_status(session, old, "retiring", actor=requester)
    record(session, "rotation.migration", requester, f"policy:{old.name}",
           {"rotation": rotation.id, "spend": spend.id, "address": destination, "amount": spend.amount})
    return spend


def complete(session: Session, rotation: Rotation, *, actor: str) -> dict:
    if rotation.state != "migrating":
        raise CustodyError(f"rotation #{rotation.id} is {rotation.state}; it completes after the migration")
    migration = session.get(Spend, rotation.migration_spend_id)
    old = session.get(Policy, rotation.old_policy_id)
    if migration.state != "confirmed":
        raise CustodyError(f"the migration spend #{migration.id} is {migration.state}; the old policy retires "
                           "only once it confirms")
    left = sum(b.total for b in ledger.balances(session, old))
    if left:
        raise CustodyError(f"{left} sat are still in {old.name!r}: migrate them before retiring it")
    set_status(session, old, "retired", actor=actor)
    revoked = []
    for device_id in json.loads(rotation.retiring_devices):
        device = session.get(SigningDevice, device_id)
        if device.status != "revoked":
            devices.set_status(session, device, "revoked", actor=actor, reason=f"rotation #{rotation.id}")
        revoked.append(device.serial)
    rotation.state = "complete"
    record(session, "rotation.complete", actor, f"policy:{old.name}", {"rotation": rotation.id, "revoked": revoked})
    return summary(session, rotation)


def summary(session: Session, rotation: Rotation) -> dict:
    ceremony = session.get(Ceremony, rotation.ceremony_id)
    return {"id": rotation.id, "state": rotation.state,
            "old_policy": session.get(Policy, rotation.old_policy_id).name, "successor": ceremony.policy_name,
            "ceremony": ceremony.id, "test_spend": rotation.test_spend_id, "migration_spend": rotation.migration_spend_id,
            "retiring_devices": [session.get(SigningDevice, i).serial for i in json.loads(rotation.retiring_devices)],
            "members": [session.get(SigningDevice, m.device_id).serial for m in session.scalars(
                select(CeremonyMember).where(CeremonyMember.ceremony_id == ceremony.id))]}


def _allow(session: Session, old: Policy, successor: Policy, actor: str) -> None:
    """Put the successor's receive addresses on the old policy's allow-list, if it keeps one."""
    rule = session.get(ApprovalRule, old.id)
    if rule is None or rule.allow_list is None:
        return
    allowed = json.loads(rule.allow_list)
    added = [a for a in session.scalars(select(Address.address).where(
        Address.policy_id == successor.id, Address.branch == 0).order_by(Address.index)) if a not in allowed]
    if added:
        rule.allow_list = json.dumps(allowed + added)
        record(session, "rule.allow_list", actor, f"policy:{old.name}", {"added": added, "reason": "rotation"})
