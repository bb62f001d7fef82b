"""The console end to end in a real browser (Debian's Chromium, headless, driven by Playwright) against
`custody serve` running as its own process on the embedded node: an officer logs in with TOTP and
requests a spend, a second officer approves it, two signatories download the PSBT, sign it on their
"devices" and upload it, the officer broadcasts, and the page updates itself when a block confirms it.
Screenshots of the main pages are written to docs/screenshots/ (shown in the README)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from embit.psbt import PSBT

from custody import accounts, registry, spends
from custody.db import open_database
from custody.policies import build_policy
from custody.sync import Syncer
from regtest.launcher import free_port
from regtest.testwallet import TestWallet

from .conftest import hd_keys, mine_coins
from .test_custody_spends import device

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
PASSWORD = "correct horse battery staple"
SEED = 7100
PAYEE = TestWallet("e2e payee")

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CUSTODY_REQUIRE_BROWSER"),
                                reason="Debian's chromium is not installed (make test installs it)")


@pytest.fixture(scope="module")
def served(node, rpc, wallet, tmp_path_factory, other_address):
    """A funded 2-of-3 policy with a one-approval rule, people for each role, and `custody serve`."""
    db = f"sqlite:///{tmp_path_factory.mktemp('e2e')}/custody.db"
    sessions = open_database(db)
    secrets_ = {}
    spec = build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=SEED))
    with sessions.begin() as s:
        for name, role in [("alice", "officer"), ("bob", "officer"), ("carol", "signatory"), ("dave", "signatory"),
                           ("audrey", "auditor")]:
            secrets_[name] = accounts.create_user(s, name, role, PASSWORD)[1]
        policy = registry.create_policy(s, "treasury", spec)
        registry.set_status(s, policy, "active")
        spends.set_approval_rule(s, policy, required_approvals=1)
    [coin] = mine_coins(rpc, wallet, 1)
    outputs = [(spec.embit(0).derive(i).script_pubkey().data, v) for i, v in enumerate((150_000_000, 250_000_000, 80_000_000))]
    rpc.sendrawtransaction(wallet.sign([coin], outputs + [(wallet.wpkh, coin.value - 480_002_000)]))
    rpc.generatetoaddress(1, other_address)
    Syncer(sessions, rpc).sync_once()
    port = free_port()
    log = open(tmp_path_factory.mktemp("e2e-log") / "serve.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "custody.cli", "--node-cookie", str(node.cookie_file), "serve",
                               "--db", db, "--node", node.url, "--port", str(port), "--sync-interval", "0.5"],
                              stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            urllib.request.urlopen(base + "/health", timeout=2)
            break
        except OSError:
            time.sleep(0.1)
    yield base, secrets_
    server.terminate()
    server.wait(timeout=20)
    log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        yield chromium
        chromium.close()


def fresh_code(secret: str, used: set[str]) -> str:
    """A TOTP code not used before: each is accepted once, so wait for the next 30-second step."""
    while (code := accounts.totp(secret)) in used:
        time.sleep(1)
    used.add(code)
    return code


def login(page, base: str, user: str, code: str | None = None) -> None:
    page.goto(base + "/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORD)
    if code:
        page.fill("input[name=code]", code)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/$"))


def logout(page) -> None:
    page.click("header button:has-text('Log out')")
    page.wait_for_url(re.compile(r".*/login$"))


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sign_download(page, seed: int, tmp_path: Path) -> Path:
    """Download the PSBT as the signatory would, and sign it with their device's key."""
    with page.expect_download() as download:
        page.click("#download-psbt")
    unsigned = tmp_path / f"unsigned-{seed}.psbt"
    download.value.save_as(unsigned)
    psbt = PSBT.parse(unsigned.read_bytes())
    psbt.sign_with(device(seed))
    signed = tmp_path / f"signed-{seed}.psbt"
    signed.write_bytes(psbt.serialize())
    return signed


