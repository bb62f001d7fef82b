"""Signing a spend on a device through HWI, with the approvals the device's own policy may ask for.

The coordinator sends a PSBT to a device only if the device is active, runs at least the minimum
firmware for its model and has the spend's policy registered and confirmed by its holder. The officers'
approvals travel in the PSBT (custody.spends.open_signing) and the device checks them itself. What comes back
from the device is merged like any upload: every new signature verified and attributed to its device
(`devices.attribute_signers`, when stored), nothing else taken.
"""
from __future__ import annotations

import json

from sqlalchemy.orm import Session

from . import devices, reserves, spends
from .device_models import DeviceRegistration
from .errors import CustodyError
from .hwi_devices import open_device
from .models import Policy, SigningDevice
from .registry import get_policy
from .reserve_models import ReserveRun
from .spend_models import Spend


def _ready_to_sign(session: Session, device: SigningDevice, policy_ids: list[int]) -> None:
    devices.require_may_sign(session, device)       # suspended, revoked, below the minimum firmware: by name
    if device.status != "active":
        raise CustodyError(f"device {device.serial} is {device.status}; only active devices sign")
    for policy_id in policy_ids:
        registration = session.get(DeviceRegistration, (device.id, policy_id))
        if registration is None or registration.state != "confirmed":
            raise CustodyError(f"device {device.serial} has no confirmed registration of policy "
                               f"{session.get(Policy, policy_id).name!r}")


def sign_on_device(session: Session, spend: Spend, device: SigningDevice, *, actor: str) -> list[str]:
    """Have the device sign the spend's PSBT; returns the fingerprints that newly signed."""
    _ready_to_sign(session, device, [spend.policy_id])
    if spend.state != "signing":
        raise CustodyError(f"spend #{spend.id} is {spend.state}; it is not collecting signatures")
    policy = session.get(Policy, spend.policy_id)
    with open_device(device, policy.network) as d:
        signed = d.sign_psbt(spend.psbt)
    signers = spends.add_signatures(session, spend, signed, actor=f"{actor} on device {device.serial}")
    if device.fingerprint not in signers:
        raise CustodyError(f"device {device.serial} returned no new signature")
    return signers


def sign_reserves_on_device(session: Session, run: ReserveRun, device: SigningDevice, *, actor: str) -> list[str]:
    """Have the device sign a proof of reserves: it shows the message and signs every coin it can."""
    policies = [get_policy(session, name) for name in json.loads(run.policies)]
    _ready_to_sign(session, device, [p.id for p in policies])
    if run.state != "signing":
        raise CustodyError(f"run #{run.id} is {run.state}; it is not collecting signatures")
    with open_device(device, policies[0].network) as d:
        signed = d.sign_psbt(run.psbt)
    signers = reserves.add_signatures(session, run, signed, actor=f"{actor} on device {device.serial}")
    if device.fingerprint not in signers:
        raise CustodyError(f"device {device.serial} returned no new signature")
    return signers
