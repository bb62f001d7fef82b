"""The web console's page machinery (templates, rendering, flash messages, error pages) and the dashboard.

The pages are server-rendered over the same service functions as the API.

Forms post back here with the session's CSRF token; each page and action has its entry in the
permission table. Pages show what a role may do, but the server enforces it either way.
"""
from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from coordinator import accounts
from custody.ledger import service
from custody.spending import service as spend_service
from custody.eventlog import service as log_service

from coordinator import visibility
from coordinator.auth import allowed, identify, route
from coordinator.console import charts
from coordinator.context import read

router = APIRouter()
templates = Jinja2Templates(directory=Path(__file__).with_name("templates"))
templates.env.filters["btc"] = charts.btc
# JSON as text (autoescaping makes it safe for HTML), not Jinja's tojson, which writes < as \u003c
templates.env.filters["json_text"] = lambda value: json.dumps(value, ensure_ascii=False, sort_keys=True)
PENDING = ("requested", "approved", "signing", "signed", "broadcasting", "broadcast")
PAGE_SIZE = 50


FLASH_COOKIE = "custody_flash"


def _flash_digest(message: str) -> str:
    return hashlib.sha256(message.encode("utf-8", "surrogatepass")).hexdigest()


def render(request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
    principal = getattr(request.state, "principal", None)
    can = (lambda action: principal is not None and allowed(action, principal.role))
    # a flash message is shown only when this browser was just sent here by `back` with it (its cookie):
    # `?flash=` alone is text anyone can put in a link, and the console must not say what a link says
    pending = request.cookies.get(FLASH_COOKIE)
    flash = context.get("flash")
    if flash and not (pending and secrets.compare_digest(pending, _flash_digest(flash))):
        context["flash"] = ""
    response = templates.TemplateResponse(request, name, {"user": principal, "can": can, **context},
                                          status_code=status_code)
    if pending is not None:
        response.delete_cookie(FLASH_COOKIE, path="/", httponly=True, samesite="strict")
    return response


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    if getattr(request.state, "principal", None) is None:
        try:
            request.state.principal = identify(request)
        except Exception:
            request.state.principal = None
    return render(request, "error.html", status_code=status, status=status, message=message)


def safe_next(target: str) -> str:
    """Only local paths: a login link must not send the user elsewhere."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


def back(url: str, **flash) -> RedirectResponse:
    """Redirect after a form post (303: the browser follows with GET), with a message to show. The message
    rides in the URL (`flash=`) and is shown only with the cookie set here beside it, which holds its
    SHA-256: the server's own words, to this browser, once (`render`)."""
    sep = "&" if "?" in url else "?"
    response = RedirectResponse(url + (sep + urlencode(flash) if flash else ""), status_code=303)
    if flash.get("flash"):
        response.set_cookie(FLASH_COOKIE, _flash_digest(str(flash["flash"])), max_age=300, path="/", httponly=True,
                            samesite="strict")
    return response



# -- dashboard -----------------------------------------------------------------------------------
@route(router, "GET", "/", "dashboard.read", page=True)
def dashboard(request: Request):
    with read(request) as s:
        balances = service.balance(s)
        pending = visibility.spends(visibility.reader(request, s), spend_service.spend_list(s, states=list(PENDING)))
        total_history = service.total_balance_history(s)
        distribution = service.value_distribution(s)
        alerts = _alerts(request, s, pending)
    return render(request, "dashboard.html", balances=balances, pending=pending, alerts=alerts,
                  total={k: sum(b[k] for b in balances) for k in ("confirmed", "unconfirmed", "immature", "frozen",
                                                                    "reserved", "total")},
                  balance_chart=charts.balance_line(total_history), value_chart=charts.value_histogram(distribution))


def _alerts(request: Request, s, pending: list[dict]) -> list[str]:
    alerts = []
    watcher = getattr(request.app.state, "watcher", None)
    if watcher is not None and watcher.last_error:
        alerts.append(f"Ledger sync is failing: {watcher.last_error}")
    status = log_service.log_status(s)
    if not status["ok"]:
        alerts.append(f"The event log failed verification: {status['problem']}")
    principal = request.state.principal
    if principal.role == "officer":
        waiting = [p for p in pending if p["state"] == "requested" and p["requester"] != principal.username]
        if waiting:
            alerts.append(f"{len(waiting)} spend request(s) await approval")
    if principal.role == "signatory":
        signing = [p for p in pending if p["state"] == "signing"]
        if signing:
            alerts.append(f"{len(signing)} spend(s) await signatures")
    frozen = service.frozen_count(s)
    if frozen:
        alerts.append(f"{frozen} coin(s) are frozen")
    if principal.role == "admin":
        locked = [u.username for u in accounts.list_users(s) if accounts.user_json(u)["locked_until"]]
        if locked:
            alerts.append(f"Locked after failed logins: {', '.join(locked)}")
    return alerts


