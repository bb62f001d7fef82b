"""The web console: server-rendered pages over the same service functions as the API.

Forms post back here with the session's CSRF token; each page and action has its entry in the
permission table. Pages show what a role may do, but the server enforces it either way.
"""
from __future__ import annotations

import base64
import hashlib
import json
import secrets
from pathlib import Path
from urllib.parse import urlencode

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from custody import accounts, credentials, eventlog, ledger, registry, service
from custody.accounts import AuthError
from custody.errors import CustodyError
from custody.formats import FORMATS

from . import charts, visibility
from .auth import LOGIN_CSRF_COOKIE, SESSION_COOKIE, allowed, cookie_is_secure, identify, route
from .api import Id
from .context import actor, node, read, write
from .cpu_pool import take_spend_signatures

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


# -- logging in and out --------------------------------------------------------------------------
@route(router, "GET", "/login", "public", page=True)
def login_page(request: Request, next: str = "/"):
    token = secrets.token_urlsafe(24)
    response = render(request, "login.html", login_csrf=token, next=_safe_next(next), error=None)
    response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=cookie_is_secure(request),
                        max_age=1800)
    return response


def _safe_next(target: str) -> str:
    """Only local paths: a login link must not send the user elsewhere."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


@route(router, "POST", "/login", "public", page=True)
def login(request: Request, username: str = Form(max_length=64), password: str = Form(max_length=1000),
          code: str = Form("", max_length=10), login_csrf: str = Form(max_length=100), next: str = Form("/")):
    expected = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not expected or not secrets.compare_digest(expected, login_csrf):
        return render(request, "login.html", status_code=403, login_csrf=expected or "", next=_safe_next(next),
                      error="the login form expired: reload the page and try again")
    sessions = request.app.state.sessions
    with sessions() as s:
        try:
            user = accounts.start_login(s, username, password, code)
        except AuthError as e:
            s.commit()                # the failed attempt counts towards the lock-out
            return render(request, "login.html", status_code=401, login_csrf=expected, next=_safe_next(next),
                          error=str(e), username=username)
        if isinstance(user, accounts.PasskeyLogin):     # the password was right: now the passkey
            return render(request, "login.html", login_csrf=expected, next=_safe_next(next), error=None,
                          passkey=user)
        cookie, _ = accounts.start_session(s, user)
        s.commit()
    return _logged_in(request, cookie, next)


def _logged_in(request: Request, cookie: str, next: str) -> RedirectResponse:
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(SESSION_COOKIE, cookie, httponly=True, samesite="strict", secure=cookie_is_secure(request),
                        max_age=int(accounts.SESSION_LIFETIME.total_seconds()))
    response.delete_cookie(LOGIN_CSRF_COOKIE)
    return response


def _browser_json(text: str) -> dict | None:
    """A passkey ceremony's answer as the console's script posts it (PublicKeyCredential.toJSON()); None
    when the field is empty."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        raise CustodyError("the passkey's answer is not JSON: reload the page and try again") from None
    return value if isinstance(value, dict) else {}


@route(router, "POST", "/login/passkey", "public", page=True)
def login_passkey(request: Request, username: str = Form(max_length=64), pending: str = Form(max_length=100),
                  assertion: str = Form("", max_length=20_000), login_csrf: str = Form(max_length=100),
                  next: str = Form("/")):
    """The second step of a passkey account's login: the assertion over the challenge of its password step."""
    expected = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not expected or not secrets.compare_digest(expected, login_csrf):
        return render(request, "login.html", status_code=403, login_csrf=expected or "", next=_safe_next(next),
                      error="the login form expired: reload the page and try again")
    with request.app.state.sessions() as s:
        try:
            try:
                answer = _browser_json(assertion)
            except CustodyError:
                answer = {}
            user = accounts.finish_passkey_login(s, username, pending, answer)
        except AuthError as e:
            s.commit()
            return render(request, "login.html", status_code=401, login_csrf=expected, next=_safe_next(next),
                          error=str(e), username=username)
        cookie, _ = accounts.start_session(s, user)
        s.commit()
    return _logged_in(request, cookie, next)


def _passkey_options(request: Request, begin):
    """JSON for the console's script: `begin(session)`'s options, or {"detail": why} with 400."""
    try:
        with request.app.state.sessions.begin() as s:
            return JSONResponse(begin(s))
    except CustodyError as e:
        return JSONResponse({"detail": str(e)}, status_code=400)


