"""The web API on a real node and database: every route's permission per role, sessions, CSRF, TOTP,
lock-out, tokens, the spend lifecycle over HTTP with its attacks, bad input on every endpoint, health,
metrics and JSON logs."""
from __future__ import annotations

import base64
import json
import logging
import time
from functools import partial

import pytest
from embit.psbt import PSBT
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from coordinator import accounts
from coordinator.app import create_app, node_factory
from coordinator.auth import PERMISSIONS, ROUTE_TABLE, SESSION_COOKIE
from custody.bitcoin.policies import build_policy
from custody.eventlog.models import EventLogEntry
from custody.ledger import registry
from custody.people.models import ApiToken
from custody.store.db import open_database
from regtest.testwallet import TestWallet

from . import officers
from .conftest import fund_policy, hd_keys, mine_coins
from .test_custody_spends import device

PASSWORD = "correct horse battery staple"
ROLES = ("admin", "officer", "signatory", "auditor", "viewer")
PAYEE = TestWallet("api payee")
_seeds = iter(range(5000, 5600, 3))


@pytest.fixture(scope="module")
def coins(rpc, wallet):
    return mine_coins(rpc, wallet, 20)


@pytest.fixture
def service(db_url, node):
    """The app on a fresh database, with one user and one API token per role (plus a second officer)."""
    sessions = open_database(db_url)
    users, tokens, secrets_ = {}, {}, {}
    with sessions.begin() as s:
        for name, role in [("root", "admin"), ("olga", "officer"), ("omar", "officer"), ("sina", "signatory"),
                           ("sam", "signatory"), ("aude", "auditor"), ("vic", "viewer")]:
            user, secret = accounts.create_user(s, name, role, PASSWORD)
            token, _ = accounts.create_token(s, user, "test")
            users[name], tokens[name], secrets_[name] = user, token, secret
    app = create_app(sessions, node_factory(node.url, cookie_file=node.cookie_file), sync_interval=0)
    with TestClient(app) as client:
        yield Service(client, sessions, tokens, secrets_)


class Service:
    def __init__(self, client, sessions, tokens, secrets_):
        self.client, self.sessions, self.tokens, self.secrets = client, sessions, tokens, secrets_

    def as_(self, name: str) -> dict:
        return {"authorization": f"Bearer {self.tokens[name]}"}

    def call(self, method: str, path: str, name: str | None = None, **kw):
        headers = {**(self.as_(name) if name else {}), **kw.pop("headers", {})}
        return self.client.request(method, path, headers=headers, follow_redirects=False, **kw)

    def log_entries(self) -> int:
        with self.sessions() as s:
            return s.scalar(select(func.count()).select_from(EventLogEntry))


ROLE_USER = {"admin": "root", "officer": "olga", "signatory": "sina", "auditor": "aude", "viewer": "vic"}
PATH_VALUES = {"name": "nosuch", "spend_id": "999999", "outpoint": "00" * 32 + ":0", "username": "nosuch",
               "token_id": "999999"}


def _concrete(path: str) -> str:
    for key, value in PATH_VALUES.items():
        path = path.replace("{" + key + "}", value)
    return path


# -- permissions ---------------------------------------------------------------------------------
def _served_routes(routes):
    """Every route the app serves, those of included routers too (FastAPI >= 0.165 keeps them inside)."""
    for r in routes:
        inner = getattr(r, "original_router", None)
        if inner is not None:
            yield from _served_routes(inner.routes)
        else:
            yield r


def test_every_route_has_a_permission_entry(service):
    registered = {(m, r.path) for r in _served_routes(service.client.app.routes) for m in getattr(r, "methods", ()) or ()
                  if m != "HEAD" and not r.path.startswith(("/static", "/docs", "/redoc", "/openapi"))}
    table = {(m, p) for m, p, _ in ROUTE_TABLE}
    assert len(registered) >= 60 and ("POST", "/api/spends/{spend_id}/approve") in registered
    assert registered <= table, f"routes without a permission entry: {sorted(registered - table)}"
    assert all(action in PERMISSIONS for _, _, action in ROUTE_TABLE)
    assert len(ROUTE_TABLE) >= 60


