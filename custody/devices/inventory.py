"""Signing devices in the coordinator: inventory, status, firmware releases and upgrades.

A device is issued to a signatory (status `issued`), becomes `active` when a ceremony it took part in
completes, may be `suspended` (and resumed) and is finally `revoked` (for good). Firmware: per model the
coordinator keeps the release keys it trusts, how many must sign and the minimum version a device
must run to sign. A release is stored only after the same checks a device makes (enough distinct
valid signatures, hardware, hash); an upgrade is sent only if it is newer than what the device runs,
and the device checks it again itself.
"""
from __future__ import annotations

import hashlib
import json

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from custody_signer import protocol

from custody.devices.hwi import open_device
from custody.devices.models import DeviceRegistration, FirmwareModel, FirmwareRelease
from custody.errors import CustodyError, NotFound
from custody.eventlog.log import record
from custody.ledger.models import Key, Policy, PolicyKey, Signatory, SigningDevice
from custody.ledger.registry import organization

STATUS_FLOW = {"issued": {"active", "suspended", "revoked"}, "active": {"suspended", "revoked"},
               "suspended": {"active", "revoked"}, "revoked": set()}


# -- inventory ---------------------------------------------------------------------------------------------
def signatory(session: Session, name: str) -> Signatory:
    """The signatory of this name, added on first use."""
    name = name.strip()
    if not name or len(name) > 200:
        raise CustodyError("a signatory's name is 1 to 200 characters")
    row = session.scalar(select(Signatory).where(Signatory.name == name))
    if row is None:
        row = Signatory(organization_id=organization(session).id, name=name)
        session.add(row)
        session.flush()
    return row


def issue(session: Session, *, model: str, serial: str, to: str, actor: str) -> SigningDevice:
    """Record a device handed to a signatory."""
    model, serial = model.strip(), serial.strip()
    if not model or not serial or len(model) > 100 or len(serial) > 100:
        raise CustodyError("a device needs a model and a serial number (each at most 100 characters)")
    if session.scalar(select(SigningDevice).where(SigningDevice.serial == serial)):
        raise CustodyError(f"device {serial} is already in the inventory")
    person = signatory(session, to)
    device = SigningDevice(model=model, serial=serial, signatory_id=person.id, status="issued")
    session.add(device)
    session.flush()
    record(session, "device.issued", actor, f"device:{serial}", {"model": model, "signatory": person.name})
    return device


def get(session: Session, serial: str) -> SigningDevice:
    device = session.scalar(select(SigningDevice).where(SigningDevice.serial == serial))
    if device is None:
        raise NotFound(f"no device {serial} in the inventory")
    return device


def connect(session: Session, device: SigningDevice, network: str, *, actor: str,
            fingerprint: str | None = None) -> SigningDevice:
    """Find the device through HWI (by its fingerprint: on record, or as HWI lists it for a device that
    reports no serial; else by its label = serial) and record what it reports: fingerprint, HWI type,
    firmware."""
    if device.status == "revoked":
        raise CustodyError(f"device {device.serial} is revoked")
    with open_device(device, network, fingerprint=fingerprint) as d:
        info = d.info()
        fingerprint = d.fingerprint()
    if device.fingerprint is not None and device.fingerprint != fingerprint:
        raise CustodyError(f"device {device.serial} now reports fingerprint {fingerprint}, not {device.fingerprint} "
                           f"(reset or swapped?): suspend it and investigate")
    other = session.scalar(select(SigningDevice).where(SigningDevice.fingerprint == fingerprint,
                                                       SigningDevice.id != device.id))
    if other is not None:
        raise CustodyError(f"the connected device (fingerprint {fingerprint}) is already in the inventory as "
                           f"{other.serial}")
    if info.get("model") != device.model:
        raise CustodyError(f"the connected device is a {info.get('model')}, the inventory says {device.model}")
    device.fingerprint, device.hwi_type = fingerprint, d.found.hwi_type
    device.firmware_version = info["firmware"]["version"]
    record(session, "device.connected", actor, f"device:{device.serial}",
           {"fingerprint": fingerprint, "firmware": device.firmware_version})
    return device


def set_status(session: Session, device: SigningDevice, status: str, *, actor: str, reason: str = "") -> SigningDevice:
    if status not in STATUS_FLOW:
        raise CustodyError(f"unknown device status {status!r}")
    if status not in STATUS_FLOW[device.status]:
        raise CustodyError(f"device {device.serial} is {device.status}; it cannot become {status}")
    record(session, "device.status", actor, f"device:{device.serial}",
           {"from": device.status, "to": status, "reason": reason})
    device.status = status
    return device


