"""The console's spend pages: the list, a new request, approvals, one spend with its PSBT and signatures."""
from __future__ import annotations

import base64

from fastapi import APIRouter, File, Form, Request, UploadFile

from custody.errors import CustodyError
from custody.ledger import service
from custody.spending import service as spend_service

from coordinator import visibility
from coordinator.api.common import Id
from coordinator.auth import allowed, route
from coordinator.console.pages import back, render
from coordinator.context import actor, node, read, write
from coordinator.cpu_pool import take_spend_signatures

router = APIRouter()


# -- spends --------------------------------------------------------------------------------------
@route(router, "GET", "/spends", "spend.read", page=True)
def spends_page(request: Request):
    with read(request) as s:
        rows = list(reversed(visibility.spends(visibility.reader(request, s), spend_service.spend_list(s))))
    return render(request, "spends.html", rows=rows)


def _form_destinations(addresses: list[str], amounts: list[str]) -> list[tuple[str, str]]:
    return [(a.strip(), v.strip()) for a, v in zip(addresses, amounts) if a.strip() or v.strip()]


@route(router, "GET", "/spends/new", "spend.request", page=True)
def new_spend_page(request: Request, policy: str = ""):
    return _spend_form(request, policy=policy)


def _spend_form(request: Request, status_code: int = 200, **form):
    with read(request) as s:
        names = service.policy_names(s, statuses=("active", "retiring"))
        policy = form.get("policy") or (names[0] if names else "")
        coins = service.utxo_page(s, policy=policy, states=["confirmed"], sort="value", descending=True,
                                  limit=200)["rows"] if policy else []
    return render(request, "spend_new.html", status_code=status_code, policies=names, coins=coins,
                  form={"policy": policy, "destinations": form.get("destinations") or [("", "")],
                        "fee_rate": form.get("fee_rate", ""), "memo": form.get("memo", ""),
                        "coins": form.get("chosen") or [], "sweep": form.get("sweep", False)},
                  preview=form.get("preview"), error=form.get("error"))


@route(router, "POST", "/spends/new", "spend.request", page=True)
def new_spend(request: Request, policy: str = Form(max_length=200), address: list[str] = Form(default=[]),
              amount: list[str] = Form(default=[]), fee_rate: str = Form("", max_length=20),
              memo: str = Form("", max_length=1000), coin: list[str] = Form(default=[]), sweep: bool = Form(False),
              action: str = Form("request")):
    destinations = _form_destinations(address, amount)
    form = {"policy": policy, "destinations": destinations or [("", "")], "fee_rate": fee_rate, "memo": memo,
            "chosen": coin, "sweep": sweep}
    try:
        rate = float(fee_rate) if fee_rate.strip() else None
    except ValueError:
        return _spend_form(request, 400, error=f"{fee_rate!r} is not a fee rate in sat/vB", **form)
    try:
        if action == "preview":
            with read(request) as s:
                preview = spend_service.fee_preview(s, policy, to=destinations, fee_rate=rate,
                                              client=None if rate else node(request), coins=coin or None, sweep=sweep)
            return _spend_form(request, preview=preview, **form)
        with write(request) as s:
            created = spend_service.spend_request(s, policy, requester=actor(request), to=destinations, fee_rate=rate,
                                            client=node(request), memo=memo or None,
                                            coins=coin or None, sweep=sweep)
    except CustodyError as e:
        return _spend_form(request, 400, error=str(e), **form)
    return back(f"/spends/{created['id']}", flash="spend requested")


@route(router, "GET", "/approvals", "spend.decide", page=True)
def approvals_page(request: Request):
    with read(request) as s:
        rows = [spend_service.spend_show(s, r["id"]) for r in spend_service.spend_list(s, states=["requested"])]
    me = request.state.principal.username
    for r in rows:
        r["mine"] = r["requester"] == me
        r["decided"] = any(a["officer"] == me for a in r["approvals"])
    return render(request, "approvals.html", rows=rows)


