"""Issue 17, item 4, on SQLite and PostgreSQL: a passkey as the second factor for logging in. A person
makes one on their enrollment link (the link authorises the ceremony: they have no session yet); their
login then asks for it after a correct password, over a fresh challenge kept for that one pending login;
they switch between TOTP and a passkey on their account page with their current password and factor;
an admin's reset clears it. A login passkey is never an approval key, and an approval passkey never
logs in. The last test does it in Chromium with its virtual authenticator."""
from __future__ import annotations

import html
import json
import os
import re

import pytest
from fastapi.testclient import TestClient
from fido2.utils import websafe_encode
from sqlalchemy import func, select

from coordinator import accounts
from coordinator.app import create_app, node_factory
from coordinator.auth import LOGIN_CSRF_COOKIE, SESSION_COOKIE
from custody.errors import CustodyError
from custody.eventlog.models import EventLogEntry
from custody.people import credentials
from custody.people.credential_models import ApprovalChallenge, ApproverCredential
from custody.people.models import User
from custody.store.db import open_database
from custody_signer import protocol

from .account_env import account_env, AccountEnv, PASSWORD
from .passkeys import SoftPasskey
from .support import served

NEW_PASSWORD = "purple elephant juggles quietly"


class Env(AccountEnv):
    def passkeys(self, name: str, purpose: str = "login", *, active: bool = True) -> list[ApproverCredential]:
        with self.sessions() as s:
            query = select(ApproverCredential).join(User).where(User.username == name,
                                                                 ApproverCredential.purpose == purpose)
            if active:
                query = query.where(ApproverCredential.revoked_at.is_(None))
            return list(s.scalars(query))

    def challenges(self, name: str) -> int:
        with self.sessions() as s:
            return s.scalar(select(func.count()).select_from(ApprovalChallenge).join(
                User, User.id == ApprovalChallenge.user_id).where(User.username == name))

    def log(self, subject: str) -> list[tuple[str, dict]]:
        with self.sessions() as s:
            return [(e.kind, json.loads(e.data) if isinstance(e.data, str) else e.data) for e in s.scalars(select(EventLogEntry).where(EventLogEntry.subject == subject)
                                                        .order_by(EventLogEntry.seq))]

    def invite(self, name: str, role: str = "officer") -> str:
        created = self.call("POST", "/api/users", self.tokens["root"], json={"username": name, "role": role})
        assert created.status_code == 201, created.text
        return "/" + created.json()["enrollment_link"].split("/", 3)[3]


@pytest.fixture
def env(db_url):
    with account_env(db_url, (("root", "admin"), ("olga", "officer")), Env) as env:
        yield env


class Browser:
    """One person's browser: the console's forms, with what its script would post."""

    def __init__(self, app):
        self.client = TestClient(app)

    def enroll_with_passkey(self, link: str, passkey: SoftPasskey, password: str = NEW_PASSWORD):
        page = self.client.get(link)
        assert page.status_code == 200 and 'value="passkey"' in page.text
        csrf = self.client.cookies.get(LOGIN_CSRF_COOKIE)
        options = self.client.post(link + "/passkey-options", data={"login_csrf": csrf})
        assert options.status_code == 200, options.text
        assert [p["alg"] for p in options.json()["publicKey"]["pubKeyCredParams"]] == [-7]      # ES256 only
        secret = re.search(r'name="totp_secret" value="([A-Z2-7]+)"', page.text)
        return self.client.post(link, data={"password": password, "password_again": password, "login_csrf": csrf,
                                            "totp_secret": secret.group(1) if secret else "", "code": "",
                                            "passkey": json.dumps(passkey.create(options.json()))},
                                follow_redirects=False)

    def password_step(self, username: str, password: str = NEW_PASSWORD, code: str = ""):
        """The login form; returns (response, (pending, options) when the page asks for the passkey)."""
        assert self.client.get("/login?next=/account").status_code == 200
        response = self.client.post("/login", data={"username": username, "password": password, "code": code,
                                                    "login_csrf": self.client.cookies.get(LOGIN_CSRF_COOKIE),
                                                    "next": "/account"}, follow_redirects=False)
        form = re.search(r'id="passkey-login" data-options="([^"]+)"', response.text)
        if form is None:
            return response, None
        pending = re.search(r'name="pending" value="([^"]+)"', response.text).group(1)
        return response, (pending, json.loads(html.unescape(form.group(1))))

    def passkey_step(self, username: str, pending: str, assertion: dict):
        return self.client.post("/login/passkey", data={
            "username": username, "pending": pending, "assertion": json.dumps(assertion), "next": "/account",
            "login_csrf": self.client.cookies.get(LOGIN_CSRF_COOKIE)}, follow_redirects=False)

    def login(self, username: str, passkey: SoftPasskey, password: str = NEW_PASSWORD):
        response, step = self.password_step(username, password)
        assert step is not None, error_of(response)
        return self.passkey_step(username, step[0], passkey.get(step[1]))

    def csrf(self) -> str:
        return re.search(r'name="csrf_token" value="([^"]+)"', self.client.get("/account").text).group(1)

    def account_json(self, path: str):
        return self.client.post(path, headers={"x-csrf-token": self.csrf()})


