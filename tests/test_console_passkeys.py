"""Approvals the devices verify, end to end in a real browser (issue 17): Chromium's virtual authenticator
(CDP `WebAuthn.addVirtualAuthenticator`) stands in for each officer's passkey.

Two officers enrol passkeys in the console; the two signatories install on their devices a policy that
names those passkeys and asks for both approvals. A third officer's request is approved twice in the
console (each approval a passkey assertion over the spend's unsigned transaction), each signatory has
their own device check the approvals and sign through HWI, the transaction is broadcast and confirmed.
The devices' own decision logs name the two passkeys as the approvals that counted.

One flow, run once, on SQLite, against `custody serve` as its own process on http://localhost (a
passkey's relying party must be a host name, not an IP address).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from embit.script import address_to_scriptpubkey

from coordinator import accounts
from custody.devices import inventory as devices
from custody.ledger import registry
from custody.spending import spends
from custody.store.db import open_database
from custody_signer.device import MODEL
from regtest.launcher import free_port
from regtest.testwallet import TestWallet

from .conftest import mine_coins
from .signers import install_policy, run_ceremony, simulated_signers
from .support import READY_TIMEOUT, stop, wait_healthy
from .test_console_e2e import CHROMIUM, CHROMIUM_ARGS, Codes, login, logout, REQUIRED, shot

PASSWORD = "correct horse battery staple"
PAYEE = TestWallet("passkey payee")
HOLDERS = ("carol", "dave")
LIVE_TIMEOUT = int(READY_TIMEOUT * 1000)

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM) and not REQUIRED,
                                reason=f"no Chromium at {CHROMIUM} (install Debian's chromium, or set "
                                       "CUSTODY_REQUIRE_BROWSER to make this a failure)")


@pytest.fixture(scope="module")
def signers(tmp_path_factory):
    """A simulated reference signer for each holder, reached only through HWI."""
    with simulated_signers(tmp_path_factory.mktemp("passkey-signers"), HOLDERS) as found:
        yield found


@pytest.fixture(scope="module")
def served(signers, node, rpc, wallet, other_address, tmp_path_factory):
    """`custody serve` with a 2-of-2 policy on the two devices (ceremony done, holders confirmed), funded,
    a two-approval rule, and the people. Yields (base URL, {username: TOTP secret})."""
    home = tmp_path_factory.mktemp("passkeys")
    db = f"sqlite:///{home / 'c.db'}"
    sessions = open_database(db)
    secrets_ = {}
    with sessions.begin() as s:
        for name, role in [("ray", "officer"), ("olga", "officer"), ("omar", "officer"),
                           ("carol", "signatory"), ("dave", "signatory")]:
            secrets_[name] = accounts.create_user(s, name, role, PASSWORD)[1]
        for holder in HOLDERS:
            devices.connect(s, devices.issue(s, model=MODEL, serial=signers[holder]["serial"], to=holder, actor="root"),
                            "regtest", actor="root")
    run_ceremony(sessions, "treasury", 2, signers, {h: h for h in HOLDERS})
    with sessions.begin() as s:
        policy = registry.get_policy(s, "treasury")
        assert policy.status == "active"
        spends.set_approval_rule(s, policy, required_approvals=2)
        address = registry.receive_address(s, policy)
    [coin] = mine_coins(rpc, wallet, 1)
    rpc.sendrawtransaction(wallet.sign([coin], [(address_to_scriptpubkey(address).data, 5 * 100_000_000),
                                                (wallet.wpkh, coin.value - 5 * 100_000_000 - 2_000)]))
    rpc.generatetoaddress(1, other_address)
    sessions.kw["bind"].dispose()

    port = free_port()
    base = f"http://localhost:{port}"
    log_path = home / "serve.log"
    custody = Path(sys.executable).with_name("custody")
    command = ([str(custody)] if custody.exists() else [sys.executable, "-m", "coordinator.cli.main"]) + [
        "--node-cookie", str(node.cookie_file), "--network", "regtest", "serve", "--db", db, "--node", node.url,
        "--port", str(port), "--sync-interval", "0.5"]
    env = {**os.environ, "CUSTODY_HOME": os.environ["CUSTODY_HOME"], "CUSTODY_RP_ID": "localhost",
           "CUSTODY_SIGNER_DISCOVERY": os.environ["CUSTODY_SIGNER_DISCOVERY"]}
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_healthy(base, server, (log_path,))
        yield base, secrets_
    finally:
        stop(server)


@pytest.fixture(scope="module")
def browser():
    if REQUIRED:
        from playwright.sync_api import sync_playwright
    else:
        sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def code(served):
    """TOTP codes for the whole module: each 30-second step is taken once per user."""
    return Codes(served[1])


def person(browser, base: str):
    """A browser context of one person, with a passkey authenticator of their own (a platform
    authenticator that verifies its user, as a laptop's fingerprint reader does)."""
    context = browser.new_context(base_url=base, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    authenticator = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True, "hasUserVerification": True,
        "isUserVerified": True, "automaticPresenceSimulation": True}})["authenticatorId"]
    return context, page, cdp, authenticator


def install_device_policy(state: Path, approvers: dict) -> None:
    """The holder approves, on the device itself, a policy that counts only these approvers' keys."""
    install_policy(state, {"approvers": approvers, "rules": [{"wallet": "treasury", "max_amount": 5 * 100_000_000,
                                                              "min_approvers": 2}]})