def inventory(session: Session, serial: str | None = None) -> list[dict]:
    """Every device (or the one with `serial`) with its signatory, firmware standing and, per policy,
    registration state and proof."""
    names = {s.id: s.name for s in session.scalars(select(Signatory))}
    policies = {p.id: p.name for p in session.scalars(select(Policy))}
    query = select(SigningDevice).order_by(SigningDevice.id)
    if serial is not None:
        query = query.where(SigningDevice.id == get(session, serial).id)
    out = []
    for device in session.scalars(query):
        registrations = [{"policy": policies[r.policy_id], "state": r.state, "proof": r.proof,
                          "first_address": r.first_address, "confirmed_by": r.confirmed_by}
                         for r in session.scalars(select(DeviceRegistration).where(
                             DeviceRegistration.device_id == device.id))]
        out.append({"serial": device.serial, "model": device.model, "fingerprint": device.fingerprint,
                    "firmware_version": device.firmware_version, "status": device.status,
                    "signatory": names.get(device.signatory_id), "firmware": firmware_standing(session, device),
                    "registrations": registrations})
    return out


# -- firmware ----------------------------------------------------------------------------------------------
def trust_model(session: Session, model: str, *, keys: list[str], threshold: int, production: bool,
                actor: str) -> FirmwareModel:
    """Set the release keys trusted for a hardware model and how many must sign an image."""
    for key in keys:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise CustodyError(f"{key[:20]!r} is not an ed25519 public key (64 hex characters)")
    if len(set(keys)) != len(keys):
        raise CustodyError("a release key is listed twice")
    if not 1 <= threshold <= len(keys):
        raise CustodyError(f"threshold {threshold} must be between 1 and the {len(keys)} keys")
    row = session.get(FirmwareModel, model) or FirmwareModel(model=model)
    row.trusted_keys, row.threshold, row.production = json.dumps(sorted(keys)), threshold, production
    session.add(row)
    record(session, "firmware.trust", actor, f"model:{model}",
           {"keys": sorted(keys), "threshold": threshold, "production": production})
    return row


def _model(session: Session, model: str) -> FirmwareModel:
    row = session.get(FirmwareModel, model)
    if row is None:
        raise CustodyError(f"no release keys are trusted for model {model!r} yet")
    return row


def add_release(session: Session, image: bytes, *, actor: str) -> FirmwareRelease:
    """Store a release after checking its signatures, hardware and hash as a device would."""
    try:
        manifest, signed_by, _payload = protocol.read_image(image)
        trust = _model(session, manifest.model)
        trusted = set(json.loads(trust.trusted_keys))
        protocol.verify_image(image, trusted_keys=trusted, threshold=trust.threshold, model=trust.model,
                              installed_version=(0, 0, 0), epoch_counter=0, production=trust.production)
    except protocol.FirmwareError as e:
        raise CustodyError(f"firmware refused: {e}") from None
    digest = hashlib.sha256(image).hexdigest()
    if session.scalar(select(FirmwareRelease).where(FirmwareRelease.sha256 == digest)):
        raise CustodyError(f"release {digest[:16]}… is already in the registry")
    version = protocol.version_text(manifest.version)
    signatures = len({key for key, _ in signed_by if key in trusted})
    release = FirmwareRelease(model=manifest.model, version=version, epoch=manifest.epoch, sha256=digest,
                              size=len(image), signatures=signatures, image=image, added_by=actor)
    session.add(release)
    session.flush()
    record(session, "firmware.release", actor, f"model:{manifest.model}",
           {"version": version, "epoch": manifest.epoch, "sha256": digest, "signatures": signatures})
    return release


def set_min_version(session: Session, model: str, version: str, *, actor: str) -> FirmwareModel:
    try:
        protocol.parse_version(version)
    except protocol.FirmwareError as e:
        raise CustodyError(str(e)) from None
    trust = _model(session, model)
    if not session.scalar(select(FirmwareRelease).where(FirmwareRelease.model == model,
                                                         FirmwareRelease.version == version)):
        raise CustodyError(f"no verified release {version} for {model} is in the registry")
    record(session, "firmware.minimum", actor, f"model:{model}", {"from": trust.min_version, "to": version})
    trust.min_version = version
    return trust


def releases(session: Session) -> list[dict]:
    return [{"id": r.id, "model": r.model, "version": r.version, "epoch": r.epoch, "sha256": r.sha256,
             "size": r.size, "signatures": r.signatures, "added_by": r.added_by}
            for r in session.scalars(select(FirmwareRelease).order_by(FirmwareRelease.id))]