def error_of(response) -> str:
    found = re.search(r'<p class="error" role="alert">(.*?)</p>', response.text, re.S)
    return html.unescape(found.group(1)) if found else ""


def enrolled(env, name: str, role: str = "officer") -> tuple[Browser, SoftPasskey]:
    browser, passkey = Browser(env.app), SoftPasskey()
    done = browser.enroll_with_passkey(env.invite(name, role), passkey)
    assert done.status_code == 303 and done.headers["location"] == "/account", error_of(done)
    browser.client.cookies.clear()
    return browser, passkey


# -- enrolling and logging in ------------------------------------------------------------------------
def test_a_person_enrolls_a_passkey_on_their_link_and_logs_in_with_it(env):
    browser, passkey = Browser(env.app), SoftPasskey()
    done = browser.enroll_with_passkey(env.invite("nina", "signatory"), passkey)    # any role may have one
    assert done.status_code == 303 and done.headers["location"] == "/account", error_of(done)
    assert "a passkey" in browser.client.get("/account").text
    nina = env.user("nina")
    assert nina.second_factor == "passkey" and nina.totp_secret is None and nina.enrolled_at is not None
    [credential] = env.passkeys("nina")
    assert credential.kind == "webauthn" and credential.rp_id == "localhost"
    kinds = [kind for kind, _ in env.log("user:nina")]
    assert kinds[-3:] == ["user.passkey_added", "user.enrolled", "user.login"]
    assert dict(env.log("user:nina"))["user.enrolled"]["second_factor"] == "passkey"

    browser.client.cookies.clear()
    response, step = browser.password_step("nina")
    assert response.status_code == 200 and step is not None
    assert SESSION_COOKIE not in response.cookies                   # the password alone opens nothing
    assert [c["id"] for c in step[1]["publicKey"]["allowCredentials"]] == [credential.credential_id]
    logged_in = browser.passkey_step("nina", step[0], passkey.get(step[1]))
    assert logged_in.status_code == 303 and logged_in.headers["location"] == "/account"
    assert browser.client.get("/api/me").json() == {"username": "nina", "role": "signatory", "via": "session"}
    assert env.log("user:nina")[-1][0] == "user.login"
    assert env.user("nina").failed_logins == 0 and env.challenges("nina") == 0        # used once


