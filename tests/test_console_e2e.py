"""The console end to end in a real browser (Debian's Chromium, headless, driven by Playwright) against
`custody serve` running as its own process on the module's regtest node.

An officer logs in with TOTP and requests a spend (after previewing its fee), a second officer approves
it with his approval key file (the page signs its transaction in the browser), two signatories download it, sign it on their "devices" and upload it, the first
officer broadcasts, and the open spend page follows the transaction to its first confirmation by itself.
On the way: a wrong TOTP code keeps an officer out, and a signatory can neither see nor use Approve.
Screenshots of the main pages are taken (CUSTODY_SCREENSHOTS_DIR=docs/screenshots refreshes the README's).

One flow, run once, on SQLite (not the `db_url` fixture, which also runs PostgreSQL).
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import pytest
from embit import bip32
from embit.networks import NETWORKS
from embit.psbt import PSBT

from coordinator import accounts
from custody.bitcoin.policies import build_policy
from custody.ledger import registry
from custody.ledger.sync import Syncer
from custody.spending import spends
from custody.store.db import open_database
from regtest.launcher import free_port
from regtest.testwallet import TestWallet

from . import officers
from .conftest import hd_keys, mine_coins
from .support import READY_TIMEOUT, stop, wait_healthy

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
REQUIRED = bool(os.environ.get("CUSTODY_REQUIRE_BROWSER"))
# A run writes its screenshots to a temporary folder; CUSTODY_SCREENSHOTS_DIR=docs/screenshots refreshes
# the README's (a test run leaves tracked files as they were).
SCREENSHOTS = Path(os.environ.get("CUSTODY_SCREENSHOTS_DIR") or tempfile.mkdtemp(prefix="custody-screenshots-"))
PASSWORD = "correct horse battery staple"
SEED = 7100                       # hd_keys(3, seed_base=SEED): devices "test device 7100" … 7102
PAYEE = TestWallet("payee")
LIVE_TIMEOUT = int(READY_TIMEOUT * 1000)   # ms: the page polls every 2 s, the service syncs every 0.5 s

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM) and not REQUIRED,
                                reason=f"no Chromium at {CHROMIUM} (install Debian's chromium, or set "
                                       "CUSTODY_REQUIRE_BROWSER to make this a failure)")


def device(n: int) -> bip32.HDKey:
    """The root key of test device n, as conftest.hd_keys derives its account key."""
    return bip32.HDKey.from_seed(hashlib.sha256(f"test device {n}".encode()).digest(),
                                 version=NETWORKS["regtest"]["xprv"])


SIGNERS = {"carol": device(SEED), "dave": device(SEED + 1)}   # the third device stays in the safe


# -- the service -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(node, rpc, wallet, other_address, tmp_path_factory):
    """`custody serve` on a fresh database: an active, funded 2-of-3 policy with a one-approval rule,
    and people in each role. Yields (base URL, {username: TOTP secret})."""
    home = tmp_path_factory.mktemp("e2e")
    db = f"sqlite:///{home / 'c.db'}"
    sessions = open_database(db)
    spec = build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=SEED))
    secrets_ = {}
    with sessions.begin() as s:
        for name, role in [("alice", "officer"), ("bob", "officer"), ("carol", "signatory"),
                           ("dave", "signatory"), ("audrey", "auditor")]:
            secrets_[name] = accounts.create_user(s, name, role, PASSWORD)[1]
        policy = registry.create_policy(s, "treasury", spec)
        registry.set_status(s, policy, "active")
        spends.set_approval_rule(s, policy, required_approvals=1)
        officers.enroll(s, "bob")                     # bob's approval key file (he keeps the private key)
    assert secrets_["alice"] and secrets_["bob"] and not secrets_["carol"] and not secrets_["dave"]

    # one matured coinbase (height 101) pays three policy addresses; heights stay far below 150
    [coin] = mine_coins(rpc, wallet, 1)
    values = (150_000_000, 250_000_000, 80_000_000)
    outputs = [(spec.embit(0).derive(i).script_pubkey().data, v) for i, v in enumerate(values)]
    rpc.sendrawtransaction(wallet.sign([coin], outputs + [(wallet.wpkh, coin.value - sum(values) - 2_000)]))
    rpc.generatetoaddress(1, other_address)
    Syncer(sessions, rpc).sync_once()
    sessions.kw["bind"].dispose()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = home / "serve.log"
    custody = Path(sys.executable).with_name("custody")
    command = ([str(custody)] if custody.exists() else [sys.executable, "-m", "coordinator.cli.main"]) + [
        "--node-cookie", str(node.cookie_file), "--network", "regtest", "serve", "--db", db, "--node", node.url,
        "--port", str(port), "--sync-interval", "0.5"]
    # the same CUSTODY_HOME as this process (conftest sets it): one event-log signing key for both
    env = {**os.environ, "CUSTODY_HOME": os.environ["CUSTODY_HOME"]}
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_healthy(base, server, (log_path,))
        yield base, secrets_
    finally:
        stop(server)


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"CUSTODY_REQUIRE_BROWSER is set but there is no Chromium at {CHROMIUM}")
    if REQUIRED:
        from playwright.sync_api import sync_playwright
    else:
        sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


# -- what a person does ----------------------------------------------------------------------------
class Codes:
    """Current TOTP codes. The service takes each 30-second step once per user (and one step of drift
    either way), so a second login within the same step uses the next step's code, or waits."""

    def __init__(self, secrets_: dict[str, str]):
        self.secrets, self.last_step = secrets_, {}

    def __call__(self, user: str) -> str:
        while True:
            current = int(time.time() // accounts.TOTP_STEP)
            step = max(current, self.last_step.get(user, -1) + 1)
            if step <= current + 1:
                self.last_step[user] = step
                return accounts.totp(self.secrets[user], at=step * accounts.TOTP_STEP)
            time.sleep(1)

    def wrong(self, user: str) -> str:
        """A code the service would refuse now: none of the steps around the current one."""
        now = time.time()
        valid = {accounts.totp(self.secrets[user], now, step_offset=k) for k in (-2, -1, 0, 1, 2)}
        return next(c for c in ("000000", "123456", "999999", "424242") if c not in valid)


def login(page, user: str, password: str, code: str | None = None) -> None:
    page.goto("/login")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(password)
    if code is not None:
        page.get_by_label("Authenticator code").fill(code)
    page.get_by_role("button", name="Log in").click()


def logout(page) -> None:
    page.locator("header").get_by_role("button", name="Log out").click()
    page.wait_for_url(re.compile(r"/login$"))


def sign_file(path: Path, key: bip32.HDKey) -> Path:
    """What a signing device does: sign every input whose derivations name this key's fingerprint."""
    psbt = PSBT.parse(path.read_bytes())
    named = {d.fingerprint for inp in psbt.inputs for d in inp.bip32_derivations.values()}
    assert key.my_fingerprint in named, f"the PSBT does not ask {key.my_fingerprint.hex()} to sign"
    assert psbt.sign_with(key) == len(psbt.inputs)
    signed = path.with_name(f"{path.stem}-signed-{key.my_fingerprint.hex()}.psbt")
    signed.write_bytes(psbt.serialize())
    return signed


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


# -- the flow --------------------------------------------------------------------------------------
def test_a_spend_from_request_to_confirmation_in_the_browser(browser, served, rpc, other_address, tmp_path):
    from playwright.sync_api import expect
    base, secrets_ = served
    code = Codes(secrets_)
    context = browser.new_context(base_url=base, viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    home = re.compile(re.escape(base) + r"/$")
    state = page.locator("#spend-state")

    # a wrong authenticator code keeps an officer out
    login(page, "alice", PASSWORD, code.wrong("alice"))
    expect(page.get_by_role("alert")).to_contain_text("wrong username, password or code")
    assert urllib.parse.urlparse(page.url).path == "/login"

    # alice logs in and looks around
    login(page, "alice", PASSWORD, code("alice"))
    expect(page).to_have_url(home)
    expect(page.locator("#balances")).to_contain_text("treasury")
    expect(page.locator("#balances")).to_contain_text("4.80")
    shot(page, "dashboard")
    page.goto("/utxos?sort=value&order=desc")
    expect(page.locator("#utxo-count")).to_contain_text("3 coins")
    shot(page, "utxos")

    # she asks to pay 1.2 BTC at 2 sat/vB, previewing the fee first
    page.goto("/spends/new")
    page.get_by_label("Address").fill(PAYEE.address())
    page.get_by_label("Amount").fill("1.2")
    page.get_by_label("Fee rate (sat/vB)").fill("2")
    page.get_by_label("Memo").fill("Supplier invoice 2026-311")
    page.get_by_role("button", name="Preview fee").click()
    expect(page.locator("#fee-preview")).to_contain_text(re.compile(r"Fee\s*[\d,]+ sat at 2\.0 sat/vB"))
    shot(page, "spend-request")
    page.get_by_role("button", name="Submit request").click()
    page.wait_for_url(re.compile(r"/spends/\d+(\?.*)?$"))
    spend_path = urllib.parse.urlparse(page.url).path
    expect(state).to_have_text("requested")
    logout(page)

    # carol, a signatory, is not offered Approve, and the service refuses it when she asks anyway
    login(page, "carol", PASSWORD)
    expect(page).to_have_url(home)
    page.goto(spend_path)
    expect(state).to_have_text("requested")
    expect(page.get_by_role("button", name="Approve with passkey")).to_have_count(0)
    csrf = page.locator("meta[name=csrf-token]").get_attribute("content")
    refused = page.request.post("/api" + spend_path + "/approve", headers={"x-csrf-token": csrf},
                                data={"proof": {"kind": "ed25519"}})
    assert refused.status == 403
    assert "signatory role may not" in refused.text()
    page.reload()
    expect(state).to_have_text("requested")
    logout(page)

    # bob approves it by signing its transaction with his approval key file: it goes to the signers
    login(page, "bob", PASSWORD, code("bob"))
    expect(page).to_have_url(home)
    page.goto("/approvals")
    expect(page.locator("#approvals")).to_contain_text("alice")
    expect(page.locator("#approvals")).to_contain_text("1.20")
    shot(page, "approvals")
    page.locator("#approvals").get_by_role("link", name="Review and approve").click()
    expect(page.locator("#approval-message")).to_contain_text(f"pay {PAYEE.address()} 120000000")
    with page.expect_navigation(timeout=LIVE_TIMEOUT):
        page.locator("#approve-key-file").set_input_files(str(officers.key_file(tmp_path, "bob")))
    expect(state).to_have_text("signing")
    expect(page.locator("#signature-count")).to_have_text("0 of 2")
    logout(page)

    # carol and dave each download the PSBT, sign it on their device and upload it
    for n, user in enumerate(("carol", "dave"), start=1):
        key = SIGNERS[user]
        login(page, user, PASSWORD)
        expect(page).to_have_url(home)
        page.goto(spend_path)
        with page.expect_download() as download:
            page.get_by_role("link", name="Download PSBT").click()
        unsigned = tmp_path / f"{user}-{download.value.suggested_filename}"
        download.value.save_as(unsigned)
        page.locator("#upload-form input[type=file]").set_input_files(str(sign_file(unsigned, key)))
        page.get_by_role("button", name="Upload signatures").click()
        expect(page.locator(".flash")).to_have_text(f"signature from {key.my_fingerprint.hex()} added")
        expect(page.locator("#signature-count")).to_have_text(f"{n} of 2")
        if user == "carol":
            expect(state).to_have_text("signing")
            expect(page.locator("figure.qr img:visible")).to_have_count(1)       # the animated QR
            shot(page, "spend-signing")
        else:
            expect(state).to_have_text("signed")
        logout(page)

    # bob broadcasts; a block is mined and the open page shows the confirmation by itself
    login(page, "bob", PASSWORD, code("bob"))
    expect(page).to_have_url(home)
    page.goto(spend_path)
    expect(state).to_have_text("signed")
    page.get_by_role("button", name="Broadcast").click()
    expect(state).to_have_text("broadcast")
    txid = page.locator("#txid").inner_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", txid) and txid in rpc.getrawmempool()
    rpc.generatetoaddress(1, other_address)
    expect(state).to_have_text("confirmed", timeout=LIVE_TIMEOUT)
    expect(page.locator("#confirmations")).to_have_text("1 confirmation", timeout=LIVE_TIMEOUT)
    expect(page.locator(".timeline")).to_contain_text("spend.confirmed")
    expect(page.locator(".timeline")).to_contain_text(txid)
    shot(page, "spend-confirmed")
    page.goto("/policies/treasury")
    expect(page.locator("#exports")).to_contain_text("coldcard")
    shot(page, "policy")
    logout(page)

    # the auditor reads the whole story in a verified log
    login(page, "audrey", PASSWORD)
    expect(page).to_have_url(home)
    page.goto("/log")
    expect(page.locator("#log-status")).to_contain_text("Integrity verified")
    for kind in ("spend.requested", "spend.approved", "psbt.signed", "spend.broadcast", "spend.confirmed"):
        expect(page.locator("#log")).to_contain_text(kind)
    shot(page, "audit-log")
    context.close()