def firmware_standing(session: Session, device: SigningDevice) -> str:
    """"current", "upgrade required (below X)", or "unknown" until the device was connected."""
    trust = session.get(FirmwareModel, device.model)
    if device.firmware_version is None:
        return "unknown"
    if trust is None or trust.min_version is None:
        return "current"
    if protocol.parse_version(device.firmware_version) < protocol.parse_version(trust.min_version):
        return f"upgrade required (below {trust.min_version})"
    return "current"


# -- signatures entering the coordinator ---------------------------------------------------------------------
def signing_refusal(session: Session, device: SigningDevice) -> str | None:
    """Why signatures by this device are not taken now (None: they are). The same answer for every way a
    signature arrives (file, QR, API, HWI): a suspended or revoked device, or one below its model's minimum
    firmware, signs nothing, and a device whose firmware was never read cannot show it meets a minimum."""
    if device.status in ("suspended", "revoked"):
        return f"the device is {device.status}"
    standing = firmware_standing(session, device)
    if standing.startswith("upgrade required"):
        return f"it runs firmware {device.firmware_version}, {standing}: it cannot sign until upgraded"
    trust = session.get(FirmwareModel, device.model)
    if standing == "unknown" and trust is not None and trust.min_version is not None:
        return f"its firmware was never read (connect it) and {device.model} requires at least {trust.min_version}"
    return None


def require_may_sign(session: Session, device: SigningDevice) -> None:
    """CustodyError naming the device and the reason when its signatures are refused."""
    reason = signing_refusal(session, device)
    if reason is not None:
        raise CustodyError(f"signature by device {device.serial} refused: {reason}")


def attribute_signers(session: Session, fingerprints: list[str], policy_ids: list[int]) -> dict[str, list[str]]:
    """Each new signer (a key's master fingerprint, as the policy's own PSBT records it) -> the serials of
    the inventoried devices holding that key: the key's bound device, or a device with that master
    fingerprint. Refuses the whole upload, by device, when any of them may not sign (`require_may_sign`).

    A key with no device on record is accepted (its list is empty): a policy may be imported with keys on
    hardware this coordinator does not inventory (a co-signer's, a recovery agent's), and the signature
    itself was already verified against the policy's key. The attribution goes into the event log."""
    wanted = set(fingerprints)
    keys = session.scalars(select(Key).join(PolicyKey, PolicyKey.key_id == Key.id)
                           .where(PolicyKey.policy_id.in_(policy_ids), Key.fingerprint.in_(wanted))).all() \
        if wanted and policy_ids else []
    found: dict[str, dict[int, SigningDevice]] = {fp: {} for fp in sorted(wanted)}
    bound = {k.device_id for k in keys if k.device_id is not None}
    for device in session.scalars(select(SigningDevice).where(
            or_(SigningDevice.id.in_(bound), SigningDevice.fingerprint.in_(wanted))).order_by(SigningDevice.id)):
        for fp in [k.fingerprint for k in keys if k.device_id == device.id] + [device.fingerprint]:
            if fp in found:
                found[fp][device.id] = device
    for held in found.values():
        for device in held.values():
            require_may_sign(session, device)
    return {fp: [d.serial for d in held.values()] for fp, held in found.items()}


def upgrade(session: Session, device: SigningDevice, release_id: int, network: str, *, actor: str) -> dict:
    """Send a verified, newer release to the device; record what it runs afterwards."""
    release = session.get(FirmwareRelease, release_id)
    if release is None:
        raise NotFound(f"no firmware release #{release_id}")
    if device.status == "revoked":
        raise CustodyError(f"device {device.serial} is revoked")
    if release.model != device.model:
        raise CustodyError(f"release #{release.id} is for {release.model}, device {device.serial} is a {device.model}")
    if (device.firmware_version
            and protocol.parse_version(release.version) <= protocol.parse_version(device.firmware_version)):
        raise CustodyError(f"release {release.version} is not newer than {device.firmware_version}, which device "
                           f"{device.serial} runs (no downgrades)")
    with open_device(device, network) as d:
        result = d.install_firmware(release.image)
    before, device.firmware_version = device.firmware_version, result["version"]
    record(session, "firmware.upgraded", actor, f"device:{device.serial}",
           {"from": before, "to": device.firmware_version, "sha256": release.sha256})
    return {"serial": device.serial, "from": before, "to": device.firmware_version}