def test_a_link_refuses_a_passkey_it_did_not_ask_for_and_an_rsa_one(env):
    link = env.invite("nina")
    browser, passkey = Browser(env.app), SoftPasskey()
    browser.client.get(link)
    csrf = browser.client.cookies.get(LOGIN_CSRF_COOKIE)
    # an answer made for no options the link gave (a challenge of the attacker's choosing)
    made = passkey.create({"publicKey": {"challenge": websafe_encode(os.urandom(32))}})
    refused = browser.client.post(link, data={"password": NEW_PASSWORD, "password_again": NEW_PASSWORD,
                                              "login_csrf": csrf, "passkey": json.dumps(made)}, follow_redirects=False)
    assert refused.status_code == 400 and "no passkey enrolment is under way" in error_of(refused)
    options = browser.client.post(link + "/passkey-options", data={"login_csrf": csrf}).json()
    wrong = browser.client.post(link, data={"password": NEW_PASSWORD, "password_again": NEW_PASSWORD,
                                            "login_csrf": csrf, "passkey": json.dumps(made)}, follow_redirects=False)
    assert wrong.status_code == 400 and "challenge" in error_of(wrong).lower()
    assert env.user("nina").enrolled_at is None and env.passkeys("nina") == []          # nothing kept
    # options need the link: a wrong one gets none
    other = browser.client.post(link[:-4] + "AAAA/passkey-options", data={"login_csrf": csrf})
    assert other.status_code == 400 and other.json()["detail"] == accounts.ENROLLMENT_REFUSED
    assert options["publicKey"]["user"]["name"] == "nina"


def test_a_wrong_password_never_reaches_the_passkey_step(env, monkeypatch):
    browser, passkey = enrolled(env, "nina")
    checked = []
    real = accounts.check_password
    monkeypatch.setattr(accounts, "check_password", lambda h, p: checked.append(h) or real(h, p))
    answers = [browser.password_step(name, "a wrong guess here", code)
               for name, code in (("nina", ""), ("olga", "123456"), ("nobody", ""))]
    pages = set()
    for response, step in answers:            # passkey account, TOTP account, unknown name: one answer
        assert response.status_code == 401 and step is None and error_of(response) == accounts.LOGIN_REFUSED
        pages.add(re.sub(r'(name="(login_csrf|username)"[^>]*value=")[^"]*"', r"\1", response.text))
    assert len(pages) == 1 and 'id="passkey-login"' not in pages.pop()
    assert len(checked) == 3 and env.challenges("nina") == 0
    assert env.user("nina").failed_logins == 1
    # the lock-out counts passkey accounts' attempts as any: locked, the right password goes no further
    for _ in range(accounts.MAX_FAILED_LOGINS - 1):
        browser.password_step("nina", "a wrong guess here")
    response, step = browser.password_step("nina")
    assert response.status_code == 401 and step is None and env.challenges("nina") == 0
    assert env.user("nina").locked_until is not None


def test_a_replayed_or_cloned_assertion_is_refused(env):
    browser, passkey = enrolled(env, "nina")
    _, (pending, options) = browser.password_step("nina")
    first = passkey.get(options)
    assert browser.passkey_step("nina", pending, first).status_code == 303
    browser.client.cookies.clear()

    # the same assertion again, for a new login: its challenge was the last login's
    _, (pending, options) = browser.password_step("nina")
    replayed = browser.passkey_step("nina", pending, first)
    assert replayed.status_code == 401 and error_of(replayed) == accounts.LOGIN_REFUSED
    assert SESSION_COOKIE not in replayed.cookies
    # the challenge is used up by the refusal: the right answer to it now opens nothing, and costs nothing
    late = browser.passkey_step("nina", pending, passkey.get(options))
    assert late.status_code == 401 and env.user("nina").failed_logins == 1

    # a copy of the passkey (its counter behind the real one's) over a fresh challenge
    _, (pending, options) = browser.password_step("nina")
    cloned = browser.passkey_step("nina", pending, passkey.get(options, counter=1))
    assert cloned.status_code == 401
    failures = [data["reason"] for kind, data in env.log("user:nina") if kind == "user.login_failed"]
    assert "challenge" in failures[0].lower()      # the first is logged; the next within a minute are counted
    assert env.user("nina").failed_logins == 2 and env.user("nina").failures_unlogged == 1
    with env.sessions() as s:
        assert s.scalar(select(ApproverCredential.sign_count).where(ApproverCredential.purpose == "login")) == 1


