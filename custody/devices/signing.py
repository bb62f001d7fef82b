"""Having a device sign a PSBT through HWI: only a device that may sign, for policies it holds.

The coordinator sends a PSBT to a device only if the device is active, runs at least the minimum
firmware for its model and has every policy the PSBT spends from registered and confirmed by its holder.
What the device signs is a spend (custody.spending.device_signing) or a proof of reserves
(custody.reserves.proofs.sign_reserves_on_device); what comes back is merged there like any upload.
"""
from __future__ import annotations

from sqlalchemy.orm import Session

from custody.devices import inventory as devices
from custody.devices.hwi import open_device
from custody.devices.models import DeviceRegistration
from custody.errors import CustodyError
from custody.ledger.models import Policy, SigningDevice


def ready_to_sign(session: Session, device: SigningDevice, policy_ids: list[int]) -> None:
    devices.require_may_sign(session, device)       # suspended, revoked, below the minimum firmware: by name
    if device.status != "active":
        raise CustodyError(f"device {device.serial} is {device.status}; only active devices sign")
    for policy_id in policy_ids:
        registration = session.get(DeviceRegistration, (device.id, policy_id))
        if registration is None or registration.state != "confirmed":
            raise CustodyError(f"device {device.serial} has no confirmed registration of policy "
                               f"{session.get(Policy, policy_id).name!r}")


def sign_psbt(device: SigningDevice, network: str, psbt: str) -> str:
    """The PSBT as the device returns it (checked with `ready_to_sign` first)."""
    with open_device(device, network) as d:
        return d.sign_psbt(psbt)
