"""The console's proof-of-reserves page: runs with their downloads, the message signatories sign, and the
officer's forms (start a run with the auditor's nonce, finalize, self-check, schedule re-proofs)."""
from __future__ import annotations

from fastapi import APIRouter, File, Form, Request, UploadFile

from custody.errors import CustodyError
from custody.reserves import service as rs

from coordinator.api.common import Id
from coordinator.api.reserves import MAX_UPLOAD
from coordinator.auth import route
from coordinator.console.pages import back, render
from coordinator.context import actor, node, read, write
from coordinator.cpu_pool import take_reserve_signatures

router = APIRouter()


def _names(text: str) -> list[str] | None:
    return [n for n in text.replace(",", " ").split() if n] or None


@route(router, "GET", "/reserves", "reserves.read", page=True)
def reserves_page(request: Request, flash: str = ""):
    with read(request) as s:
        runs = rs.runs(s)
        messages = {r["id"]: rs.show(s, r["id"])["message"] for r in runs if r["state"] == "signing"}
        schedules = [{**row, "overdue": rs.overdue(row["next_due"])} for row in rs.schedules(s)]
    return render(request, "reserves.html", flash=flash, runs=runs, messages=messages, schedules=schedules)


@route(router, "POST", "/reserves/new", "reserves.create", page=True)
def start(request: Request, audit: str = Form(..., max_length=80), nonce: str = Form(..., max_length=128),
          custodian: str = Form(..., max_length=80), height: int | None = Form(None, ge=0, le=999_999_999),
          policies: str = Form("", max_length=2000), kind: str = Form("bip322", max_length=10)):
    with write(request) as s:
        run = rs.create(s, node(request), nonce=nonce, audit=audit, custodian=custodian, policies=_names(policies),
                        height=height, kind=kind, actor=actor(request))
    return back("/reserves", flash=f"run #{run['id']} started: {run['coins']} coins at height {run['height']}, "
                                   "waiting for signatures")


@route(router, "POST", "/reserves/{run_id}/signatures", "psbt.upload", page=True)
async def upload(request: Request, run_id: Id, file: UploadFile = File(...)):
    data = await file.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        raise CustodyError("a PSBT upload is at most 16 MB")
    result = await take_reserve_signatures(request, run_id, data)     # verified in a worker process
    added = ", ".join(result["new_signers"]) or "no new signature"
    return back("/reserves", flash=f"run #{run_id}: {added}")


@route(router, "POST", "/reserves/{run_id}/finalize", "reserves.create", page=True)
def finalize(request: Request, run_id: Id):
    with write(request) as s:
        rs.require_run(s, run_id)
        rs.finalize(s, run_id, actor=actor(request))
    return back("/reserves", flash=f"run #{run_id} finalized: its package is ready for the auditor")


@route(router, "POST", "/reserves/{run_id}/check", "reserves.create", page=True)
def check(request: Request, run_id: Id):
    with write(request) as s:
        rs.require_run(s, run_id)
        signed = rs.self_check(s, node(request), run_id, actor=actor(request))
    return back("/reserves", flash=f"run #{run_id} checked: {signed['report']['verdict']}")


@route(router, "POST", "/reserves/schedules", "reserves.schedule", page=True)
def schedule(request: Request, audit: str = Form(..., max_length=80), every_days: int = Form(..., ge=1, le=366),
             policies: str = Form("", max_length=2000)):
    with write(request) as s:
        row = rs.schedule(s, audit, every_days=every_days, policies=_names(policies), actor=actor(request))
    return back("/reserves", flash=f"re-proof for {audit} every {every_days} days, next due {row['next_due'][:10]}")
