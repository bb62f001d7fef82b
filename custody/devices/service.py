"""Device lifecycle operations as the CLI and the API both call them (see custody.ledger.service for the conventions:
the caller owns the transaction; refusals raise CustodyError and leave the database as it was)."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from custody.devices import ceremony, holders, inventory as devices
from custody.devices.hwi import enumerate_devices
from custody.devices.models import Ceremony


NotHolder = holders.NotHolder      # the caller is not the device's holder (the API answers 403)


def require_holder(s: Session, serial: str, username: str) -> None:
    """NotHolder unless `username` holds the device (the signatory it is issued to); NotFound for no such
    device. Reads only: checked before the device is reached, so a refusal changes and logs nothing."""
    holders.require_holder(s, devices.get(s, serial), username)


def require_ceremony(s: Session, ceremony_id: int) -> None:
    """NotFound (404 at the API) for a ceremony that does not exist."""
    ceremony.get(s, ceremony_id)


def connected() -> list[dict]:
    """What HWI sees right now."""
    return [{"type": d.hwi_type, "model": d.model, "fingerprint": d.fingerprint, "label": d.label, "path": d.path}
            for d in enumerate_devices()]


def device_list(s: Session) -> list[dict]:
    return devices.inventory(s)


def device_show(s: Session, serial: str) -> dict:
    return devices.inventory(s, serial)[0]


def device_issue(s: Session, *, model: str, serial: str, to: str, actor: str) -> dict:
    devices.issue(s, model=model, serial=serial, to=to, actor=actor)
    return device_show(s, serial)


def device_connect(s: Session, serial: str, *, network: str, actor: str, fingerprint: str | None = None) -> dict:
    devices.connect(s, devices.get(s, serial), network, actor=actor, fingerprint=fingerprint)
    return device_show(s, serial)


def device_status(s: Session, serial: str, status: str, *, actor: str, reason: str = "") -> dict:
    devices.set_status(s, devices.get(s, serial), status, actor=actor, reason=reason)
    return device_show(s, serial)


# -- firmware ----------------------------------------------------------------------------------------------
def firmware_trust(s: Session, model: str, *, keys: list[str], threshold: int, production: bool, actor: str) -> dict:
    row = devices.trust_model(s, model, keys=keys, threshold=threshold, production=production, actor=actor)
    return {"model": row.model, "threshold": row.threshold, "keys": keys, "production": row.production,
            "min_version": row.min_version}


def firmware_add(s: Session, image: bytes, *, actor: str) -> dict:
    release = devices.add_release(s, image, actor=actor)
    return next(r for r in devices.releases(s) if r["id"] == release.id)


def firmware_list(s: Session) -> list[dict]:
    return devices.releases(s)


def firmware_minimum(s: Session, model: str, version: str, *, actor: str) -> dict:
    row = devices.set_min_version(s, model, version, actor=actor)
    return {"model": row.model, "min_version": row.min_version}


def firmware_upgrade(s: Session, serial: str, release_id: int, *, network: str, actor: str) -> dict:
    return devices.upgrade(s, devices.get(s, serial), release_id, network, actor=actor)


# -- ceremonies --------------------------------------------------------------------------------------------
def ceremony_start(s: Session, name: str, *, threshold: int, devices_: list[str], actor: str) -> dict:
    return ceremony.status(s, ceremony.start(s, name, threshold, devices_, actor=actor))


def ceremony_show(s: Session, ceremony_id: int) -> dict:
    return ceremony.status(s, ceremony.get(s, ceremony_id))


def ceremony_list(s: Session) -> list[dict]:
    return [ceremony.status(s, c) for c in s.scalars(select(Ceremony).order_by(Ceremony.id))]


def ceremony_collect(s: Session, ceremony_id: int, serial: str, *, network: str, actor: str) -> dict:
    ceremony.collect_key(s, ceremony.get(s, ceremony_id), serial, network, actor=actor)
    return ceremony_show(s, ceremony_id)


def ceremony_key(s: Session, ceremony_id: int, serial: str, *, key: str, proof: str, network: str, actor: str) -> dict:
    ceremony.accept_key(s, ceremony.get(s, ceremony_id), serial, key, proof, network, actor=actor)
    return ceremony_show(s, ceremony_id)


def ceremony_register(s: Session, ceremony_id: int, *, network: str, actor: str) -> dict:
    ceremony.register(s, ceremony.get(s, ceremony_id), network, actor=actor)
    return ceremony_show(s, ceremony_id)


def ceremony_confirm(s: Session, ceremony_id: int, serial: str, *, address: str, by: str) -> dict:
    ceremony.confirm(s, ceremony.get(s, ceremony_id), serial, address, by=by)
    return ceremony_show(s, ceremony_id)
