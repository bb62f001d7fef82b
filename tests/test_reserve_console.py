"""Proof of reserves in the coordinator, on the embedded node: officers start runs with the auditor's nonce
(API and console form), signatories see the message and upload signatures, officers finalize and self-check,
auditors list runs and download the package (which verifies with `audit.verify`) and the signed reports;
refusals are 4xx with a reason and write nothing; re-proof schedules with the overdue ones; the metrics.
Last, the Reserves page in headless Chromium, as test_console_e2e drives it."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from embit import bip32
from embit.networks import NETWORKS
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from audit import report, verify
from coordinator import accounts
from coordinator.app import create_app, node_factory
from custody.bitcoin.policies import build_policy
from custody.ledger import registry, service as custody_service
from custody.ledger.sync import Syncer
from custody.reserves import proofs as reserves, service as reserve_service
from custody.reserves.models import ReserveRun
from custody.store.db import open_database
from regtest.launcher import free_port

from . import test_console_e2e as e2e
from .conftest import fund_policy, hd_keys, mine_coins
from .support import stop, wait_healthy
from .test_api import _metrics, Service
from .test_console_pages import Console, PASSWORD
from .test_reserves import sign

browser = e2e.browser                # the headless Chromium fixture
SEED = 7900                          # hd_keys(3, seed_base=SEED): devices "test device 7900" … 7902
NONCE = "auditor-nonce-5e2b71"
AUDIT = "2026-Q4"
CUSTODIAN = "Acme Treasury"


def device(n: int) -> bip32.HDKey:
    return bip32.HDKey.from_seed(hashlib.sha256(f"test device {n}".encode()).digest(),
                                 version=NETWORKS["regtest"]["xprv"])


@pytest.fixture(scope="module")
def spec(rpc, wallet, other_address):
    """A 2-of-3 policy holding 1, 2 and 3 BTC on chain (every test's ledger finds them on its first sync)."""
    spec = build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=SEED))
    [coin] = mine_coins(rpc, wallet, 1)
    fund_policy(rpc, wallet, coin, spec, other_address)
    return spec


def prepare(sessions, spec, people) -> tuple[dict, dict]:
    """Users (with an API token each) and the active policy "vault"; returns (tokens, TOTP secrets)."""
    tokens, secrets_ = {}, {}
    with sessions.begin() as s:
        for name, role in people:
            user, secrets_[name] = accounts.create_user(s, name, role, PASSWORD)
            tokens[name] = accounts.create_token(s, user, "test")[0]
        registry.set_status(s, registry.create_policy(s, "vault", spec), "active")
    return tokens, secrets_


@pytest.fixture
def app(db_url, node, spec):
    sessions = open_database(db_url)
    tokens, secrets_ = prepare(sessions, spec, [("root", "admin"), ("olga", "officer"), ("sina", "signatory"),
                                                ("sam", "signatory"), ("aude", "auditor"), ("vic", "viewer")])
    application = create_app(sessions, node_factory(node.url, cookie_file=node.cookie_file), sync_interval=0)
    with TestClient(application) as client:
        custody_service.sync(sessions, application.state.node())
        yield Service(client, sessions, tokens, secrets_), Console(client, secrets_)


def runs_in(svc: Service) -> int:
    with svc.sessions() as s:
        return s.scalar(select(func.count()).select_from(ReserveRun))


def start_run(svc: Service, nonce: str = NONCE) -> dict:
    created = svc.call("POST", "/api/reserves", "olga", json={"audit": AUDIT, "nonce": nonce, "custodian": CUSTODIAN})
    assert created.status_code == 201, created.text
    return created.json()


def signed_psbt(svc: Service, run_id: int, n: int) -> bytes:
    """The run's PSBT as a signatory downloads it, signed by test device n."""
    psbt = svc.call("GET", f"/api/reserves/{run_id}/psbt?encoding=base64", "sina")
    assert psbt.status_code == 200, psbt.text
    return sign(psbt.text, [device(n)]).encode()


def upload(svc: Service, run_id: int, data: bytes, who: str = "sina"):
    return svc.call("POST", f"/api/reserves/{run_id}/signatures", who, files={"file": ("signed.psbt", data)})