# -- enrolling: the holder of a one-time link sets their own credentials --------------------------
def _totp_qr(uri: str) -> str:
    import segno
    return segno.make(uri, error="m", micro=False).svg_data_uri(scale=4, border=2)


def _enroll_page(request: Request, token: str, status_code: int = 200, *, error: str | None = None,
                 secret: str | None = None):
    """The enrollment form with a new TOTP secret (or the one being confirmed), or only the refusal."""
    with read(request) as s:
        try:
            link, user = accounts.find_enrollment(s, token)
        except CustodyError as e:
            return render(request, "enroll.html", status_code=404, error=str(e), form=None)
        form = {"username": user.username, "role": user.role,
                "required": accounts.second_factor_required(link, user)}
    secret = secret or accounts.new_totp_secret()
    uri = accounts.totp_uri(form["username"], secret)
    csrf_token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)
    response = render(request, "enroll.html", status_code=status_code, error=error, token=token, form=form,
                      secret=secret, qr=_totp_qr(uri), login_csrf=csrf_token,
                      min_length=accounts.MIN_PASSWORD_LENGTH)
    response.set_cookie(LOGIN_CSRF_COOKIE, csrf_token, httponly=True, samesite="strict",
                        secure=cookie_is_secure(request), max_age=1800)
    return response


@route(router, "GET", "/enroll/{token}", "public", page=True)
def enroll_page(request: Request, token: str = PathParam(max_length=100)):
    return _enroll_page(request, token)


@route(router, "POST", "/enroll/{token}/passkey-options", "public", page=True)
def enroll_passkey_options(request: Request, token: str = PathParam(max_length=100),
                           login_csrf: str = Form(max_length=100)):
    """Options for navigator.credentials.create() of the link holder's login passkey (JSON): the link
    authorises it, since its holder has no session yet."""
    expected = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not expected or not secrets.compare_digest(expected, login_csrf):
        return JSONResponse({"detail": "the form expired: reload the page"}, status_code=403)
    return _passkey_options(request, lambda s: accounts.begin_enrollment_passkey(s, token))


@route(router, "POST", "/enroll/{token}", "public", page=True)
def enroll(request: Request, token: str = PathParam(max_length=100), password: str = Form(max_length=1000),
           password_again: str = Form(max_length=1000), totp_secret: str = Form("", max_length=64),
           code: str = Form("", max_length=10), passkey: str = Form("", max_length=20_000),
           login_csrf: str = Form(max_length=100)):
    """Set the password and second factor (a TOTP secret, or a passkey the page made), spend the link, and
    log in."""
    expected = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not expected or not secrets.compare_digest(expected, login_csrf):
        return _enroll_page(request, token, 403, error="the form expired: enter your choices again")
    if password != password_again:
        return _enroll_page(request, token, 400, error="the two passwords differ", secret=totp_secret or None)
    try:
        with request.app.state.sessions.begin() as s:
            new_passkey = _browser_json(passkey)
            user = accounts.complete_enrollment(s, token, password, totp_secret=None if new_passkey else totp_secret or None,
                                                code=code, passkey=new_passkey)
            eventlog.record(s, "user.login", user.username, f"user:{user.username}", {"enrolled": True})
            cookie, _ = accounts.start_session(s, user)
    except CustodyError as e:
        return _enroll_page(request, token, 400, error=str(e), secret=totp_secret or None)
    response = RedirectResponse("/account", status_code=303)
    response.set_cookie(SESSION_COOKIE, cookie, httponly=True, samesite="strict", secure=cookie_is_secure(request),
                        max_age=int(accounts.SESSION_LIFETIME.total_seconds()))
    response.delete_cookie(LOGIN_CSRF_COOKIE)
    return response