def test_an_assertion_for_another_challenge_or_login_is_refused(env):
    browser, passkey = enrolled(env, "nina")
    other = Browser(env.app)
    _, (pending_a, options_a) = browser.password_step("nina")
    _, (pending_b, options_b) = other.password_step("nina")     # a second login replaces the first
    assert options_a["publicKey"]["challenge"] != options_b["publicKey"]["challenge"]
    # the first login's challenge is gone: its right answer opens nothing, and nothing more is counted
    # (each password step counts until its passkey step succeeds)
    assert browser.passkey_step("nina", pending_a, passkey.get(options_a)).status_code == 401
    assert env.user("nina").failed_logins == 2 and env.challenges("nina") == 1
    # an answer to the first challenge presented with the second login's secret
    mixed = other.passkey_step("nina", pending_b, passkey.get(options_a))
    assert mixed.status_code == 401 and env.challenges("nina") == 0
    failure = [data for kind, data in env.log("user:nina") if kind == "user.login_failed"][-1]
    assert "challenge" in failure["reason"].lower()
    # an assertion of a challenge the attacker chose (an approval's, say) is refused as well
    _, (pending, _) = other.password_step("nina")
    chosen = passkey.get({"publicKey": {"challenge": websafe_encode(protocol.challenge(b"pay the attacker"))}})
    assert other.passkey_step("nina", pending, chosen).status_code == 401
    # a guessed pending secret finds no login
    _, (pending, options) = other.password_step("nina")
    assert browser.passkey_step("nina", "guessed", passkey.get(options)).status_code == 401
    assert other.passkey_step("nina", pending, passkey.get(options)).status_code == 303
    assert env.user("nina").failed_logins == 0


def test_another_users_passkey_and_an_approval_passkey_do_not_log_in(env):
    browser, passkey = enrolled(env, "nina")
    _, pete_passkey = enrolled(env, "pete")
    _, (pending, options) = browser.password_step("nina")
    stolen = browser.passkey_step("nina", pending, pete_passkey.get(options))
    assert stolen.status_code == 401
    failure = [data for kind, data in env.log("user:nina") if kind == "user.login_failed"][-1]
    assert "not one of nina's enrolled passkeys" in failure["reason"]

    # nina, an officer, enrols an approval passkey: it is no login passkey, and hers is no approval key
    with env.sessions.begin() as s:
        nina = accounts.get_user(s, "nina")
        nina.role = "officer"              # (an invited officer starts a viewer until the role is approved)
        token, _ = accounts.create_token(s, nina, "ci")
    approval_passkey = SoftPasskey()
    options = env.call("POST", "/api/me/passkeys/options", token).json()
    assert env.call("POST", "/api/me/passkeys", token,
                    json={"credential": approval_passkey.create(options)}).status_code == 201
    _, (pending, options) = browser.password_step("nina")
    assert [c["id"] for c in options["publicKey"]["allowCredentials"]] == [env.passkeys("nina")[0].credential_id]
    assert browser.passkey_step("nina", pending, approval_passkey.get(options)).status_code == 401
    approvers = env.call("GET", "/api/approvers", env.tokens["root"]).json()["approvers"]
    assert list(approvers) == ["nina-passkey"]                          # the approval passkey alone
    assert [c["kind"] for c in env.call("GET", "/api/me/approval-credentials", token).json()] == ["webauthn"]
    message = b"an approval message"
    with env.sessions() as s, pytest.raises(CustodyError, match="not one of nina's enrolled passkeys"):
        credentials.check_approval(s, accounts.get_user(s, "nina"), message, {"kind": "webauthn", "credential": passkey.get(
            {"publicKey": {"challenge": websafe_encode(protocol.challenge(message))}})})
    # and the login passkey cannot be revoked through the approval credentials
    assert env.call("DELETE", f"/api/me/approval-credentials/{env.passkeys('nina')[0].id}", token).status_code == 404


