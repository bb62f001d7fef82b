"""Signing a spend on a device through HWI, with the approvals the device's own policy may ask for.

The officers' approvals travel in the PSBT (custody.spending.spends.open_signing) and the device checks
them itself. What comes back from the device is merged like any upload: every new signature verified and
attributed to its device (`devices.attribute_signers`, when stored), nothing else taken.
"""
from __future__ import annotations

from sqlalchemy.orm import Session

from custody.devices import signing
from custody.errors import CustodyError
from custody.ledger.models import Policy, SigningDevice
from custody.spending import spends
from custody.spending.models import Spend


def sign_on_device(session: Session, spend: Spend, device: SigningDevice, *, actor: str) -> list[str]:
    """Have the device sign the spend's PSBT; returns the fingerprints that newly signed."""
    signing.ready_to_sign(session, device, [spend.policy_id])
    if spend.state != "signing":
        raise CustodyError(f"spend #{spend.id} is {spend.state}; it is not collecting signatures")
    policy = session.get(Policy, spend.policy_id)
    signed = signing.sign_psbt(device, policy.network, spend.psbt)
    signers = spends.add_signatures(session, spend, signed, actor=f"{actor} on device {device.serial}")
    if device.fingerprint not in signers:
        raise CustodyError(f"device {device.serial} returned no new signature")
    return signers