def test_permission_table_role_by_endpoint(service):
    """Each role x each endpoint: refused (403) exactly when the reviewed matrix (docs/permissions.md, not
    PERMISSIONS itself) says so; never a 500."""
    from .test_permission_matrix import MATRIX
    outcomes = []
    for method, path, action in ROUTE_TABLE:
        for role in ROLES:
            response = service.call(method, _concrete(path), ROLE_USER[role], json={} if method != "GET" else None)
            expected_allowed = role in MATRIX[action]
            assert response.status_code < 500, (method, path, role, response.text)
            if expected_allowed:
                assert response.status_code not in (401, 403), (method, path, role, response.text)
            else:
                assert response.status_code == 403, (method, path, role, response.status_code, response.text)
                assert f"the {role} role may not" in response.text
            outcomes.append((action, role, expected_allowed))
    # the table separates duties: admins cannot move money, signatories cannot approve, viewers read
    assert ("spend.request", "admin", False) in outcomes and ("spend.decide", "signatory", False) in outcomes
    assert ("psbt.upload", "officer", False) in outcomes and ("log.read", "viewer", False) in outcomes


def test_anonymous_requests_are_refused(service):
    for method, path, action in ROUTE_TABLE:
        response = service.call(method, _concrete(path), json={} if method != "GET" else None)
        if action == "public":
            assert response.status_code not in (401, 403), (method, path)
        elif path.startswith(("/api/", "/metrics")):
            assert response.status_code == 401, (method, path, response.status_code)
        else:      # console pages send the browser to the login page
            assert response.status_code in (303, 401, 403), (method, path, response.status_code)


def test_unknown_revoked_and_narrowed_tokens(service):
    assert service.call("GET", "/api/me", headers={"authorization": "Bearer cst_nonsense"}).status_code == 401
    # a viewer-scoped token of an officer reads but cannot request
    with service.sessions.begin() as s:
        viewer_token, row = accounts.create_token(s, accounts.get_user(s, "olga"), "dashboards", role="viewer")
    headers = {"authorization": f"Bearer {viewer_token}"}
    assert service.call("GET", "/api/me", headers=headers).json() == {"username": "olga", "role": "viewer", "via": "token"}
    assert service.call("POST", "/api/spends", headers=headers, json={}).status_code == 403
    # an officer's token cannot mint an admin token
    assert service.call("POST", "/api/tokens", "olga", json={"name": "x", "role": "admin"}).status_code == 400
    made = service.call("POST", "/api/tokens", "olga", json={"name": "ci"}).json()
    assert made["role"] == "officer" and made["token"].startswith("cst_")
    assert service.call("DELETE", f"/api/tokens/{made['id']}", "olga").status_code == 204
    assert service.call("GET", "/api/me", headers={"authorization": f"Bearer {made['token']}"}).status_code == 401
    # another user's token cannot be revoked by a non-admin
    assert service.call("DELETE", f"/api/tokens/{row.id}", "sina").status_code == 404
    with service.sessions() as s:                       # only hashes are stored
        hashes = list(s.scalars(select(ApiToken.token_hash)))
        assert made["token"] not in hashes and viewer_token not in hashes and all(len(h) == 64 for h in hashes)


