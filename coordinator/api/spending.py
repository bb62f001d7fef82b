"""The API of spends: request, preview, approvals, PSBT, signatures, broadcast, tracking, fee bumps, cancel."""
from __future__ import annotations

import base64
from typing import Annotated, Literal

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import PlainTextResponse, Response
from pydantic import Field

from custody.errors import CustodyError
from custody.ledger import service
from custody.spending import service as spend_service

from coordinator import visibility
from coordinator.api.common import Amount, Id, Name, Outpoint, Strict
from coordinator.auth import route
from coordinator.context import actor, node, read, write
from coordinator.cpu_pool import offload, take_spend_signatures
from coordinator.downloads import attachment

router = APIRouter(prefix="/api")


# -- spends ----------------------------------------------------------------------------------------
class Destination(Strict):
    address: str = Field(min_length=1, max_length=100)
    amount: Amount | None = Field(None, description="omit for a sweep")


class SpendIn(Strict):
    policy: Name
    to: list[Destination] = Field(min_length=1, max_length=500)
    fee_rate: float | None = Field(None, gt=0, le=10_000, description="sat/vB; default: the node's estimate")
    memo: str | None = Field(None, max_length=1000)
    coins: list[Outpoint] | None = Field(None, max_length=1000)
    sweep: bool = False


class PreviewIn(Strict):
    policy: Name
    to: list[Destination] = Field(min_length=1, max_length=500)
    fee_rate: float | None = Field(None, gt=0, le=10_000)
    coins: list[Outpoint] | None = Field(None, max_length=1000)
    sweep: bool = False


class FeeIn(Strict):
    fee_rate: float = Field(gt=0, le=10_000)
    cancel: bool = False


@route(router, "GET", "/spends", "spend.read")
def list_spends(request: Request, policy: str | None = None,
                state: Annotated[list[str] | None, Query(max_length=20)] = None,
                after: Annotated[int | None, Query(ge=0, description="only spends with a greater id (paging)")] = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 1000) -> list[dict]:
    """Spends in id order, a page at a time: pass the last id you got as `after` for the next page."""
    with read(request) as s:
        return visibility.spends(visibility.reader(request, s),
                                 spend_service.spend_list(s, policy=policy, states=state, after=after, limit=limit))


@route(router, "POST", "/spends", "spend.request", status_code=201)
def request_spend(request: Request, body: SpendIn) -> dict:
    with write(request) as s:
        return spend_service.spend_request(s, body.policy, requester=actor(request),
                                     to=[(d.address, d.amount) for d in body.to], fee_rate=body.fee_rate,
                                     client=node(request), memo=body.memo, coins=body.coins, sweep=body.sweep)


@route(router, "POST", "/spends/preview", "spend.request")
def preview_spend(request: Request, body: PreviewIn) -> dict:
    with read(request) as s:
        return spend_service.fee_preview(s, body.policy, to=[(d.address, d.amount) for d in body.to],
                                   fee_rate=body.fee_rate, client=None if body.fee_rate else node(request),
                                   coins=body.coins, sweep=body.sweep)


@route(router, "GET", "/spends/{spend_id}", "spend.read")
def show_spend(request: Request, spend_id: Id) -> dict:
    with read(request) as s:
        return visibility.spend(visibility.reader(request, s),
                                {**spend_service.spend_show(s, spend_id), "timeline": spend_service.spend_timeline(s, spend_id)})


class ApprovalIn(Strict):
    proof: dict = Field(description="the officer's approval of the spend's unsigned transaction: "
                        "{\"kind\": \"webauthn\", \"credential\": <PublicKeyCredential JSON>} from a passkey, or "
                        "{\"kind\": \"ed25519\"|\"p256\", \"public_key\": hex, \"signature\": hex} from a key file, "
                        "over the message of POST /spends/{id}/approval-request")


@route(router, "POST", "/spends/{spend_id}/approval-request", "spend.decide")
def approval_request(request: Request, spend_id: Id) -> dict:
    """The message to sign to approve this spend (its policy, unsigned transaction, outputs and fee)
    and, for a passkey, the options for navigator.credentials.get(). Makes the transaction first if the
    request has none yet."""
    with write(request) as s:
        return spend_service.spend_approval_request(s, spend_id, officer=actor(request), client=node(request))