def test_a_spend_from_request_to_confirmation_in_the_browser(served, browser, rpc, other_address, tmp_path):
    from playwright.sync_api import expect
    base, secrets_ = served
    used: set[str] = set()
    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)

    # a wrong second factor keeps an officer out
    page.goto(base + "/login")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", PASSWORD)
    page.fill("input[name=code]", "000000" if accounts.totp(secrets_["alice"]) != "000000" else "111111")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_contain_text("wrong username, password or code")
    assert page.url.endswith("/login")

    # alice requests a spend, with a fee preview first
    login(page, base, "alice", fresh_code(secrets_["alice"], used))
    expect(page.locator("#balances")).to_contain_text("treasury")
    expect(page.locator("#balances")).to_contain_text("4.80")
    shot(page, "dashboard")
    page.goto(base + "/utxos?sort=value&order=desc")
    expect(page.locator("#utxo-count")).to_contain_text("3 coins")
    shot(page, "utxos")
    page.goto(base + "/spends/new")
    page.fill("input[name=address]", PAYEE.address())
    page.fill("input[name=amount]", "1.2")
    page.fill("input[name=fee_rate]", "2")
    page.fill("input[name=memo]", "Supplier invoice 2026-311")
    page.click("button[value=preview]")
    expect(page.locator("#fee-preview")).to_contain_text("sat at 2.0 sat/vB")
    shot(page, "spend-request")
    page.click("button[value=request]")
    page.wait_for_url(re.compile(r".*/spends/\d+.*"))
    spend_url = page.url.split("?")[0]
    expect(page.locator("#spend-state")).to_have_text("requested")
    logout(page)

    # bob approves it and makes the PSBT for the signers
    login(page, base, "bob", fresh_code(secrets_["bob"], used))
    page.goto(base + "/approvals")
    expect(page.locator("#approvals")).to_contain_text("alice")
    shot(page, "approvals")
    page.click("#approvals button:has-text('Approve')")
    expect(page.locator("#spend-state")).to_have_text("approved")
    page.click("button:has-text('Make PSBT for signers')")
    expect(page.locator("#spend-state")).to_have_text("signing")
    logout(page)

    # carol and dave sign on their devices and upload; carol may not approve
    for n, user in enumerate(("carol", "dave")):
        login(page, base, user)
        page.goto(spend_url)
        assert page.locator("button:has-text('Approve')").count() == 0
        if user == "carol":
            forbidden = page.request.post(spend_url + "/approve", form={"csrf_token": page.locator(
                "meta[name=csrf-token]").get_attribute("content")})
            assert forbidden.status == 403
        signed = sign_download(page, SEED + n, tmp_path)
        page.set_input_files("#upload-form input[name=file]", str(signed))
        page.click("#upload-form button[type=submit]")
        expect(page.locator(".flash")).to_contain_text(f"signature from {device(SEED + n).my_fingerprint.hex()} added")
        expect(page.locator("#signature-count")).to_have_text(f"{n + 1} of 2")
        if user == "carol":
            expect(page.locator("figure.qr img").first).to_be_visible()
            shot(page, "spend-signing")
        logout(page)

    # bob broadcasts; a block is mined and the open page shows the confirmation by itself
    login(page, base, "bob", fresh_code(secrets_["bob"], used))
    page.goto(spend_url)
    expect(page.locator("#spend-state")).to_have_text("signed")
    page.click("button:has-text('Broadcast')")
    expect(page.locator("#spend-state")).to_have_text("broadcast")
    txid = page.locator("#txid").inner_text()
    assert txid in rpc.getrawmempool()
    rpc.generatetoaddress(1, other_address)
    expect(page.locator("#spend-state")).to_have_text("confirmed", timeout=30_000)
    expect(page.locator("#confirmations")).to_have_text("1 confirmation", timeout=30_000)
    expect(page.locator(".timeline")).to_contain_text("spend.confirmed")
    shot(page, "spend-confirmed")
    page.goto(base + "/policies/treasury")
    expect(page.locator("#exports")).to_contain_text("coldcard")
    shot(page, "policy")
    logout(page)

    # the auditor sees the whole story in a verified log
    login(page, base, "audrey")
    page.goto(base + "/log")
    expect(page.locator("#log-status")).to_contain_text("Integrity verified")
    expect(page.locator("#log")).to_contain_text("spend.confirmed")
    shot(page, "audit-log")
    page.close()
