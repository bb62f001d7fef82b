"""Console pages for devices: the inventory with registrations and firmware standing, ceremonies (where
a signatory confirms the address their device shows), firmware releases and rotations."""
from __future__ import annotations

from fastapi import APIRouter, Form, Request

from custody import device_service as ds

from .api import Id
from .auth import route
from .context import actor, read, write
from .pages import back, render

router = APIRouter()


@route(router, "GET", "/devices", "device.read", page=True)
def devices_page(request: Request):
    with read(request) as s:
        return render(request, "devices.html", devices=ds.device_list(s), releases=ds.firmware_list(s),
                      ceremonies=ds.ceremony_list(s), rotations=ds.rotation_list(s))


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
        result = ds.ceremony_confirm(s, ceremony_id, serial, address=address, by=actor(request))
    return back("/devices", flash=f"address confirmed; ceremony {result['state']}")