# -- accounts: passwords, TOTP, lock-out, sessions, CSRF ------------------------------------------
def test_totp_matches_rfc_6238_vectors():
    secret = base64.b32encode(b"12345678901234567890").decode()
    for at, code in [(59, "94287082"), (1111111109, "07081804"), (1111111111, "14050471"),
                     (1234567890, "89005924"), (2000000000, "69279037")]:
        assert accounts._hotp(secret, at // 30, digits=8) == code
        assert accounts.totp(secret, at) == code[-6:]


def test_passwords_are_argon2id(service):
    with service.sessions() as s:
        user = accounts.get_user(s, "olga")
        assert user.password_hash.startswith("$argon2id$") and PASSWORD not in user.password_hash
        assert accounts.check_password(user.password_hash, PASSWORD)
        assert not accounts.check_password(user.password_hash, PASSWORD + "x")


def login(service, name: str, password: str = PASSWORD, code: str | None = None):
    page = service.client.get("/login")
    csrf = service.client.cookies.get("custody_login_csrf")
    assert page.status_code == 200 and csrf
    return service.client.post("/login", data={"username": name, "password": password, "code": code or "",
                                               "login_csrf": csrf, "next": "/"}, follow_redirects=False)


def test_officers_need_their_second_factor_once(service):
    assert login(service, "olga").status_code == 401                        # no code
    assert login(service, "olga", code="000000").status_code in (401,)       # wrong code (1 in a million)
    now = time.time()
    code = accounts.totp(service.secrets["olga"], now)
    response = login(service, "olga", code=code)
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie   # plain HTTP here
    service.client.cookies.clear()
    replay = login(service, "olga", code=code)                                 # the same code again
    assert replay.status_code == 401
    assert login(service, "sina").status_code == 303                          # signatories: password only


def test_lockout_after_repeated_failures_and_admin_unlock(service):
    for _ in range(accounts.MAX_FAILED_LOGINS):
        assert login(service, "sam", password="wrong password!").status_code == 401
    locked = login(service, "sam")
    assert locked.status_code == 401 and "locked" in locked.text
    assert service.call("GET", "/api/users", "root").json()[-2]["locked_until"] or True
    listed = {u["username"]: u for u in service.call("GET", "/api/users", "root").json()}
    assert listed["sam"]["locked_until"] is not None and listed["sam"]["failed_logins"] == accounts.MAX_FAILED_LOGINS
    assert service.call("PATCH", "/api/users/sam", "root", json={"unlock": True}).status_code == 200
    assert login(service, "sam").status_code == 303
    with service.sessions() as s:
        entries = list(s.scalars(select(EventLogEntry).where(EventLogEntry.subject == "user:sam")))
    kinds = [e.kind for e in entries]
    # failed logins are logged at most once a minute (the one that locks always), each with its count
    failures = [json.loads(e.data)["failures"] for e in entries if e.kind == "user.login_failed"]
    assert sum(failures) == accounts.MAX_FAILED_LOGINS and len(failures) == 2 and "user.unlocked" in kinds


def test_session_cookie_posts_need_the_csrf_token(service):
    assert login(service, "sina").status_code == 303
    me = service.client.get("/api/me")
    assert me.json()["via"] == "session"
    page = service.client.get("/account")
    csrf = page.text.split('name="csrf-token" content="')[1].split('"')[0]
    refused = service.client.post("/api/tokens", json={"name": "from the browser"})
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    form_refused = service.client.post("/account/tokens", data={"name": "x", "csrf_token": "forged"})
    assert form_refused.status_code == 403
    made = service.client.post("/api/tokens", json={"name": "from the browser"}, headers={"x-csrf-token": csrf})
    assert made.status_code == 201
    assert service.client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    assert service.client.get("/api/me").status_code == 401                  # the session is over


def test_login_form_needs_its_own_csrf_cookie(service):
    response = service.client.post("/login", data={"username": "sina", "password": PASSWORD, "code": "",
                                                   "login_csrf": "guess", "next": "/"}, follow_redirects=False)
    assert response.status_code == 403 and SESSION_COOKIE not in response.headers.get("set-cookie", "")


def test_disabled_users_and_role_changes_end_access(service):
    assert service.call("GET", "/api/me", "vic").status_code == 200
    assert service.call("PATCH", "/api/users/vic", "root", json={"disabled": True}).status_code == 200
    assert service.call("GET", "/api/me", "vic").status_code == 401
    assert service.call("PATCH", "/api/users/root", "root", json={"disabled": True}).status_code == 400
    created = service.call("POST", "/api/users", "root", json={"username": "newbie", "role": "officer"})
    assert created.status_code == 201 and "/enroll/" in created.json()["enrollment_link"]
    assert "totp_secret" not in created.json() and "password" not in created.json()
    dup = service.call("POST", "/api/users", "root", json={"username": "newbie", "role": "viewer"})
    assert dup.status_code == 400 and "already exists" in dup.json()["detail"]


# -- the spend lifecycle over HTTP -------------------------------------------------------------------
@pytest.fixture
def vault(service, rpc, wallet, coins, other_address):
    """An active 2-of-3 policy holding 1, 2 and 3 BTC, with a one-approval rule, synced."""
    seed = next(_seeds)
    spec = build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=seed))
    with service.sessions.begin() as s:
        policy = registry.create_policy(s, "vault", spec)
        registry.set_status(s, policy, "active")
        # set up directly: over the API a rule is a proposal others approve (tests/test_governance.py)
        from custody.spending import spends
        spends.set_approval_rule(s, policy, required_approvals=1, daily_limit=500_000_000)
    fund_policy(rpc, wallet, coins.pop(), spec, other_address)
    assert service.call("POST", "/api/sync", "olga").status_code == 200
    return seed


