"""Proof of reserves under /api/: runs (start, sign, finalize, self-check), the auditor's downloads (package,
signed report) and scheduled re-proofs.

Routes translate HTTP to `custody.reserves.service` calls only; refusals from the core become 4xx and the
transaction is rolled back, as in the other API modules.
"""
from __future__ import annotations

import base64
from typing import Literal

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from pydantic import Field

from custody.errors import CustodyError
from custody.reserves import service as rs

from coordinator import downloads, visibility
from coordinator.api.common import Id, Name, Strict
from coordinator.api.devices import holder_only, Serial
from coordinator.auth import route
from coordinator.context import actor, node, read, write
from coordinator.cpu_pool import take_reserve_signatures

router = APIRouter(prefix="/api")
MAX_UPLOAD = 16_000_000
# The HTML report carries its own inline styles and no scripts: allow exactly that.
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


def attachment(text: str, media_type: str, filename: str) -> Response:
    return Response(text, media_type=media_type, headers=downloads.attachment(filename))


# -- runs --------------------------------------------------------------------------------------------------
class RunIn(Strict):
    audit: str = Field(min_length=1, max_length=80, description="the audit's name, e.g. 2026-Q4")
    nonce: str = Field(min_length=1, max_length=128, description="the nonce the auditor gave")
    custodian: str = Field(min_length=1, max_length=80, description="who is proving, as the message names them")
    policies: list[Name] | None = Field(None, min_length=1, max_length=100,
                                        description="default: every policy not retired")
    height: int | None = Field(None, ge=0, le=999_999_999, description="default: the node's tip")
    kind: Literal["bip322", "bip127"] = "bip322"


@route(router, "GET", "/reserves", "reserves.read")
def list_runs(request: Request) -> list[dict]:
    with read(request) as s:
        return rs.runs(s)


@route(router, "POST", "/reserves", "reserves.create", status_code=201)
def create_run(request: Request, body: RunIn) -> dict:
    with write(request) as s:
        return rs.create(s, node(request), nonce=body.nonce, audit=body.audit, custodian=body.custodian,
                         policies=body.policies, height=body.height, kind=body.kind, actor=actor(request))


@route(router, "GET", "/reserves/{run_id}", "reserves.read")
def show_run(request: Request, run_id: Id) -> dict:
    with read(request) as s:
        rs.require_run(s, run_id)
        return rs.show(s, run_id)


@route(router, "GET", "/reserves/{run_id}/psbt", "psbt.download")
def download_psbt(request: Request, run_id: Id, encoding: Literal["binary", "base64"] = "binary"):
    with read(request) as s:
        rs.require_run(s, run_id)
        text = visibility.psbt(visibility.reader(request, s), rs.psbt(s, run_id), rs.run_policies(s, run_id))
    if encoding == "base64":
        return PlainTextResponse(text)
    return Response(base64.b64decode(text), media_type="application/octet-stream",
                    headers=downloads.attachment(f"reserves-{run_id}.psbt"))


@route(router, "POST", "/reserves/{run_id}/signatures", "psbt.upload")
async def upload_signatures(request: Request, run_id: Id, file: UploadFile = File(...)) -> dict:
    data = await file.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        raise CustodyError("a PSBT upload is at most 16 MB")
    return await take_reserve_signatures(request, run_id, data)     # verified in a worker process


@route(router, "POST", "/reserves/{run_id}/devices/{serial}/sign", "device.sign")
def sign_on_device(request: Request, run_id: Id, serial: Serial) -> dict:
    with write(request) as s:
        rs.require_run(s, run_id)
        holder_only(s, serial, request)              # 403: a signature is the device holder's act
        return rs.sign_on_device(s, run_id, serial, actor=actor(request))


@route(router, "POST", "/reserves/{run_id}/finalize", "reserves.create")
def finalize(request: Request, run_id: Id) -> dict:
    with write(request) as s:
        rs.require_run(s, run_id)
        package = rs.finalize(s, run_id, actor=actor(request))
        return {**rs.show(s, run_id), "txid": package["txid"]}


@route(router, "POST", "/reserves/{run_id}/check", "reserves.create")
def self_check(request: Request, run_id: Id, min_depth: int = Query(1, ge=1, le=1000)) -> dict:
    """Verify the finalized run as the auditor will, on this coordinator's node; returns the signed report."""
    with write(request) as s:
        rs.require_run(s, run_id)
        return rs.self_check(s, node(request), run_id, actor=actor(request), min_depth=min_depth)


@route(router, "GET", "/reserves/{run_id}/package", "reserves.read")
def package(request: Request, run_id: Id):
    """The file the auditor verifies (`custody-audit verify`): it declares every policy's descriptor, so
    only for whoever may see them all (see visibility)."""
    with read(request) as s:
        rs.require_run(s, run_id)
        visibility.require_xpubs(visibility.reader(request, s), rs.run_policies(s, run_id), "the package")
        return attachment(rs.package(s, run_id), "application/json", f"reserves-{run_id}-package.json")


@route(router, "GET", "/reserves/{run_id}/report", "reserves.read")
def report(request: Request, run_id: Id):
    """The last self-check's report, signed with the coordinator's key (`custody-audit check-report`)."""
    with read(request) as s:
        rs.require_run(s, run_id)
        return attachment(rs.report(s, run_id), "application/json", f"reserves-{run_id}-report.json")


@route(router, "GET", "/reserves/{run_id}/report.html", "reserves.read", response_class=HTMLResponse)
def report_html(request: Request, run_id: Id):
    with read(request) as s:
        rs.require_run(s, run_id)
        return HTMLResponse(rs.report_html(s, run_id), headers={"content-security-policy": REPORT_CSP})


# -- scheduled re-proofs -----------------------------------------------------------------------------------
class ScheduleIn(Strict):
    audit: str = Field(min_length=1, max_length=80)
    every_days: int = Field(ge=1, le=366)
    policies: list[Name] | None = Field(None, min_length=1, max_length=100)


@route(router, "GET", "/reserve-schedules", "reserves.read")
def list_schedules(request: Request) -> list[dict]:
    with read(request) as s:
        return [{**row, "overdue": rs.overdue(row["next_due"])} for row in rs.schedules(s)]


@route(router, "POST", "/reserve-schedules", "reserves.schedule", status_code=201)
def create_schedule(request: Request, body: ScheduleIn) -> dict:
    with write(request) as s:
        return rs.schedule(s, body.audit, every_days=body.every_days, policies=body.policies, actor=actor(request))

