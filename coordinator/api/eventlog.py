"""The API of the event log: entries, verification (with checkpoints), the latest checkpoint, export."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import Field

from custody.eventlog import service as log_service

from coordinator import refusals
from coordinator.api.common import Strict
from coordinator.auth import route
from coordinator.context import read
from coordinator.cpu_pool import in_thread, offload
from coordinator.downloads import attachment

router = APIRouter(prefix="/api")


# -- event log -------------------------------------------------------------------------------------
@route(router, "GET", "/log", "log.read")
def log_entries(request: Request, subject: str | None = Query(None, max_length=200),
                offset: int = Query(0, ge=0, le=10_000_000), limit: int = Query(100, ge=1, le=1000)) -> dict:
    with read(request) as s:
        return log_service.log_entries(s, subject=subject, offset=offset, limit=limit)


@route(router, "GET", "/log/verify", "log.read")
def log_verify(request: Request) -> dict:
    with read(request) as s:
        return log_service.log_status(s)


class LogFileIn(Strict):
    jsonl: str = Field(max_length=100_000_000, description="an exported log (JSON Lines)")
    keys: list[Annotated[str, Field(pattern="^[0-9a-f]{64}$")]] | None = Field(
        None, max_length=20, description="accepted coordinator public keys (hex); default: this coordinator's")
    checkpoints: list[dict] | None = Field(None, max_length=1000, description="signed checkpoints "
                                           "({\"checkpoint\", \"signature\"}) the copy must still agree with")


@route(router, "POST", "/log/verify", "log.read")
async def log_verify_file(request: Request, body: LogFileIn) -> dict:
    """Verify an exported copy of the log, as `custody log verify --file` does; 400 names the first problem."""
    keys = set(body.keys) if body.keys else await in_thread(log_service.coordinator_keys)
    kept = log_service.log_checkpoint_documents(body.checkpoints, keys=keys) if body.checkpoints else None
    return await offload(request, log_service.log_verify, None, keys=keys, jsonl=body.jsonl,   # in a worker process
                         checkpoints=kept)


class CheckpointsIn(Strict):
    checkpoints: list[dict] = Field(min_length=1, max_length=1000, description="signed checkpoints "
                                    "({\"checkpoint\", \"signature\"}) the log must still agree with")


@route(router, "POST", "/log/verify/checkpoints", "log.read")
def log_verify_checkpoints(request: Request, body: CheckpointsIn) -> dict:
    """Verify the database's log and that it was neither cut below nor rewritten at any of the auditor's
    checkpoints, as `custody log verify --checkpoint` does; 400 names the first problem."""
    with read(request) as s:
        return log_service.log_verify(s, checkpoints=log_service.log_checkpoint_documents(body.checkpoints))


@route(router, "GET", "/log/checkpoint", "log.read", response_class=JSONResponse,
       responses=refusals.body("application/json"))
def log_checkpoint_latest(request: Request):
    """The latest signed checkpoint of the log's head, for the auditor to keep (404 before the first)."""
    with read(request) as s:
        signed = log_service.log_checkpoint_latest(s)
    return JSONResponse(signed, headers=attachment(f"event-log-checkpoint-{signed['checkpoint']['seq']}.json"))


@route(router, "GET", "/log/export", "log.read", response_class=PlainTextResponse,
       responses=refusals.body("application/jsonl"))
def log_export(request: Request):
    with read(request) as s:
        return PlainTextResponse(log_service.log_export(s), media_type="application/jsonl",
                                 headers=attachment("event-log.jsonl"))
