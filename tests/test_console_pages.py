"""The console's pages and forms, as a browser without JavaScript uses them: log in, read each page,
post each form with the session's CSRF token, and see refusals explained on the page."""
from __future__ import annotations

import html
import re

import pytest
from fastapi.testclient import TestClient

from coordinator import accounts
from coordinator.app import create_app, node_factory
from custody.bitcoin.policies import build_policy
from custody.ledger import registry
from custody.store.db import open_database
from regtest.testwallet import TestWallet

from . import officers
from .conftest import fund_policy, hd_keys, mine_coins

PASSWORD = "correct horse battery staple"
PAYEE = TestWallet("pages payee")
_seeds = iter(range(7400, 7700, 3))


@pytest.fixture(scope="module")
def coins(rpc, wallet):
    return mine_coins(rpc, wallet, 10)


@pytest.fixture
def console(db_url, node, rpc, wallet, coins, other_address):
    sessions = open_database(db_url)
    secrets_ = {}
    with sessions.begin() as s:
        for name, role in [("root", "admin"), ("olga", "officer"), ("omar", "officer"), ("sina", "signatory"),
                           ("aude", "auditor"), ("vic", "viewer")]:
            secrets_[name] = accounts.create_user(s, name, role, PASSWORD)[1]
        spec = build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=next(_seeds)))
        policy = registry.create_policy(s, "vault", spec)
        registry.set_status(s, policy, "active")
        from custody.spending import spends
        spends.set_approval_rule(s, policy, required_approvals=1)
    fund_policy(rpc, wallet, coins.pop(), spec, other_address)
    app = create_app(sessions, node_factory(node.url, cookie_file=node.cookie_file), sync_interval=0)
    with TestClient(app) as client:
        from custody.ledger import service
        service.sync(sessions, app.state.node())
        yield Console(client, secrets_)


class Console:
    def __init__(self, client, secrets_):
        self.client, self.secrets = client, secrets_
        self.csrf = None

    def login(self, name: str, step: int = 0):
        self.client.cookies.clear()
        self.client.get("/login")
        code = accounts.totp(self.secrets[name], step_offset=step) if self.secrets[name] else ""
        response = self.client.post("/login", data={"username": name, "password": PASSWORD, "code": code,
                                                    "login_csrf": self.client.cookies.get("custody_login_csrf"),
                                                    "next": "/"}, follow_redirects=False)
        assert response.status_code == 303, response.text
        page = self.client.get("/")
        self.csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
        return page

    def api(self, method: str, path: str, **kw):
        """An API call from the page's script: the session's cookie and its CSRF token in a header."""
        return self.client.request(method, path, headers={"x-csrf-token": self.csrf}, follow_redirects=False, **kw)

    def post(self, path: str, data: dict | None = None, **kw):
        return self.client.post(path, data={**(data or {}), "csrf_token": self.csrf}, follow_redirects=False, **kw)


def test_officer_requests_previews_and_a_second_officer_approves(console):
    dashboard = console.login("olga")
    assert "vault" in dashboard.text and "6.00" in dashboard.text and "<svg" in dashboard.text
    assert 'href="/admin/users"' not in dashboard.text                # officers see no admin menu
    form = {"policy": "vault", "address": PAYEE.address(), "amount": "0.25", "fee_rate": "2", "memo": "rent"}
    preview = console.post("/spends/new", {**form, "action": "preview"})
    assert preview.status_code == 200 and 'id="fee-preview"' in preview.text and " sat at 2.0 sat/vB" in preview.text
    bad = console.post("/spends/new", {**form, "amount": "0.25000000001", "action": "request"})
    assert bad.status_code == 400 and "whole number of satoshis" in bad.text and PAYEE.address() in bad.text
    made = console.post("/spends/new", {**form, "action": "request"})
    assert made.status_code == 303 and re.match(r"/spends/\d+\?flash=", made.headers["location"])
    spend_url = made.headers["location"].split("?")[0]
    page = console.client.get(spend_url)
    assert "requested" in page.text and "rent" in page.text and "spend.requested" in page.text
    assert 'id="approval"' not in page.text                               # not on one's own request

    console.login("omar")
    queue = console.client.get("/approvals")
    assert spend_url in queue.text and f'href="{spend_url}#approval">Review and approve<' in queue.text
    page = console.client.get(spend_url)
    shown = html.unescape(re.search(r'id="approval-message">([^<]*)</pre>', page.text).group(1))
    # approving is a signature by omar's own key: the page's script does over the API what follows
    sid = int(spend_url.rsplit("/", 1)[1])
    officers.enroll_via_api(console.api, "omar")
    asked = console.api("POST", f"/api/spends/{sid}/approval-request").json()
    assert asked["message"] == shown and PAYEE.address() in shown and asked["options"] is None   # no passkey
    proof = officers.signed(shown, "omar")
    forged = console.client.post(f"/api/spends/{sid}/approve", json={"proof": proof}, headers={"x-csrf-token": "nope"})
    assert forged.status_code == 403 and "CSRF" in forged.text
    approved = console.api("POST", f"/api/spends/{sid}/approve", json={"proof": proof})
    assert approved.status_code == 200 and approved.json()["state"] == "signing"     # no delay: to the signers
    page = console.client.get(spend_url)
    assert 'id="approval"' not in page.text and "omar" in page.text
    timeline = console.client.get(spend_url + "/timeline")
    assert 'data-state="signing"' in timeline.text and "0 of 2" in timeline.text and "psbt.created" in timeline.text
    assert "spend.signing" in timeline.text

    console.login("sina")
    signing = console.client.get(spend_url)
    assert "Download PSBT" in signing.text and 'name="file"' in signing.text and "data:image/svg+xml" in signing.text
    assert 'id="approval"' not in signing.text and "Broadcast" not in signing.text
    refused = console.api("POST", f"/api/spends/{sid}/approve", json={"proof": proof})
    assert refused.status_code == 403 and "signatory role may not" in refused.text
    garbage = console.post(spend_url + "/signatures", files={"file": ("x.psbt", b"garbage")})
    assert garbage.status_code == 400 and "PSBT" in garbage.text


