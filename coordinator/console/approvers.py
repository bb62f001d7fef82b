"""Console page of approval keys: officers enrol their passkeys and key files; everyone who installs or
reviews a device's policy reads the approver keys the devices must name."""
from __future__ import annotations

import json

from fastapi import APIRouter, Form, Request

from custody.people import credentials

from coordinator import accounts
from coordinator.api.common import Id
from coordinator.auth import allowed, route
from coordinator.console.pages import back, render
from coordinator.context import actor, read, write

router = APIRouter()


@route(router, "GET", "/approvers", "approver.read", page=True)
def approvers_page(request: Request, flash: str = ""):
    principal = request.state.principal
    with read(request) as s:
        mine = credentials.list_credentials(s, accounts.user_by_id(s, principal.user_id)) \
            if allowed("approver.enroll", principal.role) else None
        entries = credentials.device_approvers(s)
    return render(request, "approvers.html", flash=flash, mine=mine,
                  approvers_json=json.dumps({"approvers": entries}, indent=1))


@route(router, "POST", "/approvers/keys", "approver.enroll", page=True)
def enroll_key(request: Request, public_key: str = Form(..., max_length=2000), label: str = Form("key file", max_length=100)):
    with write(request) as s:
        credentials.enroll_key(s, accounts.user_by_id(s, request.state.principal.user_id), public_key, label=label,
                               actor=actor(request))
    return back("/approvers", flash="approval key enrolled: signatories install the new approver list on their devices")


@route(router, "POST", "/approvers/keys/{credential_id}/revoke", "approver.enroll", page=True)
def revoke_key(request: Request, credential_id: Id):
    with write(request) as s:
        credentials.revoke(s, accounts.user_by_id(s, request.state.principal.user_id), credential_id, actor=actor(request))
    return back("/approvers", flash="approval key revoked: signatories remove it from their devices' policies")