@route(router, "POST", "/spends/{spend_id}/approve", "spend.decide")
def approve(request: Request, spend_id: Id, body: ApprovalIn) -> dict:
    with write(request) as s:
        return spend_service.spend_decide(s, spend_id, officer=actor(request), approve=True, proof=body.proof)


@route(router, "POST", "/spends/{spend_id}/reject", "spend.decide")
def reject(request: Request, spend_id: Id) -> dict:
    with write(request) as s:
        return spend_service.spend_decide(s, spend_id, officer=actor(request), approve=False)


@route(router, "POST", "/spends/{spend_id}/psbt", "spend.operate")
def make_psbt(request: Request, spend_id: Id, v2: bool = False) -> dict:
    with write(request) as s:
        return {"id": spend_id, "psbt": spend_service.spend_psbt(s, spend_id, client=node(request), v2=v2, actor=actor(request))}


@route(router, "GET", "/spends/{spend_id}/psbt", "psbt.download")
def download_psbt(request: Request, spend_id: Id, encoding: Literal["binary", "base64"] = "binary"):
    with read(request) as s:
        text = spend_service.spend_psbt(s, spend_id, client=None)
        text = visibility.psbt(visibility.reader(request, s), text, [spend_service.spend_policy(s, spend_id)])
    if encoding == "base64":
        return PlainTextResponse(text)
    return Response(base64.b64decode(text), media_type="application/octet-stream",
                    headers=attachment(f"spend-{spend_id}.psbt"))


@route(router, "POST", "/spends/{spend_id}/signatures", "psbt.upload")
async def upload_signatures(request: Request, spend_id: Id, file: UploadFile = File(...)) -> dict:
    data = await file.read(16_000_001)
    if len(data) > 16_000_000:
        raise CustodyError("a PSBT upload is at most 16 MB")
    return await take_spend_signatures(request, spend_id, data)     # verified in a worker process


@route(router, "POST", "/spends/{spend_id}/broadcast", "spend.operate")
def broadcast(request: Request, spend_id: Id) -> dict:
    return spend_service.spend_broadcast(request.app.state.sessions, spend_id, client=node(request), actor=actor(request))


@route(router, "POST", "/spends/{spend_id}/track", "spend.operate")
def track(request: Request, spend_id: Id, confirmations: int = Query(1, ge=1, le=1000)) -> dict:
    with write(request) as s:
        return spend_service.spend_track(s, spend_id, client=node(request), confirmations=confirmations)


@route(router, "POST", "/spends/{spend_id}/bump-fee", "spend.operate")
def bump_fee(request: Request, spend_id: Id, body: FeeIn) -> dict:
    with write(request) as s:
        return spend_service.spend_bump_fee(s, spend_id, client=node(request), fee_rate=body.fee_rate, cancel=body.cancel,
                                      actor=actor(request))


@route(router, "POST", "/spends/{spend_id}/cpfp", "spend.operate", status_code=201)
def cpfp(request: Request, spend_id: Id, body: FeeIn) -> dict:
    with write(request) as s:
        return spend_service.spend_cpfp(s, spend_id, client=node(request), fee_rate=body.fee_rate, requester=actor(request))


@route(router, "POST", "/spends/{spend_id}/cancel", "spend.operate")
def cancel(request: Request, spend_id: Id) -> dict:
    with write(request) as s:
        return spend_service.spend_cancel(s, spend_id, actor=actor(request))


class PsbtIn(Strict):
    psbt: str = Field(min_length=1, max_length=20_000_000, description="base64 or hex")


@route(router, "POST", "/psbt/check", "psbt.tools")
async def check_psbt(request: Request, body: PsbtIn) -> dict:
    summary = await offload(request, service.psbt_check_json, body.psbt, network=request.app.state.network)
    return Response(summary, media_type="application/json")        # JSON written by the worker process