def _request(service, amount="0.5", **extra):
    body = {"policy": "vault", "to": [{"address": PAYEE.address(), "amount": amount}], "fee_rate": 2, **extra}
    return service.call("POST", "/api/spends", "olga", json=body)


def _approve(service, sid: int, name: str = "omar"):
    """`name` approves with a signature by their own key (enrolled over the API on first use)."""
    return officers.approve_via_api(partial(service.call, name=name), sid, name)


def _signed_by(seed_n: int, psbt_bytes: bytes) -> bytes:
    psbt = PSBT.parse(psbt_bytes)
    psbt.sign_with(device(seed_n))
    return psbt.serialize()


def _metrics(service) -> dict:
    from prometheus_client.parser import text_string_to_metric_families
    response = service.call("GET", "/metrics", "aude")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def _first_signature_offset(psbt_bytes: bytes) -> int:
    signature = next(iter(PSBT.parse(psbt_bytes).inputs[0].partial_sigs.values()))
    return psbt_bytes.index(signature)


def test_spend_lifecycle_over_the_api(service, vault, rpc, other_address):
    preview = service.call("POST", "/api/spends/preview", "olga",
                           json={"policy": "vault", "to": [{"address": PAYEE.address(), "amount": "0.5"}], "fee_rate": 2})
    assert preview.status_code == 200 and preview.json()["fee"] > 0 and len(preview.json()["inputs"]) >= 1
    created = _request(service, memo="invoice 7")
    assert created.status_code == 201, created.text
    spend = created.json()
    assert spend["requester"] == "olga" and spend["amount"] == 50_000_000 and spend["state"] == "requested"
    sid = spend["id"]
    own = _approve(service, sid, "olga")                                                     # own request
    assert own.status_code == 400 and "requester cannot approve" in own.json()["detail"]
    unsigned = PSBT.parse(service.call("GET", f"/api/spends/{sid}/psbt", "sina").content)   # made with the request
    early = service.call("POST", f"/api/spends/{sid}/signatures", "sina",
                         files={"file": ("early.psbt", _signed_by(vault, unsigned.serialize()))})
    assert early.status_code == 400 and "requested" in early.json()["detail"]                # not approved yet
    # an approval is omar's signature over this transaction with his enrolled key: nothing else stands for it
    for name in ("omar", "olga"):
        officers.enroll_via_api(partial(service.call, name=name), name)
    before = service.log_entries()
    message = service.call("POST", f"/api/spends/{sid}/approval-request", "omar").json()["message"]
    for proof, why in (({}, "passkey assertion or a key file"),
                       (officers.signed(message + " ", "omar"), "does not verify for this transaction"),
                       (officers.signed(message, "olga"), "not one of omar's enrolled")):
        forged = service.call("POST", f"/api/spends/{sid}/approve", "omar", json={"proof": proof})
        assert forged.status_code == 400 and why in forged.json()["detail"], forged.text
    assert service.log_entries() == before and service.call("GET", f"/api/spends/{sid}", "vic").json()["approvals"] == []
    approved = _approve(service, sid, "omar")
    assert approved.json()["state"] == "signing" and approved.json()["approvals"][0]["officer"] == "omar"
    assert service.call("POST", f"/api/spends/{sid}/psbt", "omar").status_code == 200       # harmless again
    download = service.call("GET", f"/api/spends/{sid}/psbt", "sina")
    assert download.status_code == 200 and download.content.startswith(b"psbt\xff")
    assert "spend-" in download.headers["content-disposition"]

    # attacks on the upload: garbage, a PSBT of another transaction, a tampered signature
    garbage = service.call("POST", f"/api/spends/{sid}/signatures", "sina", files={"file": ("x.psbt", b"not a psbt")})
    assert garbage.status_code == 400
    signed = _signed_by(vault, download.content)
    tampered = bytearray(signed)
    position = _first_signature_offset(signed) + 10               # inside the first DER signature's r
    tampered[position] ^= 0x01
    before = service.log_entries()
    bad = service.call("POST", f"/api/spends/{sid}/signatures", "sina", files={"file": ("t.psbt", bytes(tampered))})
    assert bad.status_code == 400 and service.log_entries() == before
    assert service.call("GET", f"/api/spends/{sid}", "vic").json()["signed_by"] == []

    first = service.call("POST", f"/api/spends/{sid}/signatures", "sina", files={"file": ("s.psbt", signed)})
    assert first.status_code == 200 and first.json()["new_signers"] == [device(vault).my_fingerprint.hex()]
    again = service.call("POST", f"/api/spends/{sid}/signatures", "sam", files={"file": ("s.psbt", signed)})
    assert again.status_code == 400 and "no new signature" in again.json()["detail"]
    assert service.call("POST", f"/api/spends/{sid}/broadcast", "omar").status_code == 400      # 1 of 2
    second = _signed_by(vault + 1, download.content)
    done = service.call("POST", f"/api/spends/{sid}/signatures", "sam", files={"file": ("s2.psbt", base64.b64encode(second))})
    assert done.status_code == 200 and done.json()["state"] == "signed"
    sent = service.call("POST", f"/api/spends/{sid}/broadcast", "omar")
    assert sent.status_code == 200 and sent.json()["txid"] in rpc.getrawmempool()
    rpc.generatetoaddress(1, other_address)
    tracked = service.call("POST", f"/api/spends/{sid}/track", "omar")
    assert tracked.json()["state"] == "confirmed"
    shown = service.call("GET", f"/api/spends/{sid}", "aude").json()
    assert [e["kind"] for e in shown["timeline"]] == ["spend.requested", "psbt.created", "spend.approved",
                                                      "spend.signing", "psbt.signed", "psbt.signed",
                                                      "spend.broadcasting", "spend.broadcast", "spend.confirmed"]
    actors = {e["kind"]: e["actor"] for e in shown["timeline"]}     # the log names who acted
    assert actors["spend.requested"] == "olga" and actors["spend.approved"] == "omar"
    assert actors["psbt.created"] == "olga" and actors["spend.broadcast"] == "omar"
    assert [(e["actor"], e["data"]["signers"]) for e in shown["timeline"] if e["kind"] == "psbt.signed"] == [
        ("sina", [device(vault).my_fingerprint.hex()]), ("sam", [device(vault + 1).my_fingerprint.hex()])]
    assert service.call("GET", "/api/log/verify", "aude").json()["ok"] is True
    exported = service.call("GET", "/api/log/export", "aude").text
    checked = service.call("POST", "/api/log/verify", "aude", json={"jsonl": exported})
    assert checked.status_code == 200 and checked.json()["entries"] == exported.count("\n")
    edited = exported.replace('"kind":"spend.approved"', '"kind":"spend.rejected"')
    assert edited != exported
    refused = service.call("POST", "/api/log/verify", "aude", json={"jsonl": edited})
    assert refused.status_code == 400 and "verification failed" in refused.json()["detail"]

    metrics = _metrics(service)
    assert metrics[("custody_spends", (("state", "confirmed"),))] == 1
    assert metrics[("custody_node_up", ())] == 1 and metrics[("custody_signatures_outstanding", ())] == 0
    assert any(name == "custody_http_request_duration_seconds_bucket" for name, _ in metrics)
    service.call("POST", "/api/sync", "olga")
    balance = service.call("GET", "/api/balances?policy=vault", "vic").json()[0]
    metrics = _metrics(service)
    assert metrics[("custody_balance_sats", (("policy", "vault"), ("state", "confirmed")))] == balance["confirmed"]
    assert metrics[("custody_ledger_lag_blocks", ())] == 0
    assert balance["total"] == 600_000_000 - 50_000_000 - shown["fee"]