# -- the API -----------------------------------------------------------------------------------------------
def test_a_run_over_the_api_from_the_challenge_to_the_auditors_downloads(app, rpc):
    svc, _ = app
    assert svc.call("POST", "/api/reserves", "aude", json={"audit": AUDIT, "nonce": NONCE,
                                                            "custodian": CUSTODIAN}).status_code == 403
    assert svc.call("POST", "/api/reserve-schedules", "aude", json={"audit": AUDIT, "every_days": 90}).status_code == 403
    assert svc.call("GET", "/api/reserves", "vic").status_code == 403
    run = start_run(svc)
    rid = run["id"]
    assert run["state"] == "signing" and run["coins"] == 3 and run["total"] == 600_000_000
    assert run["created_by"] == "olga" and f"nonce: {NONCE}" in run["message"]
    assert svc.call("GET", f"/api/reserves/{rid}", "sina").json()["message"] == run["message"]   # what they sign
    binary = svc.call("GET", f"/api/reserves/{rid}/psbt", "sam")
    assert binary.content.startswith(b"psbt\xff") and f"reserves-{rid}.psbt" in binary.headers["content-disposition"]
    assert svc.call("GET", f"/api/reserves/{rid}/psbt", "aude").status_code == 403

    first = upload(svc, rid, signed_psbt(svc, rid, SEED))
    assert first.status_code == 200 and device(SEED).my_fingerprint.hex() in first.json()["signers"]
    before = svc.log_entries()
    early = svc.call("POST", f"/api/reserves/{rid}/finalize", "olga")
    assert early.status_code == 400 and "not fully signed" in early.json()["detail"] and svc.log_entries() == before
    other = start_run(svc, nonce="another-nonce-0001")             # a PSBT of another transaction
    before = svc.log_entries()
    foreign = upload(svc, rid, signed_psbt(svc, other["id"], SEED + 1), "sam")
    assert foreign.status_code == 400 and foreign.json()["detail"]
    assert svc.log_entries() == before and list(svc.call("GET", f"/api/reserves/{rid}", "aude").json()["signers"]) == [
        device(SEED).my_fingerprint.hex()]
    assert upload(svc, rid, signed_psbt(svc, rid, SEED + 1), "sam").status_code == 200
    assert svc.call("GET", f"/api/reserves/{rid}/package", "aude").status_code == 400      # not finalized yet

    done = svc.call("POST", f"/api/reserves/{rid}/finalize", "olga")
    assert done.status_code == 200 and done.json()["state"] == "complete" and len(done.json()["txid"]) == 64
    unchecked = svc.call("GET", f"/api/reserves/{rid}/report", "aude")
    assert unchecked.status_code == 400 and "not been verified" in unchecked.json()["detail"]
    checked = svc.call("POST", f"/api/reserves/{rid}/check", "olga")
    assert checked.status_code == 200 and checked.json()["report"]["verdict"] == "valid"

    listed = svc.call("GET", "/api/reserves", "aude").json()
    assert [(r["id"], r["state"], r["verdict"]) for r in listed] == [(other["id"], "signing", None),
                                                                     (rid, "complete", "valid")]
    package = svc.call("GET", f"/api/reserves/{rid}/package", "aude")
    assert package.headers["content-type"] == "application/json"
    assert package.headers["content-disposition"] == (f'attachment; filename="reserves-{rid}-package.json"; '
                                                      f"filename*=UTF-8''reserves-{rid}-package.json")
    result = verify.verify(verify.load_package(package.text), rpc, nonce=NONCE, audit=AUDIT, min_depth=1)
    assert result.verdict == "valid" and result.total == 600_000_000
    signed = svc.call("GET", f"/api/reserves/{rid}/report", "aude")
    assert report.check(signed.json())["package_sha256"] == hashlib.sha256(package.content).hexdigest()
    html = svc.call("GET", f"/api/reserves/{rid}/report.html", "aude")
    assert html.headers["content-type"].startswith("text/html") and "custodian self-check" in html.text
    assert "unsafe-inline" in html.headers["content-security-policy"]          # its own styles, no scripts

    metrics = _metrics(svc)
    assert metrics[("custody_reserves_proven_sats", (("audit", AUDIT),))] == 600_000_000
    assert metrics[("custody_reserves_coins", (("audit", AUDIT),))] == 3
    assert metrics[("custody_reserves_height", (("audit", AUDIT),))] == run["height"]
    assert metrics[("custody_reserves_verdict", (("audit", AUDIT), ("verdict", "valid")))] == 1
    assert metrics[("custody_reserves_verdict", (("audit", AUDIT), ("verdict", "invalid")))] == 0
    assert metrics[("custody_reserves_schedule_overdue", ())] == 0