def test_two_passkey_approvals_that_the_devices_verify(browser, served, code, signers, rpc, other_address):
    from playwright.sync_api import expect
    base, _ = served
    home = re.compile(re.escape(base) + r"/$")

    # olga and omar each enrol a passkey on the Approvers page
    officers = {}
    for officer in ("olga", "omar"):
        context, page, cdp, authenticator = person(browser, base)
        login(page, officer, PASSWORD, code(officer))
        expect(page).to_have_url(home)
        page.goto("/approvers")
        page.get_by_role("button", name="Enrol a passkey").click()
        expect(page.locator(".flash, table")).to_contain_text("webauthn (localhost)")
        assert len(cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]) == 1
        officers[officer] = (context, page, cdp, authenticator)
    approvers = json.loads(page.locator("#approvers-json").inner_text())["approvers"]
    assert set(approvers) == {"olga-passkey", "omar-passkey"}
    assert all(a["type"] == "webauthn" and a["rp_id"] == "localhost" for a in approvers.values())
    shot(page, "approvers")

    # each signatory installs that list on their own device
    for holder in HOLDERS:
        install_device_policy(signers[holder]["state"], approvers)

    # ray requests 1 BTC; olga approves with her passkey: one of two
    context, page = browser.new_context(base_url=base), None
    page = context.new_page()
    login(page, "ray", PASSWORD, code("ray"))
    expect(page).to_have_url(home)
    page.goto("/spends/new")
    page.get_by_label("Address").fill(PAYEE.address())
    page.get_by_label("Amount").fill("1")
    page.get_by_label("Fee rate (sat/vB)").fill("2")
    page.get_by_role("button", name="Submit request").click()
    page.wait_for_url(re.compile(r"/spends/\d+(\?.*)?$"))
    spend_path = urllib.parse.urlparse(page.url).path
    spend_id = int(spend_path.rsplit("/", 1)[1])
    context.close()

    for n, officer in enumerate(("olga", "omar")):
        _, page, cdp, authenticator = officers[officer]
        page.goto(spend_path)
        message = page.locator("#approval-message").inner_text()
        assert "pay " + PAYEE.address() + " 100000000" in message and "txid " in message
        with page.expect_navigation(timeout=LIVE_TIMEOUT):       # the page reloads once the approval is taken
            page.get_by_role("button", name="Approve with passkey").click()
        expect(page.locator("#spend-state")).to_have_text("requested" if n == 0 else "signing")
        used = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]
        assert used[0]["signCount"] >= 1                   # the passkey itself signed
        if n == 0:
            shot(page, "spend-approval")

    # carol and dave have their own devices check the approvals and sign
    for n, holder in enumerate(HOLDERS, start=1):
        context = browser.new_context(base_url=base)
        page = context.new_page()
        login(page, holder, PASSWORD)
        expect(page).to_have_url(home)
        page.goto(spend_path)
        page.get_by_role("button", name=f"Sign on my device {signers[holder]['serial']}").click()
        # (the page may reload itself as the state moves on, so the count is checked, not the one-time notice)
        expect(page.locator("#signature-count")).to_have_text(f"{n} of 2")
        expect(page.locator(".timeline")).to_contain_text(f"by {holder} on device {signers[holder]['serial']}")
        context.close()

    # olga broadcasts; a block confirms it
    _, page, _, _ = officers["olga"]
    page.goto(spend_path)
    expect(page.locator("#spend-state")).to_have_text("signed")
    page.get_by_role("button", name="Broadcast").click()
    expect(page.locator("#spend-state")).to_have_text("broadcast")
    txid = page.locator("#txid").inner_text().strip()
    assert txid in rpc.getrawmempool()
    rpc.generatetoaddress(1, other_address)
    expect(page.locator("#spend-state")).to_have_text("confirmed", timeout=LIVE_TIMEOUT)

    # each device's own log: it signed this spend because both passkeys approved it
    for holder in HOLDERS:
        entries = [json.loads(line) for line in (signers[holder]["state"] / "hsm_log.jsonl").read_text().splitlines()]
        signed = [e for e in entries if e.get("event") == "sign"]
        assert len(signed) == 1 and signed[0]["approved_by"] == ["olga-passkey", "omar-passkey"]
    for context, *_ in officers.values():
        context.close()
    assert spend_id


def test_an_officer_approves_with_a_key_file_in_the_browser(browser, served, code, tmp_path):
    """Without a passkey: the officer enrols a key file's public key on the Approvers page and approves by
    choosing the key file; the page signs with it (WebCrypto) and sends only the signature."""
    from playwright.sync_api import expect
    from . import officers
    base, _ = served
    context = browser.new_context(base_url=base)
    page = context.new_page()
    login(page, "ray", PASSWORD, code("ray"))
    page.goto("/spends/new")
    page.get_by_label("Address").fill(PAYEE.address())
    page.get_by_label("Amount").fill("0.1")
    page.get_by_label("Fee rate (sat/vB)").fill("2")
    page.get_by_role("button", name="Submit request").click()
    page.wait_for_url(re.compile(r"/spends/\d+(\?.*)?$"))
    spend_path = urllib.parse.urlparse(page.url).path
    logout(page)

    login(page, "omar", PASSWORD, code("omar"))
    page.goto("/approvers")
    page.locator("textarea[name=public_key]").fill(officers.public_hex("omar-file"))
    page.get_by_role("button", name="Enrol key").click()
    expect(page.locator("table")).to_contain_text(officers.public_hex("omar-file"))
    page.goto(spend_path)
    wrong = officers.key_file(tmp_path, "someone-else")
    page.locator("#approve-key-file").set_input_files(str(wrong))
    expect(page.locator("#approval-error")).to_contain_text("not one of omar's enrolled approval keys")
    with page.expect_navigation(timeout=LIVE_TIMEOUT):
        page.locator("#approve-key-file").set_input_files(str(officers.key_file(tmp_path, "omar-file")))
    expect(page.locator(".timeline")).to_contain_text("spend.approved by omar")
    context.close()
