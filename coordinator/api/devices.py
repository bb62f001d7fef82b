"""The device lifecycle under /api/: inventory, ceremonies, firmware, rotations, signing on devices.

Routes translate HTTP to `custody.devices.service` calls only. Devices are reached through HWI on the
machine that runs the coordinator (where signatories plug them in, or where simulators run).
"""
from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path as PathParam, Request
from pydantic import Field

from custody.devices import service as ds
from custody.rotation import service as rs
from custody.spending import service as spend_service
from custody.errors import CustodyError
from custody.governance import proposals as governance

from coordinator import visibility
from coordinator.api.common import ACCEPTED, Amount, Id, Name, proposed, Strict
from coordinator.auth import route
from coordinator.context import actor, read, write

router = APIRouter(prefix="/api")
Serial = Annotated[str, PathParam(min_length=1, max_length=100)]
Hex = Annotated[str, Field(min_length=1, max_length=200, pattern="^[0-9a-fA-F]+$")]


def _network(request: Request) -> str:
    return request.app.state.network


def holder_only(s, serial: str, request: Request) -> None:
    """403 unless the caller is the holder of the device (the signatory it is issued to): a signature, or a
    confirmation of what the device shows, is its holder's act and nobody else's, whatever their role.
    Checked before the device is reached, so a refusal changes and logs nothing; 404 for no such device."""
    try:
        ds.require_holder(s, serial, request.state.principal.username)
    except ds.NotHolder as e:
        raise HTTPException(403, str(e)) from None


# -- inventory ---------------------------------------------------------------------------------------------
class IssueIn(Strict):
    serial: str = Field(min_length=1, max_length=100)
    model: str = Field(min_length=1, max_length=100)
    signatory: Name


class StatusIn(Strict):
    status: str = Field(pattern="^(active|suspended|revoked)$")
    reason: str = Field("", max_length=500)


@route(router, "GET", "/devices", "device.read")
def list_devices(request: Request) -> list[dict]:
    with read(request) as s:
        return ds.device_list(s)


@route(router, "GET", "/devices/connected", "device.read")
def connected_devices(request: Request) -> list[dict]:
    return ds.connected()


@route(router, "POST", "/devices", "device.admin", status_code=201)
def issue_device(request: Request, body: IssueIn) -> dict:
    with write(request) as s:
        return ds.device_issue(s, model=body.model, serial=body.serial, to=body.signatory, actor=actor(request))


@route(router, "GET", "/devices/{serial}", "device.read")
def show_device(request: Request, serial: Serial) -> dict:
    with read(request) as s:
        return ds.device_show(s, serial)


@route(router, "POST", "/devices/{serial}/connect", "device.admin")
def connect_device(request: Request, serial: Serial) -> dict:
    with write(request) as s:
        return ds.device_connect(s, serial, network=_network(request), actor=actor(request))


@route(router, "POST", "/devices/{serial}/status", "device.admin", status_code=202, responses=ACCEPTED)
def device_status(request: Request, serial: Serial, body: StatusIn) -> dict:
    """Proposes the change (custody.governance.proposals): other admins or officers approve it."""
    with write(request) as s:
        return proposed(s, governance.propose(s, "device_status", serial, {"status": body.status,
                                                                             "reason": body.reason}, actor(request)))


@route(router, "POST", "/spends/{spend_id}/devices/{serial}/sign", "device.sign")
def sign_on_device(request: Request, spend_id: Id, serial: Serial) -> dict:
    with write(request) as s:
        spend_service.require_spend(s, spend_id)     # 404 first
        holder_only(s, serial, request)
        return spend_service.spend_sign_on_device(s, spend_id, serial, actor=actor(request))


# -- firmware ----------------------------------------------------------------------------------------------
class TrustIn(Strict):
    keys: list[Annotated[str, Field(min_length=64, max_length=64)]] = Field(min_length=1, max_length=20)
    threshold: int = Field(ge=1, le=20)
    production: bool = True


class ReleaseIn(Strict):
    image: str = Field(min_length=1, max_length=40_000_000, description="the image, base64")


class MinimumIn(Strict):
    version: str = Field(min_length=5, max_length=20)


class UpgradeIn(Strict):
    release: int = Field(ge=1, le=2**31 - 1)


@route(router, "PUT", "/firmware/models/{model}", "device.admin")
def trust_model(request: Request, model: Serial, body: TrustIn) -> dict:
    with write(request) as s:
        return ds.firmware_trust(s, model, keys=body.keys, threshold=body.threshold, production=body.production,
                                 actor=actor(request))


@route(router, "GET", "/firmware", "device.read")
def list_firmware(request: Request) -> list[dict]:
    with read(request) as s:
        return ds.firmware_list(s)


@route(router, "POST", "/firmware", "device.admin", status_code=201)
def add_firmware(request: Request, body: ReleaseIn) -> dict:
    try:
        image = base64.b64decode(body.image, validate=True)
    except (binascii.Error, ValueError):
        raise CustodyError("the image is not base64") from None
    with write(request) as s:
        return ds.firmware_add(s, image, actor=actor(request))


