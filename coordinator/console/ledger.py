"""The console's pages of what is held: coins (freeze, labels), history, policies."""
from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request

from custody.bitcoin.formats import FORMATS
from custody.ledger import service
from custody.spending import service as spend_service

from coordinator import visibility
from coordinator.auth import route
from coordinator.console import charts
from coordinator.console.pages import back, PAGE_SIZE, render, safe_next
from coordinator.context import actor, read, write

router = APIRouter()


# -- coins and history ---------------------------------------------------------------------------
@route(router, "GET", "/utxos", "ledger.read", page=True)
def utxos_page(request: Request, policy: str = "", state: str = "", q: str = "", sort: str = "height",
               order: str = "desc", page: int = Query(1, ge=1, le=100_000), flash: str = ""):
    page = max(page, 1)
    with read(request) as s:
        who = visibility.reader(request, s)
        result = service.utxo_page(s, policy=policy or None, states=[state] if state else None, search=q or None,
                                   sort=sort, descending=order == "desc", offset=(page - 1) * PAGE_SIZE,
                                   limit=PAGE_SIZE, search_labels=visibility.search_labels(who))
        result = visibility.utxo_page(who, result)
        names = service.policy_names(s)
    pages = max((result["total"] + PAGE_SIZE - 1) // PAGE_SIZE, 1)
    params = {"policy": policy, "state": state, "q": q, "sort": sort, "order": order}
    return render(request, "utxos.html", result=result, page=page, pages=pages, params=params, policies=names,
                  states=service.COIN_STATES, flash=flash,
                  link=lambda **change: "/utxos?" + urlencode({**params, "page": page, **change}))


@route(router, "POST", "/utxos/freeze", "utxo.write", page=True)
def freeze(request: Request, outpoint: str = Form(max_length=80), reason: str = Form(max_length=500),
           back_to: str = Form("/utxos")):
    with write(request) as s:
        service.freeze(s, outpoint, reason, actor=actor(request))
    return back(safe_next(back_to), flash=f"froze {outpoint}")


@route(router, "POST", "/utxos/unfreeze", "utxo.write", page=True)
def unfreeze(request: Request, outpoint: str = Form(max_length=80), back_to: str = Form("/utxos")):
    with write(request) as s:
        service.unfreeze(s, outpoint, actor=actor(request))
    return back(safe_next(back_to), flash=f"released {outpoint}")


@route(router, "POST", "/labels", "label.write", page=True)
def label(request: Request, ref: str = Form(max_length=200), text: str = Form("", max_length=1000),
          type: str = Form("output", max_length=10), back_to: str = Form("/utxos")):
    with write(request) as s:
        service.label_set(s, type, ref, text, actor=actor(request))
    return back(safe_next(back_to), flash=f"labelled {ref}")


@route(router, "GET", "/history", "ledger.read", page=True)
def history_page(request: Request, policy: str = ""):
    with read(request) as s:
        names = service.policy_names(s)
        chosen = policy or (names[0] if names else "")
        rows = service.history(s, chosen) if chosen else []
    return render(request, "history.html", rows=rows, policies=names, chosen=chosen)


# -- policies and the log ------------------------------------------------------------------------
@route(router, "GET", "/policies", "policy.read", page=True)
def policies_page(request: Request):
    with read(request) as s:
        rows = service.policy_list(s)
    return render(request, "policies.html", rows=rows)


@route(router, "GET", "/policies/{name}", "policy.read", page=True)
def policy_page(request: Request, name: str):
    with read(request) as s:
        policy = visibility.policy(visibility.reader(request, s), spend_service.policy_show(s, name), name)
        receive = service.addresses(s, name, branch=0)[:20]
        chart = charts.balance_line(service.balance_history(s, name))
    return render(request, "policy.html", policy=policy, receive=receive, formats=FORMATS, chart=chart)
