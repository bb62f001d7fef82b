"""Console pages for devices: the inventory with registrations and firmware standing, ceremonies (where
a signatory confirms the address their device shows), firmware releases and rotations."""
from __future__ import annotations

from fastapi import APIRouter, File, Form, Request, UploadFile

from custody.devices import service as ds
from custody.rotation import service as rs
from custody.spending import service as spend_service
from custody.errors import CustodyError

from coordinator import visibility
from coordinator.api.common import Id
from coordinator.api.devices import holder_only
from coordinator.auth import route
from coordinator.console.pages import back, render
from coordinator.context import actor, read, write
from coordinator.cpu_pool import in_thread

router = APIRouter()


@route(router, "GET", "/devices", "device.read", page=True)
def devices_page(request: Request):
    with read(request) as s:
        who = visibility.reader(request, s)
        return render(request, "devices.html", devices=ds.device_list(s), releases=ds.firmware_list(s),
                      ceremonies=[visibility.ceremony(who, c) for c in ds.ceremony_list(s)],
                      rotations=rs.rotation_list(s))


@route(router, "POST", "/spends/{spend_id}/devices/{serial}/sign", "device.sign", page=True)
def sign_on_device(request: Request, spend_id: Id, serial: str):
    """The holder has their device check the spend (its approvals included) and sign, through HWI."""
    with write(request) as s:
        holder_only(s, serial, request)
        result = spend_service.spend_sign_on_device(s, spend_id, serial, actor=actor(request))
    return back(f"/spends/{spend_id}", flash=f"device {serial} signed: {', '.join(result['new_signers'])}")


@route(router, "POST", "/devices/{serial}/connect", "device.admin", page=True)
def connect(request: Request, serial: str):
    with write(request) as s:
        ds.device_connect(s, serial, network=request.app.state.network, actor=actor(request))
    return back("/devices", flash=f"device {serial} connected")


@route(router, "POST", "/devices/{serial}/upgrade", "device.admin", page=True)
def upgrade(request: Request, serial: str, release: int = Form(..., ge=1, le=2**31 - 1)):
    with write(request) as s:
        result = ds.firmware_upgrade(s, serial, release, network=request.app.state.network, actor=actor(request))
    return back("/devices", flash=f"device {serial} upgraded to {result['to']}")


@route(router, "POST", "/ceremonies/{ceremony_id}/devices/{serial}/confirm", "device.confirm", page=True)
def confirm(request: Request, ceremony_id: Id, serial: str, address: str = Form(..., max_length=100)):
    with write(request) as s:
        ds.require_ceremony(s, ceremony_id)          # 404 first
        holder_only(s, serial, request)              # 403: only the device's holder confirms what it shows
        result = ds.ceremony_confirm(s, ceremony_id, serial, address=address, by=actor(request))
    return back("/devices", flash=f"address confirmed; ceremony {result['state']}")


# -- the admin's forms -------------------------------------------------------------------------------------
@route(router, "POST", "/devices/issue", "device.admin", page=True)
def issue(request: Request, serial: str = Form(..., max_length=100), model: str = Form(..., max_length=100),
          signatory: str = Form(..., max_length=200)):
    with write(request) as s:
        ds.device_issue(s, model=model, serial=serial, to=signatory, actor=actor(request))
    return back("/devices", flash=f"device {serial} issued to {signatory}")


@route(router, "POST", "/ceremonies/new", "device.admin", page=True)
def start_ceremony(request: Request, policy: str = Form(..., max_length=200), threshold: int = Form(..., ge=1, le=15),
                   devices: str = Form(..., max_length=2000)):
    serials = [d.strip() for d in devices.replace(",", " ").split() if d.strip()]
    with write(request) as s:
        result = ds.ceremony_start(s, policy, threshold=threshold, devices_=serials, actor=actor(request))
    return back("/devices", flash=f"ceremony #{result['id']} started")