# -- changing it, and an admin's reset -----------------------------------------------------------------
def test_a_user_switches_from_totp_to_a_passkey_and_back(env):
    browser = Browser(env.app)
    secret = env.secrets["olga"]
    assert browser.client.get("/login").status_code == 200
    browser.client.post("/login", data={"username": "olga", "password": PASSWORD, "code": accounts.totp(secret),
                                        "login_csrf": browser.client.cookies.get(LOGIN_CSRF_COOKIE), "next": "/"})
    passkey = SoftPasskey()

    def to_passkey(code: str, password: str = PASSWORD):
        options = browser.account_json("/account/passkey/options")
        assert options.status_code == 200, options.text
        return browser.client.post("/account/passkey", data={
            "csrf_token": browser.csrf(), "password": password, "code": code,
            "new_passkey": json.dumps(passkey.create(options.json()))}, follow_redirects=False)

    wrong = to_passkey(accounts.totp(secret), "not her password at all")
    assert wrong.status_code == 400 and error_of(wrong) == accounts.CURRENT_REFUSED
    assert env.user("olga").second_factor == "totp" and env.passkeys("olga") == []       # nothing changed
    switched = to_passkey(accounts.totp(secret, step_offset=1))
    assert switched.status_code == 303, error_of(switched)
    olga = env.user("olga")
    assert olga.second_factor == "passkey" and olga.totp_secret is None and len(env.passkeys("olga")) == 1
    assert dict(env.log("user:olga"))["user.second_factor_changed"] == {"second_factor": "passkey", "replaced": "totp"}
    # the TOTP code no longer logs her in; the passkey does
    other = Browser(env.app)
    response, step = other.password_step("olga", PASSWORD, accounts.totp(secret, step_offset=-1))
    assert step is not None and other.passkey_step("olga", step[0], passkey.get(step[1])).status_code == 303

    # a change now needs the passkey: without it, said plainly and not counted; the API cannot carry one
    without = browser.client.post("/account/password", data={
        "csrf_token": browser.csrf(), "password": PASSWORD, "new_password": NEW_PASSWORD,
        "new_password_again": NEW_PASSWORD}, follow_redirects=False)
    assert without.status_code == 400 and error_of(without) == accounts.PASSKEY_ELSEWHERE
    api = env.call("POST", "/api/me/password", env.tokens["olga"],
                   json={"password": PASSWORD, "new_password": NEW_PASSWORD})
    assert api.status_code == 400 and api.json()["detail"] == accounts.PASSKEY_ELSEWHERE
    # a confirmation challenge is for the session that asked for it
    challenge = other.account_json("/account/passkey/challenge").json()
    stolen = browser.client.post("/account/password", data={
        "csrf_token": browser.csrf(), "password": PASSWORD, "new_password": NEW_PASSWORD,
        "new_password_again": NEW_PASSWORD, "assertion": json.dumps(passkey.get(challenge))}, follow_redirects=False)
    assert stolen.status_code == 400 and error_of(stolen) == accounts.CURRENT_REFUSED
    challenge = browser.account_json("/account/passkey/challenge").json()
    changed = browser.client.post("/account/password", data={
        "csrf_token": browser.csrf(), "password": PASSWORD, "new_password": NEW_PASSWORD,
        "new_password_again": NEW_PASSWORD, "assertion": json.dumps(passkey.get(challenge))}, follow_redirects=False)
    assert changed.status_code == 303, error_of(changed)

    # back to TOTP, confirmed with the passkey, which is then revoked
    new_secret = accounts.new_totp_secret()
    challenge = browser.account_json("/account/passkey/challenge").json()
    back = browser.client.post("/account/totp", data={
        "csrf_token": browser.csrf(), "password": NEW_PASSWORD, "new_secret": new_secret,
        "new_code": accounts.totp(new_secret), "assertion": json.dumps(passkey.get(challenge))}, follow_redirects=False)
    assert back.status_code == 303, error_of(back)
    assert env.user("olga").second_factor == "totp" and env.passkeys("olga") == []
    assert dict(env.log("user:olga"))["user.totp_changed"] == {"replaced": "passkey"}
    response, step = Browser(env.app).password_step("olga", NEW_PASSWORD, accounts.totp(new_secret, step_offset=1))
    assert step is None and response.status_code == 303