def test_concurrent_requests_never_share_a_coin(service, vault):
    """Eight spends are requested at the same moment (each request makes its transaction and reserves its
    coins); the vault has three coins. Each coin goes to one spend at most, and nobody is refused while a
    coin is still free."""
    import threading
    from custody.ledger.models import Utxo
    from custody.spending.models import Spend
    start, answers = threading.Barrier(8), {}

    def ask(n):
        start.wait()
        answers[n] = _request(service, amount="0.1")
    threads = [threading.Thread(target=ask, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    made = {r.json()["id"]: r.json() for r in answers.values() if r.status_code == 201}
    refused = [r for r in answers.values() if r.status_code != 201]
    with service.sessions() as s:
        psbts = {sid: PSBT.from_string(s.get(Spend, sid).psbt) for sid in made}
        reserved = {f"{u.txid}:{u.vout}": u.reserved_by for u in s.scalars(select(Utxo))}
        assert s.scalar(select(func.count()).select_from(Spend)) == len(made)   # a refused request left nothing
    inputs = [f"{i.txid.hex()}:{i.vout}" for psbt in psbts.values() for i in psbt.inputs]
    assert len(inputs) == len(set(inputs)), f"a coin is in two PSBTs: {sorted(inputs)}"
    assert all(r.status_code == 400 and "no spendable coins" in r.json()["detail"] for r in refused), \
        [r.text for r in refused]
    assert sorted(k for k, v in reserved.items() if v) == sorted(inputs)     # the database agrees
    assert all(reserved[i] == f"spend:{sid}" for sid, p in psbts.items()
               for i in (f"{x.txid.hex()}:{x.vout}" for x in p.inputs))
    assert refused == [] or all(reserved.values()), "a spend was refused while a coin was free"
    assert len(made) >= 1


def test_the_spend_list_costs_the_same_queries_for_3_or_60_spends(service, vault):
    from sqlalchemy import event
    engine = service.sessions.kw["bind"]
    statements = []

    def count(*_):
        statements.append(1)

    def queries_for_listing() -> tuple[int, list]:
        statements.clear()
        event.listen(engine, "before_cursor_execute", count)
        try:
            listed = service.call("GET", "/api/spends", "vic").json()
        finally:
            event.remove(engine, "before_cursor_execute", count)
        return len(statements), listed
    for _ in range(3):
        assert _request(service, amount="0.01").status_code == 201
    few, listed = queries_for_listing()
    assert [r["state"] for r in listed] == ["requested"] * 3 and listed[0]["policy"] == "vault"
    with service.sessions.begin() as s:    # the vault's three coins are held by the first three requests:
        from custody.spending import spends  # these are made without their transactions (no coins to reserve)
        for _ in range(57):
            spends.request_spend(s, registry.get_policy(s, "vault"), "olga", [(PAYEE.address(), 1_000_000)],
                                 fee_rate=2)
    many, listed = queries_for_listing()
    assert len(listed) == 60 and many == few
    page = service.call("GET", f"/api/spends?after={listed[9]['id']}&limit=5", "vic").json()
    assert [r["id"] for r in page] == [r["id"] for r in listed[10:15]]


def test_spend_checks_are_the_clis(service, vault):
    """Refusals of the core reach the API as 400 with the same message, and change nothing."""
    before = service.log_entries()
    cases = [
        ({"to": [{"address": PAYEE.address(), "amount": 0.5}]}, "valid string"),       # floats: never
        ({"to": [{"address": PAYEE.address(), "amount": 1.0}]}, "valid string"),
        ({"to": [{"address": PAYEE.address(), "amount": "0.000000001"}]}, "whole number of satoshis"),
        ({"to": [{"address": PAYEE.address(), "amount": "-1"}]}, "positive whole"),
        ({"to": [{"address": "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq", "amount": "0.1"}]}, "not a regtest address"),
        ({"to": [{"address": "not-an-address", "amount": "0.1"}]}, "not a valid address"),
        ({"fee_rate": 5000}, "outside"),
        ({"policy": "nosuch"}, "no policy"),
        ({"coins": ["ab" * 32 + ":7"]}, "is not a coin of policy"),
    ]
    for change, message in cases:
        body = {"policy": "vault", "to": [{"address": PAYEE.address(), "amount": "0.1"}], "fee_rate": 2, **change}
        response = service.call("POST", "/api/spends", "olga", json=body)
        assert response.status_code in (400, 404, 422), (change, response.text)
        assert message in str(response.json()["detail"]), (change, response.json())
    assert service.log_entries() == before
    # over the daily limit of 5 BTC: refused at approval, nothing recorded
    big = _request(service, amount="5.5").json()["id"]
    officers.enroll_via_api(partial(service.call, name="omar"), "omar")
    before = service.log_entries()
    over = _approve(service, big, "omar")
    assert over.status_code == 400 and "daily limit" in over.json()["detail"]
    assert service.log_entries() == before
    assert service.call("GET", f"/api/spends/{big}", "olga").json()["approvals"] == []


BAD_INPUT = [
    ("POST", "/api/keys", "root", {"key": "xpub-garbage"}, 400),
    ("POST", "/api/keys", "root", {"key": "[deadbeef/48h/0h/0h/2h]xpub6ERApfZwUNrhLCkDtcHTcxd75RbzS1ed54G1LkBUHQVHQKqhMkhgbmJbZRkrgZw4koxb5JaHWkY4ALHY2grBGRjaDMzQLcgJvLJuZZvRcEL"}, 400),
    ("POST", "/api/keys", "root", {}, 422),
    ("POST", "/api/policies", "root", {"name": "p", "threshold": 2, "keys": ["nope"]}, 400),
    ("POST", "/api/policies", "root", {"name": "p", "threshold": 0, "keys": ["nope"]}, 422),
    ("POST", "/api/policies", "root", {"name": "p", "threshold": 2, "keys": ["a"], "extra": 1}, 422),
    ("POST", "/api/policies/import", "root", {"text": "{not json"}, 400),
    ("POST", "/api/policies/import", "root", {"text": "x", "format": "excel"}, 422),
    ("GET", "/api/policies/nosuch", "vic", None, 404),
    ("GET", "/api/policies/vault/export?format=pdf", "aude", None, 422),
    ("POST", "/api/policies/vault/status", "root", {"status": "deleted"}, 422),
    ("PUT", "/api/policies/vault/approval-rule", "root", {"approvals": 0}, 422),
    ("PUT", "/api/policies/vault/approval-rule", "root", {"approvals": 1, "daily": "lots"}, 400),
    ("PUT", "/api/policies/vault/approval-rule", "root", {"approvals": 1, "allow": ["nonsense"]}, 400),
    ("GET", "/api/utxos?sort=colour", "vic", None, 422),
    ("GET", "/api/utxos?limit=100000", "vic", None, 422),
    ("GET", "/api/utxos?state=lost", "vic", None, 422),
    ("GET", "/api/utxos?policy=nosuch", "vic", None, 404),
    ("POST", "/api/utxos/zz:1/freeze", "olga", {"reason": "x"}, 400),
    ("POST", "/api/utxos/" + "ab" * 32 + ":0/freeze", "olga", {"reason": "x"}, 404),
    ("POST", "/api/utxos/" + "ab" * 32 + ":0/freeze", "olga", {"reason": ""}, 422),
    ("POST", "/api/utxos/" + "ab" * 32 + ":0/unfreeze", "olga", None, 404),
    ("POST", "/api/labels", "olga", {"type": "car", "ref": "x", "label": "y"}, 422),
    ("POST", "/api/labels/import", "olga", {"jsonl": '{"type": "tx"}\n'}, 400),
    ("POST", "/api/labels/import", "olga", {"jsonl": "not json\n"}, 400),
    ("POST", "/api/derive", "vic", {"descriptor": "wpkh(garbage)"}, 400),
    ("POST", "/api/derive", "vic", {"descriptor": "wpkh(x)", "start": 5, "end": 1}, 400),
    ("POST", "/api/psbt/check", "vic", {"psbt": "cHNidP8BAAoCAAAA"}, 400),
    ("POST", "/api/psbt/check", "vic", {"psbt": "!!!"}, 400),
    ("GET", "/api/spends/999999", "vic", None, 404),
    ("GET", "/api/spends/abc", "vic", None, 422),
    ("POST", "/api/spends", "olga", {"policy": "vault", "to": []}, 422),
    ("POST", "/api/spends", "olga", {"policy": "vault"}, 422),
    ("POST", "/api/spends/preview", "olga", {"policy": "vault", "to": [{"address": "x", "amount": "1"}], "fee_rate": 2}, 400),
    ("POST", "/api/spends/999999/approval-request", "omar", None, 404),
    ("POST", "/api/spends/999999/approve", "omar", {"proof": {"kind": "ed25519", "public_key": "00" * 32,
                                                               "signature": "00" * 64}}, 404),
    ("POST", "/api/spends/999999/approve", "omar", None, 422),
    ("POST", "/api/me/approval-credentials", "omar", {"public_key": "zz" * 32}, 400),
    ("POST", "/api/me/approval-credentials", "sina", {"public_key": "00" * 32}, 403),
    ("POST", "/api/spends/999999/reject", "omar", None, 404),
    ("POST", "/api/spends/999999/psbt", "omar", None, 404),
    ("GET", "/api/spends/999999/psbt", "sina", None, 404),
    ("POST", "/api/spends/999999/signatures", "sina", None, 422),
    ("POST", "/api/spends/999999/broadcast", "omar", None, 404),
    ("POST", "/api/spends/999999/track", "omar", None, 404),
    ("POST", "/api/spends/999999/bump-fee", "omar", {"fee_rate": 0}, 422),
    ("POST", "/api/spends/999999/bump-fee", "omar", {"fee_rate": 5}, 404),
    ("POST", "/api/spends/999999/cpfp", "omar", {"fee_rate": 5}, 404),
    ("POST", "/api/spends/999999/cancel", "omar", None, 404),
    ("GET", "/api/log?limit=0", "aude", None, 422),
    ("POST", "/api/users", "root", {"username": "x", "role": "god"}, 422),
    ("POST", "/api/users", "root", {"username": "x", "role": "viewer", "password": "set by the admin"}, 422),
    ("POST", "/api/users", "root", {"username": "bad name!", "role": "viewer"}, 400),
    ("PATCH", "/api/users/nosuch", "root", {"unlock": True}, 404),
    ("POST", "/api/tokens", "aude", {"name": ""}, 422),         # (viewers make no tokens: 403 first)
    ("POST", "/api/tokens", "aude", {"name": "x", "expires_in_days": 0}, 422),
    ("DELETE", "/api/tokens/999999", "aude", None, 404),
]


def test_bad_input_gets_a_clear_refusal_and_changes_nothing(service, vault):
    before = service.log_entries()
    for method, path, who, body, status in BAD_INPUT:
        response = service.call(method, path, who, json=body)
        assert response.status_code == status, (method, path, body, response.status_code, response.text)
        detail = response.json()["detail"]
        assert detail and (isinstance(detail, list) or len(detail) > 5), (path, detail)
    assert service.log_entries() == before


def test_malformed_json_and_wrong_content_are_refused(service, vault):
    response = service.call("POST", "/api/spends", "olga", content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 422
    response = service.call("POST", "/api/spends/1/signatures", "sina", content=b"x", headers={"content-type": "text/plain"})
    assert response.status_code == 422


# -- operations -------------------------------------------------------------------------------------
def test_health_reports_the_node_and_database(service, db_url):
    ok = service.call("GET", "/health")
    assert ok.status_code == 200 and ok.json()["node"]["ok"] and ok.json()["database"]["ok"]
    sessions = open_database(db_url)
    down = create_app(sessions, node_factory("http://127.0.0.1:9", user="u", password="p"), sync_interval=0)
    with TestClient(down) as client:
        response = client.get("/health")
        assert response.status_code == 503 and response.json()["node"]["ok"] is False
        assert "127.0.0.1:9" in response.json()["node"]["error"]
        with sessions.begin() as s:
            user, _ = accounts.create_user(s, "ops", "officer", PASSWORD)
            token, _ = accounts.create_token(s, user, "t")
        sync = client.post("/api/sync", headers={"authorization": f"Bearer {token}"})
        assert sync.status_code == 503 and "node is not available" in sync.json()["detail"]


def test_requests_are_logged_as_json(service, caplog):
    from coordinator.jsonlog import JsonFormatter
    with caplog.at_level(logging.INFO, logger="coordinator.http"):
        service.call("GET", "/api/policies", "vic")
    record = next(r for r in caplog.records if r.name == "coordinator.http")
    entry = json.loads(JsonFormatter().format(record))
    assert entry["route"] == "/api/policies" and entry["status"] == 200 and entry["user"] == "vic"
    assert entry["duration_ms"] >= 0 and entry["method"] == "GET"


def test_security_headers_and_openapi(service):
    response = service.call("GET", "/login")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    schema = service.call("GET", "/openapi.json").json()
    assert "/api/spends/{spend_id}/approve" in schema["paths"] and "/login" not in schema["paths"]
    assert service.call("GET", "/docs").status_code == 200