def test_bad_input_is_refused_with_a_reason_and_nothing_written(app):
    svc, _ = app
    before = svc.log_entries()
    challenge = {"audit": AUDIT, "nonce": NONCE, "custodian": CUSTODIAN}
    bad_nonce = svc.call("POST", "/api/reserves", "olga", json={**challenge, "nonce": "short"})
    assert bad_nonce.status_code == 400 and "nonce" in bad_nonce.json()["detail"]
    unknown = svc.call("POST", "/api/reserves", "olga", json={**challenge, "policies": ["nosuch"]})
    assert unknown.status_code == 404 and "nosuch" in unknown.json()["detail"]
    for extra in ({"kind": "bip999"}, {"height": -1}, {"surprise": 1}):
        assert svc.call("POST", "/api/reserves", "olga", json={**challenge, **extra}).status_code == 422
    far = svc.call("POST", "/api/reserves", "olga", json={**challenge, "height": 999_999})
    assert far.status_code == 400 and "not on the node's chain" in far.json()["detail"]
    missing = svc.call("GET", "/api/reserves/999", "aude")
    assert missing.status_code == 404 and "no proof-of-reserves run #999" in missing.json()["detail"]
    assert svc.call("POST", "/api/reserves/999/devices/RS-1/sign", "sina").status_code == 404
    assert svc.call("POST", "/api/reserve-schedules", "olga", json={"audit": AUDIT, "every_days": 0}).status_code == 422
    assert svc.call("POST", "/api/reserve-schedules", "olga",
                    json={"audit": AUDIT, "every_days": 30, "policies": ["nosuch"]}).status_code == 404
    assert runs_in(svc) == 0 and svc.log_entries() == before
    assert svc.call("GET", "/api/reserve-schedules", "aude").json() == []


# -- the console -----------------------------------------------------------------------------------------------
def test_the_reserves_page_for_each_role(app):
    svc, console = app
    console.login("olga")
    page = console.client.get("/reserves")
    assert 'href="/reserves"' in page.text and "Start run" in page.text and "No proof-of-reserves runs" in page.text
    bad = console.post("/reserves/new", {"audit": AUDIT, "nonce": "short", "custodian": CUSTODIAN, "height": ""})
    assert bad.status_code == 400 and "nonce" in bad.text and runs_in(svc) == 0
    made = console.post("/reserves/new", {"audit": AUDIT, "nonce": NONCE, "custodian": CUSTODIAN, "height": "",
                                          "policies": "vault", "kind": "bip322"})
    assert made.status_code == 303 and "flash=run+%231+started" in made.headers["location"]
    page = console.client.get(made.headers["location"])
    assert "run #1 started: 3 coins" in page.text and 'id="message-1"' in page.text and NONCE in page.text
    assert ">Finalize<" in page.text and "6.00" in page.text

    console.login("sina")                         # the signatory sees the message and uploads from the page
    page = console.client.get("/reserves")
    assert NONCE in page.text and "Upload signatures" in page.text and ">Finalize<" not in page.text
    assert 'href="/api/reserves/1/psbt"' in page.text
    for n in (SEED, SEED + 2):
        sent = console.post("/reserves/1/signatures", files={"file": ("s.psbt", signed_psbt(svc, 1, n))})
        assert sent.status_code == 303 and device(n).my_fingerprint.hex() in sent.headers["location"]
    assert console.post("/reserves/1/finalize").status_code == 403

    console.login("olga", step=1)                 # a TOTP code is taken once: the next step's
    assert console.post("/reserves/1/finalize").status_code == 303
    checked = console.post("/reserves/1/check")
    assert checked.status_code == 303 and "valid" in checked.headers["location"]
    assert console.post("/reserves/schedules", {"audit": "2027-Q1", "every_days": "90"}).status_code == 303
    with svc.sessions.begin() as s:               # one re-proof already past its due date
        reserves.schedule(s, AUDIT, every_days=30, policies=None, actor="olga",
                          first_due=datetime.now(timezone.utc) - timedelta(days=2))

    console.login("aude")
    page = console.client.get("/reserves")
    row = page.text[page.text.index('id="run-1"'):page.text.index("</tr>", page.text.index('id="run-1"'))]
    assert ">valid<" in row and "complete" in row and "6.00" in row
    for link in ("/api/reserves/1/package", "/api/reserves/1/report", "/api/reserves/1/report.html"):
        assert f'href="{link}"' in row and console.client.get(link).status_code == 200
    assert "Start run" not in page.text and "Schedule a re-proof" not in page.text and 'id="message-1"' not in page.text
    assert page.text.count(">overdue<") == 1 and "2027-Q1" in page.text
    assert console.post("/reserves/new", {"audit": AUDIT, "nonce": NONCE, "custodian": CUSTODIAN}).status_code == 403
    assert console.post("/reserves/schedules", {"audit": AUDIT, "every_days": "7"}).status_code == 403
    schedules = svc.call("GET", "/api/reserve-schedules", "aude").json()
    assert sorted((s["audit"], s["overdue"]) for s in schedules) == [("2026-Q4", True), ("2027-Q1", False)]
    assert _metrics(svc)[("custody_reserves_schedule_overdue", ())] == 1
    console.login("vic")
    assert 'href="/reserves"' not in console.client.get("/").text and console.client.get("/reserves").status_code == 403