def test_an_admin_reset_clears_the_passkey(env):
    browser, passkey = enrolled(env, "nina")
    _, (pending, options) = browser.password_step("nina")          # a login under way when the reset comes
    reset = env.call("POST", "/api/users/nina/reset", env.tokens["root"])
    assert reset.status_code == 200, reset.text
    nina = env.user("nina")
    assert nina.second_factor is None and nina.enrolled_at is None
    assert env.passkeys("nina") == [] and len(env.passkeys("nina", active=False)) == 1
    assert env.challenges("nina") == 0
    assert browser.passkey_step("nina", pending, passkey.get(options)).status_code == 401
    assert "user.passkey_revoked" in [kind for kind, _ in env.log("user:nina")]
    # she enrolls again on the new link, with a new passkey; the old one opens nothing
    link = "/" + reset.json()["enrollment_link"].split("/", 3)[3]
    again = SoftPasskey()
    assert browser.enroll_with_passkey(link, again, PASSWORD + " again").status_code == 303
    browser.client.cookies.clear()
    _, (pending, options) = browser.password_step("nina", PASSWORD + " again")
    assert browser.passkey_step("nina", pending, passkey.get(options)).status_code == 401
    assert browser.login("nina", again, PASSWORD + " again").status_code == 303


# -- in a real browser ---------------------------------------------------------------------------------
def test_in_chromium_a_person_enrolls_a_passkey_on_their_link_and_logs_in_with_it(tmp_path):
    from .test_console_e2e import CHROMIUM, CHROMIUM_ARGS, REQUIRED
    if not os.path.exists(CHROMIUM) and not REQUIRED:
        pytest.skip(f"no Chromium at {CHROMIUM}")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    from playwright.sync_api import expect
    sessions = open_database(f"sqlite:///{tmp_path / 'c.db'}")
    with sessions.begin() as s:
        accounts.create_user(s, "root", "admin", PASSWORD)
        _, token, _ = accounts.invite_user(s, "nina", "officer", actor="root")
    app = create_app(sessions, node_factory("http://127.0.0.1:9"), sync_interval=0)
    with served(app, host="localhost") as base, sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = chromium.new_context(base_url=base)
            page = context.new_page()
            problems = []
            page.on("pageerror", lambda e: problems.append(str(e)))
            cdp = context.new_cdp_session(page)
            cdp.send("WebAuthn.enable")
            authenticator = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
                "protocol": "ctap2", "transport": "internal", "hasResidentKey": True, "hasUserVerification": True,
                "isUserVerified": True, "automaticPresenceSimulation": True}})["authenticatorId"]

            page.goto(f"/enroll/{token}")
            page.get_by_label("New password").fill(NEW_PASSWORD)
            page.get_by_label("Again").fill(NEW_PASSWORD)
            page.get_by_label("a passkey").check()
            expect(page.locator("#totp-choice")).to_be_hidden()
            page.get_by_role("button", name="Save and log in").click()
            page.wait_for_url(re.compile(r"/account$"))
            expect(page.locator("#second-factor")).to_contain_text("a passkey")
            [made] = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]
            with sessions() as s:
                [stored] = s.scalars(select(ApproverCredential).where(ApproverCredential.purpose == "login"))
                assert websafe_encode(__import__("base64").b64decode(made["credentialId"])) == stored.credential_id
                assert s.scalar(select(User.second_factor).where(User.username == "nina")) == "passkey"

            page.locator("header").get_by_role("button", name="Log out").click()
            page.wait_for_url(re.compile(r"/login$"))
            page.goto("/login?next=/account")
            page.get_by_label("Username").fill("nina")
            page.get_by_label("Password").fill(NEW_PASSWORD)
            page.get_by_role("button", name="Log in").click()
            page.get_by_role("button", name="Use my passkey").click()
            page.wait_for_url(re.compile(r"/account$"))
            expect(page.locator("h1")).to_contain_text("nina")
            [used] = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]
            assert used["signCount"] > made["signCount"]
            assert problems == []
        finally:
            chromium.close()
    sessions.kw["bind"].dispose()