def test_coins_page_filters_sorts_labels_and_freezes(console):
    console.login("olga")
    page = console.client.get("/utxos?sort=value&order=desc")
    assert "3 coins" in page.text and page.text.index("3.00") < page.text.index("2.00") < page.text.index("1.00")
    outpoint = re.search(r'name="outpoint" value="([0-9a-f]{64}:\d+)"', page.text).group(1)
    assert console.post("/labels", {"ref": outpoint, "text": "Board reserve", "back_to": "/utxos"}).status_code == 303
    assert console.post("/utxos/freeze", {"outpoint": outpoint, "reason": "audit hold"}).status_code == 303
    frozen = console.client.get("/utxos?state=frozen")
    assert "1 coins" in frozen.text and "audit hold" in frozen.text and "Board reserve" in frozen.text
    assert "1 coin(s) are frozen" in console.client.get("/").text
    found = console.client.get("/utxos?q=board")
    assert "1 coins" in found.text and outpoint[:12] in found.text
    again = console.post("/utxos/freeze", {"outpoint": outpoint, "reason": "twice"})
    assert again.status_code == 400 and "already" not in again.text.lower() or again.status_code == 303
    assert console.post("/utxos/unfreeze", {"outpoint": outpoint}).status_code == 303
    assert console.client.get("/utxos?state=frozen").text.count("0 coins") == 1


def test_pages_per_role(console):
    console.login("vic")
    for path in ("/", "/utxos", "/history", "/spends", "/policies", "/policies/vault", "/account"):
        assert console.client.get(path).status_code == 200, path
    for path in ("/log", "/approvals", "/spends/new", "/admin/users"):
        assert console.client.get(path).status_code == 403, path
    assert 'href="/api/policies/vault/export' not in console.client.get("/policies/vault").text

    console.login("aude")
    log = console.client.get("/log")
    assert "Integrity verified" in log.text and "user.login" in log.text
    policy = console.client.get("/policies/vault")
    for fmt in ("core", "bsms", "coldcard", "sparrow", "specter", "caravan"):
        assert f"/api/policies/vault/export?format={fmt}" in policy.text
        assert console.client.get(f"/api/policies/vault/export?format={fmt}").status_code == 200

    console.login("root")
    users = console.client.get("/admin/users")
    assert "olga" in users.text and "Add a user" in users.text
    added = console.post("/admin/users", {"username": "nina", "role": "officer"})
    assert added.status_code == 200 and 'id="enrollment-link"' in added.text and "waiting for enrollment" in added.text


def test_logging_in_wrongly_and_out(console):
    console.client.get("/login")
    wrong = console.client.post("/login", data={"username": "olga", "password": PASSWORD, "code": "123456",
                                                "login_csrf": console.client.cookies.get("custody_login_csrf"),
                                                "next": "https://evil.example/"}, follow_redirects=False)
    assert wrong.status_code == 401 and "wrong username, password or code" in wrong.text
    assert console.client.get("/", follow_redirects=False).headers["location"] == "/login?next=/"
    console.client.get("/login")
    ok = console.client.post("/login", data={"username": "sina", "password": PASSWORD, "code": "",
                                             "login_csrf": console.client.cookies.get("custody_login_csrf"),
                                             "next": "https://evil.example/"}, follow_redirects=False)
    assert ok.headers["location"] == "/"                               # never off-site after a login


def test_devices_page_forms_for_the_admin(console):
    from custody_signer import protocol
    from custody_signer.device import MODEL, factory_image
    console.login("root")
    issued = console.post("/devices/issue", {"serial": "RS-0001", "model": MODEL, "signatory": "sina"})
    assert issued.status_code == 303
    page = console.client.get("/devices")
    assert 'data-serial="RS-0001"' in page.text and "issued" in page.text
    keys = " ".join(sorted(protocol.test_release_public_keys(3)))
    assert console.post("/firmware/trust", {"model": MODEL, "keys": keys, "threshold": "2",
                                            "test_keys": "true"}).status_code == 303
    image = factory_image("1.2.0", epoch=2)
    tampered = image[:-3] + b"XX\n"
    refused = console.post("/firmware/add", files={"image": ("fw.bin", tampered)})
    assert refused.status_code == 400 and "does not match the signed hash" in refused.text
    assert console.post("/firmware/add", files={"image": ("fw.bin", image)}).status_code == 303
    assert console.post("/firmware/minimum", {"model": MODEL, "version": "1.2.0"}).status_code == 303
    page = console.client.get("/devices")
    assert "1.2.0" in page.text and "No releases in the registry" not in page.text
    unknown = console.post("/ceremonies/new", {"policy": "v2", "threshold": "2", "devices": "RS-0001 RS-9999"})
    assert unknown.status_code == 404 and "no device RS-9999" in unknown.text
    console.login("sina")                          # a signatory sees the page but may not issue devices
    assert console.client.get("/devices").status_code == 200
    assert console.post("/devices/issue", {"serial": "RS-0002", "model": MODEL, "signatory": "sina"}).status_code == 403