# -- in the browser --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(node, rpc, spec, tmp_path_factory):
    """`custody serve` (its own process, as in test_console_e2e) on a database holding a checked run."""
    home = tmp_path_factory.mktemp("reserves-e2e")
    db = f"sqlite:///{home / 'c.db'}"
    sessions = open_database(db)
    prepare(sessions, spec, [("audrey", "auditor")])
    Syncer(sessions, rpc).sync_once()
    with sessions.begin() as s:
        run = reserve_service.create(s, rpc, nonce=NONCE, audit=AUDIT, custodian=CUSTODIAN, policies=None,
                                     height=None, kind="bip322", actor="olga")
        unsigned = reserve_service.psbt(s, run["id"])
        reserve_service.sign(s, run["id"], sign(unsigned, [device(SEED)]), actor="sina")
        reserve_service.sign(s, run["id"], sign(unsigned, [device(SEED + 1)]), actor="sam")
        reserve_service.finalize(s, run["id"], actor="olga")
    with sessions.begin() as s:
        reserve_service.self_check(s, rpc, run["id"], actor="olga")
    sessions.kw["bind"].dispose()
    port = free_port()
    custody = Path(sys.executable).with_name("custody")
    command = ([str(custody)] if custody.exists() else [sys.executable, "-m", "coordinator.cli.main"]) + [
        "--node-cookie", str(node.cookie_file), "--network", "regtest", "serve", "--db", db, "--node", node.url,
        "--port", str(port), "--sync-interval", "0"]
    with open(home / "serve.log", "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        wait_healthy(f"http://127.0.0.1:{port}", server, (home / "serve.log",))
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(server)


@pytest.mark.skipif(not os.path.exists(e2e.CHROMIUM) and not e2e.REQUIRED, reason=f"no Chromium at {e2e.CHROMIUM}")
def test_an_auditor_sees_the_runs_in_the_browser(browser, served):
    from playwright.sync_api import expect
    context = browser.new_context(base_url=served, accept_downloads=True)
    page = context.new_page()
    e2e.login(page, "audrey", PASSWORD)
    page.locator("header nav").get_by_role("link", name="Reserves").click()
    runs = page.locator("#reserve-runs")
    expect(runs).to_contain_text(AUDIT)
    expect(runs.locator(".verdict")).to_have_text("valid")
    with page.expect_download() as download:
        runs.get_by_role("link", name="package").click()
    assert download.value.suggested_filename == "reserves-1-package.json"
    assert json.loads(Path(download.value.path()).read_text())["nonce"] == NONCE
    context.close()
