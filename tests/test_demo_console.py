"""The demo's waiting request can be completed in the console by the people it prints (issue 17, item 2):
`python -m coordinator.demo` runs to its console; in Chromium, erin and frank approve the request with
the approval key files the demo printed, alice and bob have their devices sign it, dana broadcasts it.
Only what the demo prints is used: the accounts' passwords and TOTP secrets, and the key files' paths."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from coordinator import accounts
from regtest.launcher import free_port

from .support import READY_TIMEOUT, stop, wait_healthy
from .test_console_e2e import CHROMIUM, CHROMIUM_ARGS, login, logout, REQUIRED

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM) and not REQUIRED,
                                reason=f"no Chromium at {CHROMIUM} (install Debian's chromium, or set "
                                       "CUSTODY_REQUIRE_BROWSER to make this a failure)")


def _printed(path, pattern: str) -> re.Match:
    deadline = time.monotonic() + READY_TIMEOUT * 5
    while time.monotonic() < deadline:
        found = re.search(pattern, path.read_text())
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"the demo did not print {pattern!r}:\n{path.read_text()[-3000:]}")


def test_the_demos_waiting_request_is_completed_in_the_console(tmp_path):
    from playwright.sync_api import expect, sync_playwright
    port = free_port()
    out = tmp_path / "demo.out"
    env = {**os.environ, "DEMO_SERVE": "1", "DEMO_PORT": str(port)}
    env.pop("CUSTODY_SIGNER_DISCOVERY", None)
    with open(out, "w") as log:
        demo = subprocess.Popen([sys.executable, "-m", "coordinator.demo"], stdout=log, stderr=subprocess.STDOUT,
                                env=env)
    try:
        pending = int(_printed(out, r"to complete spend #(\d+) in the console").group(1))
        base = f"http://localhost:{port}"
        wait_healthy(base, demo, (out,))
        text = out.read_text()
        people = {m.group(1): (m.group(2), m.group(3)) for m in
                  re.finditer(r"^\s+(\w+)\s+\w+\s+(demo-\S+)\s+(\S+)\s*$", text, re.M)}
        keys = dict(re.findall(r"(/[^\s()]+/officers/(\w+)-approval\.pem)", text))
        keys = {officer: path for path, officer in keys.items()}
        assert {"erin", "frank", "alice", "bob", "dana"} <= set(people) and {"erin", "frank"} <= set(keys)

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_context(base_url=base).new_page()

            def log_in(user: str) -> None:
                password, secret = people[user]
                login(page, user, password, accounts.totp(secret) if secret != "-" else None)
                expect(page).to_have_url(re.compile(re.escape(base) + r"/$"))

            spend = f"/spends/{pending}"
            for n, officer in enumerate(("erin", "frank")):
                log_in(officer)
                page.goto(spend)
                with page.expect_navigation(timeout=READY_TIMEOUT * 1000):
                    page.locator("#approve-key-file").set_input_files(keys[officer])
                expect(page.locator("#spend-state")).to_have_text("requested" if n == 0 else "signing")
                logout(page)
            for n, holder in enumerate(("alice", "bob"), start=1):
                log_in(holder)
                page.goto(spend)
                page.get_by_role("button", name=re.compile(r"Sign on my device RS-")).click()
                expect(page.locator("#signature-count")).to_have_text(f"{n} of 2", timeout=READY_TIMEOUT * 1000)
                logout(page)
            log_in("dana")
            page.goto(spend)
            page.get_by_role("button", name="Broadcast").click()
            expect(page.locator("#spend-state")).to_have_text("broadcast")
            browser.close()
    finally:
        stop(demo)
    # stopped as a person would stop it, the demo stops its node and signers and removes its folder
    home = re.search(r"key files in (/\S+)/officers", out.read_text()).group(1)
    assert demo.returncode is not None and not os.path.exists(home), out.read_text()[-2000:]
    leftovers = subprocess.run(["pgrep", "-f", home], capture_output=True, text=True).stdout.split()
    assert leftovers == [], f"processes of the demo still running: {leftovers}"