def _spend_context(request: Request, s, spend_id: Id) -> dict:
    who = visibility.reader(request, s)
    spend = visibility.spend(who, spend_service.spend_show(s, spend_id))
    return {"spend": spend, "timeline": visibility.timeline(who, spend_service.spend_timeline(s, spend_id)),
            **spend_service.spend_progress(s, spend_id)}


@route(router, "GET", "/spends/{spend_id}", "spend.read", page=True)
def spend_page(request: Request, spend_id: Id, flash: str = ""):
    with read(request) as s:
        context = _spend_context(request, s, spend_id)
        qr_frames = []
        if context["has_psbt"] and allowed("psbt.download", request.state.principal.role) \
                and context["spend"]["state"] in ("signing", "signed"):
            from coordinator.console.qr import psbt_frames
            text = visibility.psbt(visibility.reader(request, s), spend_service.spend_psbt(s, spend_id, client=None),
                                   [context["spend"]["policy"]])
            qr_frames = psbt_frames(base64.b64decode(text))
        my_devices = []
        if context["spend"]["state"] == "signing" and allowed("device.sign", request.state.principal.role):
            from custody.devices import service as device_service
            me = request.state.principal.username
            my_devices = [d["serial"] for d in device_service.device_list(s)
                          if d["status"] == "active" and d["signatory"] and d["signatory"].casefold() == me
                          and any(r["policy"] == context["spend"]["policy"] and r["state"] == "confirmed"
                                  for r in d["registrations"])]
        approval_message = None
        if context["has_psbt"] and context["spend"]["state"] == "requested" and allowed("spend.decide", request.state.principal.role):
            approval_message = spend_service.spend_approval_message(s, spend_id).decode()
    return render(request, "spend.html", flash=flash, qr_frames=qr_frames, approval_message=approval_message,
                  my_devices=my_devices, **context)


@route(router, "GET", "/spends/{spend_id}/timeline", "spend.read", page=True)
def spend_timeline(request: Request, spend_id: Id):
    """The part of the spend page that live-updates."""
    with read(request) as s:
        context = _spend_context(request, s, spend_id)
    return render(request, "_timeline.html", **context)


@route(router, "POST", "/spends/{spend_id}/reject", "spend.decide", page=True)
def reject(request: Request, spend_id: Id):
    with write(request) as s:
        spend_service.spend_decide(s, spend_id, officer=actor(request), approve=False)
    return back(f"/spends/{spend_id}", flash="rejected")


@route(router, "POST", "/spends/{spend_id}/psbt", "spend.operate", page=True)
def make_psbt(request: Request, spend_id: Id):
    with write(request) as s:
        spend_service.spend_psbt(s, spend_id, client=node(request), actor=actor(request))
    return back(f"/spends/{spend_id}", flash="PSBT ready for signers")


@route(router, "POST", "/spends/{spend_id}/signatures", "psbt.upload", page=True)
async def upload(request: Request, spend_id: Id, file: UploadFile = File(...)):
    data = await file.read(16_000_001)
    if len(data) > 16_000_000:
        raise CustodyError("a PSBT upload is at most 16 MB")
    result = await take_spend_signatures(request, spend_id, data)     # verified in a worker process
    return back(f"/spends/{spend_id}", flash=f"signature from {', '.join(result['new_signers'])} added")


@route(router, "POST", "/spends/{spend_id}/broadcast", "spend.operate", page=True)
def broadcast(request: Request, spend_id: Id):
    result = spend_service.spend_broadcast(request.app.state.sessions, spend_id, client=node(request), actor=actor(request))
    return back(f"/spends/{spend_id}", flash=f"broadcast {result['txid']}")


@route(router, "POST", "/spends/{spend_id}/cancel", "spend.operate", page=True)
def cancel(request: Request, spend_id: Id):
    with write(request) as s:
        spend_service.spend_cancel(s, spend_id, actor=actor(request))
    return back(f"/spends/{spend_id}", flash="cancelled")