@route(router, "PUT", "/firmware/models/{model}/minimum", "device.admin")
def minimum_version(request: Request, model: Serial, body: MinimumIn) -> dict:
    with write(request) as s:
        return ds.firmware_minimum(s, model, body.version, actor=actor(request))


@route(router, "POST", "/devices/{serial}/upgrade", "device.admin")
def upgrade_device(request: Request, serial: Serial, body: UpgradeIn) -> dict:
    with write(request) as s:
        return ds.firmware_upgrade(s, serial, body.release, network=_network(request), actor=actor(request))


# -- ceremonies --------------------------------------------------------------------------------------------
class CeremonyIn(Strict):
    policy: Name
    threshold: int = Field(ge=1, le=15)
    devices: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(min_length=1, max_length=15)


class KeyIn(Strict):
    key: str = Field(min_length=1, max_length=400)
    proof: str = Field(min_length=1, max_length=400)


class ConfirmIn(Strict):
    address: str = Field(min_length=1, max_length=100)


@route(router, "GET", "/ceremonies", "device.read")
def list_ceremonies(request: Request) -> list[dict]:
    with read(request) as s:
        who = visibility.reader(request, s)
        return [visibility.ceremony(who, c) for c in ds.ceremony_list(s)]


@route(router, "POST", "/ceremonies", "device.admin", status_code=201)
def start_ceremony(request: Request, body: CeremonyIn) -> dict:
    with write(request) as s:
        return ds.ceremony_start(s, body.policy, threshold=body.threshold, devices_=body.devices, actor=actor(request))


@route(router, "GET", "/ceremonies/{ceremony_id}", "device.read")
def show_ceremony(request: Request, ceremony_id: Id) -> dict:
    with read(request) as s:
        return visibility.ceremony(visibility.reader(request, s), ds.ceremony_show(s, ceremony_id))


@route(router, "POST", "/ceremonies/{ceremony_id}/devices/{serial}/collect", "device.admin")
def collect_key(request: Request, ceremony_id: Id, serial: Serial) -> dict:
    with write(request) as s:
        return ds.ceremony_collect(s, ceremony_id, serial, network=_network(request), actor=actor(request))


@route(router, "POST", "/ceremonies/{ceremony_id}/devices/{serial}/key", "device.admin")
def hand_in_key(request: Request, ceremony_id: Id, serial: Serial, body: KeyIn) -> dict:
    with write(request) as s:
        return ds.ceremony_key(s, ceremony_id, serial, key=body.key, proof=body.proof, network=_network(request),
                               actor=actor(request))


@route(router, "POST", "/ceremonies/{ceremony_id}/register", "device.admin")
def register_policy(request: Request, ceremony_id: Id) -> dict:
    with write(request) as s:
        return ds.ceremony_register(s, ceremony_id, network=_network(request), actor=actor(request))


@route(router, "POST", "/ceremonies/{ceremony_id}/devices/{serial}/confirm", "device.confirm")
def confirm_address(request: Request, ceremony_id: Id, serial: Serial, body: ConfirmIn) -> dict:
    with write(request) as s:
        ds.require_ceremony(s, ceremony_id)          # 404 first
        holder_only(s, serial, request)
        return ds.ceremony_confirm(s, ceremony_id, serial, address=body.address, by=actor(request))


# -- rotations ---------------------------------------------------------------------------------------------
class RotationIn(Strict):
    policy: Name
    successor: Name
    replace: dict[Annotated[str, Field(max_length=100)], Annotated[str, Field(max_length=100)]] = Field(
        min_length=1, max_length=15, description="leaving device serial -> replacement serial")


class RotationSpendIn(Strict):
    fee_rate: float = Field(ge=1, le=1000)
    amount: Amount | None = None


@route(router, "GET", "/rotations", "device.read")
def list_rotations(request: Request) -> list[dict]:
    with read(request) as s:
        return rs.rotation_list(s)


@route(router, "POST", "/rotations", "device.admin", status_code=201)
def start_rotation(request: Request, body: RotationIn) -> dict:
    with write(request) as s:
        return rs.rotation_start(s, body.policy, successor=body.successor, replace=body.replace, actor=actor(request))


@route(router, "POST", "/rotations/{rotation_id}/test", "spend.request")
def rotation_test(request: Request, rotation_id: Id, body: RotationSpendIn) -> dict:
    amount = body.amount if body.amount is not None else "10000sat"
    with write(request) as s:
        return rs.rotation_test(s, rotation_id, amount=amount, requester=actor(request), fee_rate=body.fee_rate)


@route(router, "POST", "/rotations/{rotation_id}/migrate", "spend.request")
def rotation_migrate(request: Request, rotation_id: Id, body: RotationSpendIn) -> dict:
    with write(request) as s:
        return rs.rotation_migrate(s, rotation_id, requester=actor(request), fee_rate=body.fee_rate)


@route(router, "POST", "/rotations/{rotation_id}/complete", "device.admin")
def rotation_complete(request: Request, rotation_id: Id) -> dict:
    with write(request) as s:
        return rs.rotation_complete(s, rotation_id, actor=actor(request))
