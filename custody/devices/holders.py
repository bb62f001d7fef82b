"""Who holds what: the link from a console user to the Signatory a device is issued to, and from there
to the keys, policies and ceremonies that are theirs.

A device is issued to a signatory by name (`devices.issue`); a console user is that signatory when the
user's name and the signatory's name are one name in canonical form (Unicode NFKC, surrounding white
space dropped, case folded: "Alice" issued, "alice" logged in). The link must be unambiguous: when
two accounts, or two signatories, share a canonical name, nobody is taken for either until an admin
renames one (a refusal, never a guess).

A key is a signatory's when it was bound to them or to one of their devices (the ceremony does both),
or when its origin fingerprint is that of a device issued to them (a policy imported with the device's
key); a policy or a ceremony is theirs when one of its keys or devices is.
"""
from __future__ import annotations

import unicodedata

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from custody.devices.models import CeremonyMember, DeviceRegistration
from custody.errors import CustodyError
from custody.ledger.models import Key, PolicyKey, Signatory, SigningDevice
from custody.people.models import User


class NotHolder(CustodyError):
    """The caller is not the holder of the device (the API answers 403)."""


def canonical(name: str) -> str:
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name or "").strip().casefold())


def _users_named(session: Session, key: str) -> list[str]:
    return [u for u in session.scalars(select(User.username)) if canonical(u) == key]


def signatories_of(session: Session, username: str) -> list[Signatory]:
    """The signatory this user is (a list of at most one), or [] when there is none or the name is
    ambiguous."""
    key = canonical(username)
    if not key or len(_users_named(session, key)) > 1:
        return []
    found = [s for s in session.scalars(select(Signatory)) if canonical(s.name) == key]
    return found if len(found) == 1 else []


def require_holder(session: Session, device: SigningDevice, username: str) -> Signatory:
    """The device's holder if that is `username`; else NotHolder, with the reason. Reads only."""
    holder = session.get(Signatory, device.signatory_id) if device.signatory_id is not None else None
    if holder is None:
        raise NotHolder(f"device {device.serial} is issued to nobody on record: nobody can have it sign")
    if canonical(holder.name) != canonical(username):
        raise NotHolder(f"device {device.serial} is issued to {holder.name}: only its holder acts with it "
                        f"(you are {username})")
    if [s.id for s in signatories_of(session, username)] != [holder.id]:
        raise NotHolder(f"the name {holder.name!r} of device {device.serial}'s holder matches more than one "
                        "account or signatory: an admin must rename one before the device can be used")
    return holder


def _ids(session: Session, username: str) -> tuple[list[int], list[int], list[str]]:
    """(signatory ids, their device ids, their devices' fingerprints)."""
    people = [s.id for s in signatories_of(session, username)]
    if not people:
        return [], [], []
    rows = session.execute(select(SigningDevice.id, SigningDevice.fingerprint)
                           .where(SigningDevice.signatory_id.in_(people))).all()
    return people, [i for i, _ in rows], [f for _, f in rows if f]


def keys_held(session: Session, username: str) -> set[int]:
    """Ids of the keys that are this user's (as a signatory)."""
    people, device_ids, fingerprints = _ids(session, username)
    if not people:
        return set()
    conditions = [Key.signatory_id.in_(people)]
    if device_ids:
        conditions.append(Key.device_id.in_(device_ids))
    if fingerprints:
        conditions.append(Key.fingerprint.in_(fingerprints))
    return set(session.scalars(select(Key.id).where(or_(*conditions))))


def policies_held(session: Session, username: str) -> set[int]:
    """Ids of the policies with a key of this user's, or registered on one of their devices."""
    keys = keys_held(session, username)
    held = set(session.scalars(select(PolicyKey.policy_id).where(PolicyKey.key_id.in_(keys)))) if keys else set()
    _, device_ids, _ = _ids(session, username)
    if device_ids:
        held |= set(session.scalars(select(DeviceRegistration.policy_id)
                                    .where(DeviceRegistration.device_id.in_(device_ids))))
    return held


def ceremonies_held(session: Session, username: str) -> set[int]:
    """Ids of the ceremonies one of this user's devices takes part in."""
    _, device_ids, _ = _ids(session, username)
    if not device_ids:
        return set()
    return set(session.scalars(select(CeremonyMember.ceremony_id).where(CeremonyMember.device_id.in_(device_ids))))