@route(router, "POST", "/logout", "me", page=True)
def logout(request: Request):
    with write(request) as s:
        accounts.end_session(s, request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


# -- dashboard -----------------------------------------------------------------------------------
@route(router, "GET", "/", "dashboard.read", page=True)
def dashboard(request: Request):
    with read(request) as s:
        balances = service.balance(s)
        pending = visibility.spends(visibility.reader(request, s), service.spend_list(s, states=list(PENDING)))
        policies = registry.list_policies(s)
        history = {p.name: ledger.balance_history(s, p) for p in policies}
        total_history = _sum_histories(history)
        distribution = ledger.value_distribution(s)
        alerts = _alerts(request, s, pending)
    return render(request, "dashboard.html", balances=balances, pending=pending, alerts=alerts,
                  total={k: sum(b[k] for b in balances) for k in ("confirmed", "unconfirmed", "immature", "frozen",
                                                                    "reserved", "total")},
                  balance_chart=charts.balance_line(total_history), value_chart=charts.value_histogram(distribution))


def _sum_histories(histories: dict[str, list[dict]]) -> list[dict]:
    """The custodian's total confirmed balance after each block where any policy changed."""
    heights = sorted({p["height"] for points in histories.values() for p in points})
    out, current = [], {name: 0 for name in histories}
    by_height = {name: {p["height"]: p["balance"] for p in points} for name, points in histories.items()}
    for h in heights:
        for name in histories:
            current[name] = by_height[name].get(h, current[name])
        out.append({"height": h, "balance": sum(current.values())})
    return out


def _alerts(request: Request, s, pending: list[dict]) -> list[str]:
    alerts = []
    watcher = getattr(request.app.state, "watcher", None)
    if watcher is not None and watcher.last_error:
        alerts.append(f"Ledger sync is failing: {watcher.last_error}")
    status = service.log_status(s)
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
    frozen = ledger.utxo_page(s, states=["frozen"], limit=1)["total"]
    if frozen:
        alerts.append(f"{frozen} coin(s) are frozen")
    if principal.role == "admin":
        locked = [u.username for u in accounts.list_users(s) if accounts.user_json(u)["locked_until"]]
        if locked:
            alerts.append(f"Locked after failed logins: {', '.join(locked)}")
    return alerts


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
        names = [p.name for p in registry.list_policies(s)]
    pages = max((result["total"] + PAGE_SIZE - 1) // PAGE_SIZE, 1)
    params = {"policy": policy, "state": state, "q": q, "sort": sort, "order": order}
    return render(request, "utxos.html", result=result, page=page, pages=pages, params=params, policies=names,
                  states=ledger.STATES, flash=flash,
                  link=lambda **change: "/utxos?" + urlencode({**params, "page": page, **change}))


@route(router, "POST", "/utxos/freeze", "utxo.write", page=True)
def freeze(request: Request, outpoint: str = Form(max_length=80), reason: str = Form(max_length=500),
           back_to: str = Form("/utxos")):
    with write(request) as s:
        service.freeze(s, outpoint, reason, actor=actor(request))
    return back(_safe_next(back_to), flash=f"froze {outpoint}")


@route(router, "POST", "/utxos/unfreeze", "utxo.write", page=True)
def unfreeze(request: Request, outpoint: str = Form(max_length=80), back_to: str = Form("/utxos")):
    with write(request) as s:
        service.unfreeze(s, outpoint, actor=actor(request))
    return back(_safe_next(back_to), flash=f"released {outpoint}")


@route(router, "POST", "/labels", "label.write", page=True)
def label(request: Request, ref: str = Form(max_length=200), text: str = Form("", max_length=1000),
          type: str = Form("output", max_length=10), back_to: str = Form("/utxos")):
    with write(request) as s:
        service.label_set(s, type, ref, text, actor=actor(request))
    return back(_safe_next(back_to), flash=f"labelled {ref}")


@route(router, "GET", "/history", "ledger.read", page=True)
def history_page(request: Request, policy: str = ""):
    with read(request) as s:
        names = [p.name for p in registry.list_policies(s)]
        chosen = policy or (names[0] if names else "")
        rows = service.history(s, chosen) if chosen else []
    return render(request, "history.html", rows=rows, policies=names, chosen=chosen)


# -- spends --------------------------------------------------------------------------------------
@route(router, "GET", "/spends", "spend.read", page=True)
def spends_page(request: Request):
    with read(request) as s:
        rows = list(reversed(visibility.spends(visibility.reader(request, s), service.spend_list(s))))
    return render(request, "spends.html", rows=rows)


def _form_destinations(addresses: list[str], amounts: list[str]) -> list[tuple[str, str]]:
    return [(a.strip(), v.strip()) for a, v in zip(addresses, amounts) if a.strip() or v.strip()]


@route(router, "GET", "/spends/new", "spend.request", page=True)
def new_spend_page(request: Request, policy: str = ""):
    return _spend_form(request, policy=policy)


def _spend_form(request: Request, status_code: int = 200, **form):
    with read(request) as s:
        names = [p.name for p in registry.list_policies(s) if p.status in ("active", "retiring")]
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
                preview = service.fee_preview(s, policy, to=destinations, fee_rate=rate,
                                              client=None if rate else node(request), coins=coin or None, sweep=sweep)
            return _spend_form(request, preview=preview, **form)
        with write(request) as s:
            created = service.spend_request(s, policy, requester=actor(request), to=destinations, fee_rate=rate,
                                            client=node(request), memo=memo or None,
                                            coins=coin or None, sweep=sweep)
    except CustodyError as e:
        return _spend_form(request, 400, error=str(e), **form)
    return back(f"/spends/{created['id']}", flash="spend requested")


@route(router, "GET", "/approvals", "spend.decide", page=True)
def approvals_page(request: Request):
    with read(request) as s:
        rows = [service.spend_show(s, r["id"]) for r in service.spend_list(s, states=["requested"])]
    me = request.state.principal.username
    for r in rows:
        r["mine"] = r["requester"] == me
        r["decided"] = any(a["officer"] == me for a in r["approvals"])
    return render(request, "approvals.html", rows=rows)


def _spend_context(request: Request, s, spend_id: Id) -> dict:
    who = visibility.reader(request, s)
    spend = visibility.spend(who, service.spend_show(s, spend_id))
    policy = registry.get_policy(s, spend["policy"])
    tip = ledger.tip_height(s)
    confirmations = 0
    from custody.spends import get_spend
    row = get_spend(s, spend_id)
    if row.confirmed_height is not None and tip is not None:
        confirmations = tip - row.confirmed_height + 1
    return {"spend": spend, "timeline": visibility.timeline(who, service.spend_timeline(s, spend_id)),
            "threshold": policy.threshold,
            "confirmations": confirmations, "has_psbt": row.psbt is not None}


@route(router, "GET", "/spends/{spend_id}", "spend.read", page=True)
def spend_page(request: Request, spend_id: Id, flash: str = ""):
    with read(request) as s:
        context = _spend_context(request, s, spend_id)
        qr_frames = []
        if context["has_psbt"] and allowed("psbt.download", request.state.principal.role) \
                and context["spend"]["state"] in ("signing", "signed"):
            from .qr import psbt_frames
            text = visibility.psbt(visibility.reader(request, s), service.spend_psbt(s, spend_id, client=None),
                                   [registry.get_policy(s, context["spend"]["policy"]).id])
            qr_frames = psbt_frames(base64.b64decode(text))
        my_devices = []
        if context["spend"]["state"] == "signing" and allowed("device.sign", request.state.principal.role):
            from custody import device_service
            me = request.state.principal.username
            my_devices = [d["serial"] for d in device_service.device_list(s)
                          if d["status"] == "active" and d["signatory"] and d["signatory"].casefold() == me
                          and any(r["policy"] == context["spend"]["policy"] and r["state"] == "confirmed"
                                  for r in d["registrations"])]
        approval_message = None
        if context["has_psbt"] and context["spend"]["state"] == "requested" and allowed("spend.decide", request.state.principal.role):
            approval_message = service.spend_approval_message(s, spend_id).decode()
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
        service.spend_decide(s, spend_id, officer=actor(request), approve=False)
    return back(f"/spends/{spend_id}", flash="rejected")


@route(router, "POST", "/spends/{spend_id}/psbt", "spend.operate", page=True)
def make_psbt(request: Request, spend_id: Id):
    with write(request) as s:
        service.spend_psbt(s, spend_id, client=node(request), actor=actor(request))
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
    result = service.spend_broadcast(request.app.state.sessions, spend_id, client=node(request), actor=actor(request))
    return back(f"/spends/{spend_id}", flash=f"broadcast {result['txid']}")


@route(router, "POST", "/spends/{spend_id}/cancel", "spend.operate", page=True)
def cancel(request: Request, spend_id: Id):
    with write(request) as s:
        service.spend_cancel(s, spend_id, actor=actor(request))
    return back(f"/spends/{spend_id}", flash="cancelled")


# -- policies and the log ------------------------------------------------------------------------
@route(router, "GET", "/policies", "policy.read", page=True)
def policies_page(request: Request):
    with read(request) as s:
        rows = service.policy_list(s)
    return render(request, "policies.html", rows=rows)


@route(router, "GET", "/policies/{name}", "policy.read", page=True)
def policy_page(request: Request, name: str):
    with read(request) as s:
        policy = visibility.policy(visibility.reader(request, s), service.policy_show(s, name),
                                   registry.get_policy(s, name))
        receive = service.addresses(s, name, branch=0)[:20]
        chart = charts.balance_line(service.balance_history(s, name))
    return render(request, "policy.html", policy=policy, receive=receive, formats=FORMATS, chart=chart)


@route(router, "GET", "/log", "log.read", page=True)
def log_page(request: Request, page: int = Query(1, ge=1, le=100_000), subject: str = ""):
    page = max(page, 1)
    with read(request) as s:
        status = service.log_status(s)
        entries = service.log_entries(s, subject=subject or None, offset=(page - 1) * 100, limit=100)
    pages = max((entries["total"] + 99) // 100, 1)
    return render(request, "log.html", status=status, entries=entries, page=page, pages=pages, subject=subject)


# -- account and administration ------------------------------------------------------------------
def _account(request: Request, status_code: int = 200, *, new_token: str | None = None, error: str | None = None,
             secret: str | None = None, flash: str = ""):
    """The account page: tokens, and the forms to change one's password and authenticator (with a new
    secret to enroll, or the one being confirmed)."""
    p = request.state.principal
    with read(request) as s:
        user = s.get(accounts.User, p.user_id)
        tokens = accounts.list_tokens(s, user)
        second_factor = user.second_factor
    secret = secret or accounts.new_totp_secret()
    return render(request, "account.html", status_code=status_code, tokens=tokens, new_token=new_token,
                  error=error, flash=flash, second_factor=second_factor, new_secret=secret,
                  new_secret_qr=_totp_qr(accounts.totp_uri(p.username, secret)),
                  min_length=accounts.MIN_PASSWORD_LENGTH)


@route(router, "GET", "/account", "me", page=True)
def account_page(request: Request, flash: str = ""):
    return _account(request, flash=flash)


def _change_own(request: Request, change, done: str, secret: str | None = None):
    """Run `change(session, user, cookie)` for the logged-in user: a wrong current password or code
    counts as a failed login (custody.accounts commits that itself); any refusal shows the page again
    with the reason."""
    p = request.state.principal
    try:
        with request.app.state.sessions() as s:
            change(s, s.get(accounts.User, p.user_id), request.cookies.get(SESSION_COOKIE))
            s.commit()
    except CustodyError as e:
        return _account(request, 400, error=str(e), secret=secret)
    return back("/account", flash=done)


@route(router, "POST", "/account/password", "me", page=True)
def change_password(request: Request, password: str = Form(max_length=1000), code: str = Form("", max_length=10),
                    new_password: str = Form(max_length=1000), new_password_again: str = Form(max_length=1000),
                    assertion: str = Form("", max_length=20_000)):
    if new_password != new_password_again:
        return _account(request, 400, error="the two new passwords differ")
    return _change_own(request, lambda s, user, cookie: accounts.change_password(
        s, user, password, code, new_password, keep_session=cookie, assertion=_browser_json(assertion)),
        "Password changed; your other sessions have ended.")


@route(router, "POST", "/account/totp", "me", page=True)
def change_totp(request: Request, password: str = Form(max_length=1000), code: str = Form("", max_length=10),
                new_secret: str = Form(max_length=64), new_code: str = Form(max_length=10),
                assertion: str = Form("", max_length=20_000)):
    return _change_own(request, lambda s, user, cookie: accounts.change_totp(
        s, user, password, code, new_secret, new_code, keep_session=cookie, assertion=_browser_json(assertion)),
        "Authenticator changed; your other sessions have ended.", secret=new_secret)


@route(router, "POST", "/account/passkey", "me", page=True)
def change_to_passkey(request: Request, password: str = Form(max_length=1000), code: str = Form("", max_length=10),
                      new_passkey: str = Form(max_length=20_000), assertion: str = Form("", max_length=20_000)):
    """Make a new passkey (the page's script made it) one's second factor, in place of the present one."""
    return _change_own(request, lambda s, user, cookie: accounts.change_to_passkey(
        s, user, password, code, _browser_json(new_passkey) or {}, keep_session=cookie,
        assertion=_browser_json(assertion)), "Your second factor is now this passkey; your other sessions have ended.")


@route(router, "POST", "/account/passkey/options", "me", page=True)
def new_passkey_options(request: Request):
    """Options for navigator.credentials.create() of a new login passkey (JSON)."""
    user_id = request.state.principal.user_id
    return _passkey_options(request, lambda s: credentials.begin_login_passkey(s, s.get(accounts.User, user_id)))


@route(router, "POST", "/account/passkey/challenge", "me", page=True)
def passkey_challenge(request: Request):
    """Options for navigator.credentials.get() that confirm a change on this page, for this session (JSON)."""
    p, cookie = request.state.principal, request.cookies.get(SESSION_COOKIE)
    if p.via != "session" or not cookie:
        return JSONResponse({"detail": "confirm with a passkey in the console, logged in"}, status_code=400)
    return _passkey_options(request, lambda s: accounts.passkey_challenge(s, s.get(accounts.User, p.user_id), cookie))


@route(router, "POST", "/account/tokens", "token.write", page=True)
def create_token(request: Request, name: str = Form(max_length=100), role: str = Form("", max_length=16),
                 days: int = Form(90)):
    p = request.state.principal
    with write(request) as s:
        user = s.get(accounts.User, p.user_id)
        token, _ = accounts.create_token(s, user, name, role=role or p.role, expires_in_days=days,
                                         scope=p.role if p.via == "token" else None)
    return _account(request, new_token=token)


@route(router, "POST", "/account/tokens/{token_id}/revoke", "token.write", page=True)
def revoke_token(request: Request, token_id: Id):
    p = request.state.principal
    with write(request) as s:
        accounts.revoke_token(s, token_id, by=s.get(accounts.User, p.user_id), role=p.role)
    return back("/account")


@route(router, "GET", "/admin/users", "user.admin", page=True)
def users_page(request: Request, flash: str = ""):
    from custody import governance
    with read(request) as s:
        users = [accounts.user_json(u) for u in accounts.list_users(s)]
        # role changes are proposals (custody.governance): show the ones waiting beside their user
        waiting = {p["target"]: p for p in governance.list_proposals(s, states=list(governance.OPEN))
                   if p["kind"] == "user_role"}
    return render(request, "users.html", users=users, created=None, roles=accounts.ROLES, waiting=waiting,
                  flash=flash)


def _users_with_link(request: Request, username: str, role: str, token: str, link, what: str):
    """The users page showing the one-time link to hand over (this once; only its hash is kept)."""
    from .api import enrollment_shown
    created = {"username": username, "role": role, "what": what, **enrollment_shown(request, token, link)}
    with read(request) as s:
        users = [accounts.user_json(u) for u in accounts.list_users(s)]
    return render(request, "users.html", users=users, created=created, roles=accounts.ROLES)


@route(router, "POST", "/admin/users", "user.admin", page=True)
def create_user(request: Request, username: str = Form(max_length=64), role: str = Form(max_length=16)):
    from custody import governance
    with write(request) as s:
        user, token, link, proposal = governance.invite(s, username, role, actor=actor(request))
        name = user.username
        note = (f"Created as viewer; the {role!r} role is proposed (proposal #{proposal.id}): other admins or "
                "officers approve it" if proposal else "Created")
    return _users_with_link(request, name, role, token, link, note)


@route(router, "POST", "/admin/users/{username}/reset", "user.admin", page=True)
def reset_user(request: Request, username: str):
    with write(request) as s:
        user = accounts.get_user(s, username)
        token, link = accounts.reset_credentials(s, user, actor=actor(request),
                                                 by=s.get(accounts.User, request.state.principal.user_id))
        name, role = user.username, user.role
    return _users_with_link(request, name, role, token, link, "Reset")


@route(router, "POST", "/admin/users/{username}/unlock", "user.admin", page=True)
def unlock_user(request: Request, username: str):
    with write(request) as s:
        accounts.unlock(s, accounts.get_user(s, username), actor=actor(request))
    return back("/admin/users")