@route(router, "POST", "/ceremonies/{ceremony_id}/collect", "device.admin", page=True)
def collect_all(request: Request, ceremony_id: Id):
    """Take every missing key (each in its own transaction: one absent device does not undo the others)."""
    with read(request) as s:
        waiting = [d["serial"] for d in ds.ceremony_show(s, ceremony_id)["devices"] if d["key"] is None]
    for serial in waiting:
        with write(request) as s:
            ds.ceremony_collect(s, ceremony_id, serial, network=request.app.state.network, actor=actor(request))
    return back("/devices", flash=f"{len(waiting)} key(s) collected with proof of possession")


@route(router, "POST", "/ceremonies/{ceremony_id}/register", "device.admin", page=True)
def register(request: Request, ceremony_id: Id):
    with write(request) as s:
        ds.ceremony_register(s, ceremony_id, network=request.app.state.network, actor=actor(request))
    return back("/devices", flash="registered on every device; each holder now confirms the address shown")


@route(router, "POST", "/firmware/trust", "device.admin", page=True)
def trust(request: Request, model: str = Form(..., max_length=100), keys: str = Form(..., max_length=3000),
          threshold: int = Form(..., ge=1, le=20), test_keys: bool = Form(False)):
    with write(request) as s:
        ds.firmware_trust(s, model, keys=keys.split(), threshold=threshold, production=not test_keys,
                          actor=actor(request))
    return back("/devices", flash=f"release keys for {model} set")


@route(router, "POST", "/firmware/add", "device.admin", page=True)
async def add_release(request: Request, image: UploadFile = File(...)):
    data = await image.read(40_000_001)
    if len(data) > 40_000_000:
        raise CustodyError("a firmware image is at most 40 MB")

    def add() -> dict:                          # the database and a 40 MB hash: not on the event loop
        with write(request) as s:
            return ds.firmware_add(s, data, actor=actor(request))
    release = await in_thread(add)
    return back("/devices", flash=f"release {release['version']} verified and added")


@route(router, "POST", "/firmware/minimum", "device.admin", page=True)
def minimum(request: Request, model: str = Form(..., max_length=100), version: str = Form(..., max_length=20)):
    with write(request) as s:
        ds.firmware_minimum(s, model, version, actor=actor(request))
    return back("/devices", flash=f"{model} devices need {version} to sign")


@route(router, "POST", "/rotations/new", "device.admin", page=True)
def start_rotation(request: Request, policy: str = Form(..., max_length=200), successor: str = Form(..., max_length=200),
                   leaving: str = Form(..., max_length=100), joining: str = Form(..., max_length=100)):
    with write(request) as s:
        result = rs.rotation_start(s, policy, successor=successor, replace={leaving: joining}, actor=actor(request))
    return back("/devices", flash=f"rotation #{result['id']} started: ceremony #{result['ceremony']}")


@route(router, "POST", "/rotations/{rotation_id}/test", "spend.request", page=True)
def rotation_test(request: Request, rotation_id: Id, amount: str = Form("10000sat", max_length=30),
                  fee_rate: float = Form(..., ge=1, le=1000)):
    with write(request) as s:
        result = rs.rotation_test(s, rotation_id, amount=amount, requester=actor(request),
                                  fee_rate=fee_rate)
    return back(f"/spends/{result['test_spend']}", flash="test spend requested")


@route(router, "POST", "/rotations/{rotation_id}/migrate", "spend.request", page=True)
def rotation_migrate(request: Request, rotation_id: Id, fee_rate: float = Form(..., ge=1, le=1000)):
    with write(request) as s:
        result = rs.rotation_migrate(s, rotation_id, requester=actor(request), fee_rate=fee_rate)
    return back(f"/spends/{result['migration_spend']}", flash="migration requested")


@route(router, "POST", "/rotations/{rotation_id}/complete", "device.admin", page=True)
def rotation_complete(request: Request, rotation_id: Id):
    with write(request) as s:
        rs.rotation_complete(s, rotation_id, actor=actor(request))
    return back("/devices", flash="old policy retired; leaving devices revoked")
