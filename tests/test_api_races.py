"""Races a reviewer runs against the API: the same request sent several times at once, through the
ASGI app and through a real `custody serve`, on SQLite and PostgreSQL. Each must act once, log once,
and answer the others with a reason (never a 500)."""
from __future__ import annotations

from functools import partial

from sqlalchemy import func, select

from custody.bitcoin.policies import build_policy
from custody.eventlog.models import EventLogEntry
from custody.spending.models import Approval

from . import officers
from .concurrency import at_once, Served
from .conftest import fund_policy, hd_keys
from .test_api import _approve, _request, _signed_by, coins, service, vault  # noqa: F401  (fixtures)


def _signed_spend(service, vault, amount="0.5") -> int:
    sid = _request(service, amount=amount).json()["id"]
    assert _approve(service, sid, "omar").status_code == 200
    assert service.call("POST", f"/api/spends/{sid}/psbt", "omar").status_code == 200
    psbt = service.call("GET", f"/api/spends/{sid}/psbt", "sina").content
    for n, who in ((vault, "sina"), (vault + 1, "sam")):
        upload = service.call("POST", f"/api/spends/{sid}/signatures", who,
                              files={"file": ("s.psbt", _signed_by(n, psbt))})
        assert upload.status_code == 200, upload.text
    return sid


def _logged(service, subject: str, kind: str) -> int:
    with service.sessions() as s:
        return s.scalar(select(func.count()).select_from(EventLogEntry)
                        .where(EventLogEntry.subject == subject, EventLogEntry.kind == kind))


def test_three_broadcasts_at_once_send_once_and_log_once(service, vault, rpc):
    sid = _signed_spend(service, vault)
    answers = at_once(3, lambda i: service.call("POST", f"/api/spends/{sid}/broadcast", "omar"))
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    txids = {a.json()["txid"] for a in answers}
    assert len(txids) == 1 and txids <= set(rpc.getrawmempool())
    assert _logged(service, f"spend:{sid}", "spend.broadcasting") == 1
    assert _logged(service, f"spend:{sid}", "spend.broadcast") == 1


def test_broadcasts_at_once_through_a_real_server(service, vault, rpc, db_url, node, tmp_path):
    sid = _signed_spend(service, vault)
    with Served(db_url, node, tmp_path) as served:
        answers = at_once(4, lambda i: served.request("POST", f"/api/spends/{sid}/broadcast", service.tokens["omar"]))
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert len({a.json()["txid"] for a in answers}) == 1
    assert _logged(service, f"spend:{sid}", "spend.broadcast") == 1


def _omars_approval(service, sid: int) -> dict:
    """The body of omar's approval of spend `sid` (his key enrolled, the message asked and signed)."""
    return {"proof": officers.proof_via_api(partial(service.call, name="omar"), sid, "omar")}


def test_one_officer_approving_four_times_at_once_counts_once(service, vault, db_url, node, tmp_path):
    first = _request(service).json()["id"]
    body = _omars_approval(service, first)
    answers = at_once(4, lambda i: service.call("POST", f"/api/spends/{first}/approve", "omar", json=body))
    second = _request(service).json()["id"]
    body = _omars_approval(service, second)
    with Served(db_url, node, tmp_path) as served:
        answers += at_once(4, lambda i: served.request("POST", f"/api/spends/{second}/approve", service.tokens["omar"],
                                                       json=body))
    for sid, group in ((first, answers[:4]), (second, answers[4:])):
        codes = sorted(a.status_code for a in group)
        assert codes[0] == 200 and set(codes[1:]) <= {200, 400}, [a.text for a in group]
        assert all("already decided" in a.json()["detail"] or "is signing" in a.json()["detail"]
                   for a in group if a.status_code == 400)
        with service.sessions() as s:
            assert s.scalar(select(func.count()).select_from(Approval).where(Approval.spend_id == sid)) == 1
        assert _logged(service, f"spend:{sid}", "spend.approved") == 1
        assert _logged(service, f"spend:{sid}", "spend.signing") == 1


def test_final_approvals_at_once_respect_the_daily_limit(service, vault, rpc, wallet, coins, other_address):
    """The vault's rule allows 5 BTC a day. Four 2 BTC requests approved at the same moment: two fit."""
    # each request holds its coins: a second 1, 2 and 3 BTC lets four 2 BTC requests wait at once
    fund_policy(rpc, wallet, coins.pop(), build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=vault)),
                other_address)
    assert service.call("POST", "/api/sync", "olga").status_code == 200
    by_value = {}
    for coin in service.call("GET", "/api/utxos?policy=vault", "vic").json()["rows"]:
        by_value.setdefault(coin["value"] // 100_000_000, []).append(coin["outpoint"])
    chosen = [[by_value[3][0]], [by_value[3][1]], [by_value[2][0], by_value[1][0]], [by_value[2][1], by_value[1][1]]]
    made = [_request(service, amount="2", coins=c) for c in chosen]
    assert [r.status_code for r in made] == [201] * 4, [r.text for r in made]
    ids = [r.json()["id"] for r in made]
    bodies = [_omars_approval(service, sid) for sid in ids]
    answers = at_once(4, lambda i: service.call("POST", f"/api/spends/{ids[i]}/approve", "omar", json=bodies[i]))
    approved = [a for a in answers if a.status_code == 200 and a.json()["state"] == "signing"]
    refused = [a for a in answers if a.status_code == 400]
    assert len(approved) == 2 and len(refused) == 2, [a.text for a in answers]
    assert all("daily limit" in a.json()["detail"] for a in refused)


def test_one_totp_code_opens_one_session_through_a_real_server(service, db_url, node, tmp_path):
    """Six browsers log in as olga with the same code, at once, against two server processes."""
    import httpx
    from coordinator.auth import LOGIN_CSRF_COOKIE
    from coordinator import accounts
    from custody.people.models import LoginSession, User
    with Served(db_url, node, tmp_path) as served:
        browsers = [httpx.Client(base_url=served.base, timeout=120) for _ in range(6)]
        for b in browsers:
            assert b.get("/login").status_code == 200
        code = accounts.totp(service.secrets["olga"])

        def login(i):
            b = browsers[i]
            return b.post("/login", data={"username": "olga", "password": "correct horse battery staple",
                                          "code": code, "login_csrf": b.cookies.get(LOGIN_CSRF_COOKIE),
                                          "next": "/"}, follow_redirects=False)
        answers = at_once(6, login)
        for b in browsers:
            b.close()
    assert sorted(a.status_code for a in answers) == [303] + [401] * 5, [a.status_code for a in answers]
    with service.sessions() as s:
        olga = s.scalar(select(User).where(User.username == "olga"))
        assert s.scalar(select(func.count()).select_from(LoginSession).where(LoginSession.user_id == olga.id)) == 1
