"""Issue 17, item 4, on SQLite and PostgreSQL: people own their credentials. An admin creating or
resetting an account gets a one-time enrollment link, never a password or a secret; the holder sets
their own password and TOTP on it (and the link works once, until it expires, and is kept only as a
hash); until then the account neither logs in nor has tokens; a user changes their own password and
authenticator (proving the current ones), which ends their other sessions."""
from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update

from coordinator import accounts
from coordinator.auth import LOGIN_CSRF_COOKIE, SESSION_COOKIE
from coordinator.cli.main import main
from custody.errors import CustodyError
from custody.eventlog.models import EventLogEntry
from custody.people.models import Enrollment
from custody.store.db import open_database

from .account_env import account_env, AccountEnv, PASSWORD
from .concurrency import at_once

NEW_PASSWORD = "purple elephant juggles quietly"
USERS = (("root", "admin"), ("ada", "admin"), ("olga", "officer"), ("vic", "viewer"))


class Env(AccountEnv):
    def kinds(self, subject: str) -> list[str]:
        with self.sessions() as s:
            return list(s.scalars(select(EventLogEntry.kind).where(EventLogEntry.subject == subject)
                                  .order_by(EventLogEntry.seq)))

    def log_text(self) -> str:
        with self.sessions() as s:
            return json.dumps([(e.kind, e.actor, e.subject, e.data) for e in s.scalars(select(EventLogEntry))],
                              default=str)

    def database_text(self) -> str:
        """Every user and enrollment row as text: what someone reading the database sees."""
        with self.sessions() as s:
            rows = [dict(r._mapping) for table in ("users", "enrollments")
                    for r in s.execute(text(f"SELECT * FROM {table}"))]
        return json.dumps(rows, default=str)


@pytest.fixture
def env(db_url):
    with account_env(db_url, USERS, Env) as env:
        yield env


class Browser:
    def __init__(self, app):
        self.client = TestClient(app)

    def login(self, username: str, password: str = PASSWORD, code: str = ""):
        assert self.client.get("/login").status_code == 200
        return self.client.post("/login", data={"username": username, "password": password, "code": code,
                                                "login_csrf": self.client.cookies.get(LOGIN_CSRF_COOKIE),
                                                "next": "/"}, follow_redirects=False)

    def open_link(self, path: str):
        page = self.client.get(path)
        secret = re.search(r'<code id="totp-secret">([A-Z2-7]+)</code>', page.text)
        return page, secret.group(1) if secret else None

    def enroll(self, path: str, password: str = NEW_PASSWORD, *, again: str | None = None,
               secret: str | None = None, code: str | None = None):
        data = {"password": password, "password_again": password if again is None else again,
                "login_csrf": self.client.cookies.get(LOGIN_CSRF_COOKIE) or "none"}
        if secret:
            data["totp_secret"] = secret
            data["code"] = accounts.totp(secret) if code is None else code
        return self.client.post(path, data=data, follow_redirects=False)

    def csrf(self) -> str:
        return re.search(r'name="csrf_token" value="([^"]+)"', self.client.get("/account").text).group(1)


def error_of(response) -> str:
    found = re.search(r'<p class="error" role="alert">(.*?)</p>', response.text, re.S)
    return found.group(1) if found else ""


def invite(env, name: str = "nina", role: str = "officer", **extra) -> str:
    created = env.call("POST", "/api/users", env.tokens["root"], json={"username": name, "role": role, **extra})
    assert created.status_code == 201, created.text
    return created.json()["enrollment_link"]


def path_of(link: str) -> str:
    return "/" + link.split("/", 3)[3]


# -- an admin creates: a link, never a credential; no login, no token until enrolled --------------------
def test_an_admin_gets_a_link_and_never_a_password_or_secret(env):
    created = env.call("POST", "/api/users", env.tokens["root"], json={"username": "Nina", "role": "officer"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["username"] == "nina" and body["enrolled"] is False and body["second_factor"] is None
    assert re.fullmatch(r"http://testserver/enroll/[A-Za-z0-9_-]{16}\.[A-Za-z0-9_-]{43}", body["enrollment_link"])
    assert not {"password", "totp_secret", "totp_uri"} & set(body)
    expires = datetime.fromisoformat(body["enrollment_expires_at"])
    assert timedelta(hours=71) < expires - datetime.now(timezone.utc) <= timedelta(hours=72)
    # an admin may no longer choose the password
    given = env.call("POST", "/api/users", env.tokens["root"],
                     json={"username": "pat", "role": "viewer", "password": PASSWORD})
    assert given.status_code == 422
    # the link's secret part is nowhere in the database or the log; only its hash is
    secret_part = body["enrollment_link"].rsplit(".", 1)[1]
    assert secret_part not in env.database_text() and secret_part not in env.log_text()
    assert env.kinds("user:nina") == ["user.created", "user.enrollment_issued"]


def test_until_enrolled_an_account_neither_logs_in_nor_has_tokens(env, monkeypatch):
    invite(env)
    checked = []
    real = accounts.check_password
    monkeypatch.setattr(accounts, "check_password", lambda h, p: checked.append(h) or real(h, p))
    refused = Browser(env.app).login("nina", "a guess at it", "123456")
    unknown = Browser(env.app).login("nobody", "a guess at it", "123456")
    assert refused.status_code == unknown.status_code == 401
    assert error_of(refused) == error_of(unknown) == accounts.LOGIN_REFUSED
    assert len(checked) == 2 and all(checked)          # both cost one argon2id verification
    with env.sessions.begin() as s, pytest.raises(CustodyError, match="has not enrolled yet"):
        accounts.create_token(s, accounts.get_user(s, "nina"), "ci")


# -- the link: the holder sets their own password and TOTP, once ------------------------------------
def test_the_holder_enrolls_on_the_link_and_is_logged_in(env):
    link = path_of(invite(env))
    browser = Browser(env.app)
    page, secret = browser.open_link(link)
    assert page.status_code == 200 and "nina" in page.text and secret and len(secret) == 32
    assert "data:image/svg+xml" in page.text

    # refusals keep the link: a code that does not match, a weak password, two different passwords, no TOTP
    wrong = browser.enroll(link, secret=secret, code="000000" if accounts.totp(secret) != "000000" else "111111")
    assert wrong.status_code == 400 and "code does not match" in error_of(wrong)
    weak = browser.enroll(link, "password1234", secret=secret)
    assert weak.status_code == 400 and "too easy to guess" in error_of(weak)
    differ = browser.enroll(link, again=NEW_PASSWORD + "x", secret=secret)
    assert differ.status_code == 400 and "differ" in error_of(differ)
    bare = browser.enroll(link)
    assert bare.status_code == 400 and "needs a second factor" in error_of(bare)
    assert env.user("nina").enrolled_at is None

    confirming = accounts.totp(secret)
    done = browser.enroll(link, secret=secret, code=confirming)
    assert done.status_code == 303 and done.headers["location"] == "/account"
    # an officer is made by a quorum, not by one admin: nina is a viewer until her role proposal passes
    assert browser.client.get("/api/me").json() == {"username": "nina", "role": "viewer", "via": "session"}
    [proposal] = env.call("GET", "/api/governance/proposals", env.tokens["olga"]).json()
    assert proposal["kind"] == "user_role" and proposal["target"] == "nina" and proposal["proposer"] == "root"
    assert env.call("POST", f"/api/governance/proposals/{proposal['id']}/approve", env.tokens["root"]).status_code == 400
    nina = env.user("nina")
    assert nina.second_factor == "totp" and nina.totp_secret == secret and nina.enrolled_at is not None
    assert env.kinds("user:nina")[-2:] == ["user.enrolled", "user.login"]
    assert secret not in env.log_text() and NEW_PASSWORD not in env.database_text()

    # the link works once: the same answer as for an unknown or malformed link
    again = Browser(env.app)
    used, _ = again.open_link(link)
    assert used.status_code == 404 and error_of(used) == accounts.ENROLLMENT_REFUSED
    assert again.enroll(link, secret=secret).status_code == 404
    selector = link.split("/")[-1].split(".")[0]
    for bogus in ("/enroll/nothing", f"/enroll/{selector}.{'A' * 43}", f"/enroll/{selector}"):
        answer, _ = Browser(env.app).open_link(bogus)
        assert answer.status_code == 404 and error_of(answer) == accounts.ENROLLMENT_REFUSED, bogus
    # and the code that confirmed the secret does not log in a second time
    assert Browser(env.app).login("nina", NEW_PASSWORD, confirming).status_code == 401


def test_an_expired_link_is_refused_with_the_same_words(env):
    link = path_of(invite(env, "vera", "viewer"))
    with env.sessions.begin() as s:
        s.execute(update(Enrollment).values(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
    browser = Browser(env.app)
    page, secret = browser.open_link(link)
    assert page.status_code == 404 and error_of(page) == accounts.ENROLLMENT_REFUSED and secret is None
    browser.client.get("/login")               # a form cookie, so that only the link can refuse
    assert browser.enroll(link).status_code == 404
    assert env.user("vera").enrolled_at is None


def test_a_viewer_may_go_without_a_second_factor_unless_the_admin_asked_for_one(env):
    browser = Browser(env.app)
    link = path_of(invite(env, "vera", "viewer"))
    browser.open_link(link)
    assert browser.enroll(link).status_code == 303
    assert env.user("vera").second_factor is None
    assert Browser(env.app).login("vera", NEW_PASSWORD).status_code == 303
    link = path_of(invite(env, "sven", "signatory", second_factor=True))
    browser = Browser(env.app)
    browser.open_link(link)
    assert "needs a second factor" in error_of(browser.enroll(link))


def test_a_link_enrolls_once_however_many_submissions_race(env):
    link = path_of(invite(env))
    browsers = [Browser(env.app) for _ in range(5)]
    secrets_ = [b.open_link(link)[1] for b in browsers]
    answers = at_once(5, lambda i: browsers[i].enroll(link, secret=secrets_[i]))
    assert sorted(r.status_code for r in answers) == [303, 404, 404, 404, 404]
    winner = secrets_[[r.status_code for r in answers].index(303)]
    assert env.user("nina").totp_secret == winner
    assert env.kinds("user:nina").count("user.enrolled") == 1


def test_the_link_is_in_no_request_log(env, caplog):
    link = path_of(invite(env))
    with caplog.at_level(logging.INFO, logger="coordinator.http"):
        Browser(env.app).open_link(link)
    logged = json.dumps([getattr(r, "fields", {}) for r in caplog.records])
    assert '"/enroll/{token}"' in logged and link.rsplit(".", 1)[1] not in logged and link not in logged


def test_the_form_needs_its_own_cookie(env):
    """A page elsewhere cannot post the form for the holder's browser (the cookie is SameSite=Strict)."""
    link = path_of(invite(env, "vera", "viewer"))
    forged = TestClient(env.app).post(link, data={"password": NEW_PASSWORD, "password_again": NEW_PASSWORD,
                                                  "login_csrf": "guess"}, follow_redirects=False)
    assert forged.status_code == 403 and env.user("vera").enrolled_at is None


# -- users change their own credentials -----------------------------------------------------------------
def test_a_user_changes_their_password_and_their_other_sessions_end(env):
    olga = env.secrets["olga"]
    here, elsewhere = Browser(env.app), Browser(env.app)
    assert here.login("olga", code=accounts.totp(olga)).status_code == 303
    with env.sessions.begin() as s:                    # olga logged in on another computer
        cookie, _ = accounts.start_session(s, accounts.get_user(s, "olga"))
    elsewhere.client.cookies.set(SESSION_COOKIE, cookie)
    assert elsewhere.client.get("/api/me").status_code == 200
    csrf = here.csrf()

    def change(**body):
        return here.client.post("/api/me/password", json=body, headers={"x-csrf-token": csrf})

    weak = change(password=PASSWORD, code=accounts.totp(olga, step_offset=1), new_password="password1234")
    assert weak.status_code == 400 and "too easy to guess" in weak.json()["detail"]
    assert env.user("olga").failed_logins == 0                  # a refused new password costs no attempt
    wrong = change(password="not the password", code=accounts.totp(olga, step_offset=1), new_password=NEW_PASSWORD)
    assert wrong.status_code == 400 and wrong.json()["detail"] == accounts.CURRENT_REFUSED
    assert env.user("olga").failed_logins == 1                  # a wrong one counts towards the lock-out
    no_code = change(password=PASSWORD, new_password=NEW_PASSWORD)
    assert no_code.status_code == 400 and env.user("olga").failed_logins == 2
    done = change(password=PASSWORD, code=accounts.totp(olga, step_offset=1), new_password=NEW_PASSWORD)
    assert done.status_code == 200 and env.user("olga").failed_logins == 0
    assert here.client.get("/api/me").status_code == 200         # this session stays
    assert elsewhere.client.get("/api/me").status_code == 401    # the other one ended
    assert env.call("GET", "/api/me", env.tokens["olga"]).status_code == 200     # tokens stay
    assert "user.password_changed" in env.kinds("user:olga")
    assert NEW_PASSWORD not in env.log_text()
    with env.sessions() as s:
        assert accounts.check_password(accounts.get_user(s, "olga").password_hash, NEW_PASSWORD)


def test_a_user_replaces_their_authenticator(env):
    olga, new = env.secrets["olga"], accounts.new_totp_secret()
    here = Browser(env.app)
    login_code = accounts.totp(olga)
    assert here.login("olga", code=login_code).status_code == 303
    csrf = here.csrf()

    def change(**body):
        return here.client.post("/api/me/totp", json=body, headers={"x-csrf-token": csrf})

    mismatch = change(password=PASSWORD, code=accounts.totp(olga, step_offset=1), new_secret=new, new_code="12345x")
    assert mismatch.status_code == 400 and "new secret does not match" in mismatch.json()["detail"]
    stale = change(password=PASSWORD, code=login_code, new_secret=new,
                   new_code=accounts.totp(new))                 # the login's code, replayed
    assert stale.status_code == 400 and stale.json()["detail"] == accounts.CURRENT_REFUSED
    assert env.user("olga").totp_secret == olga
    done = change(password=PASSWORD, code=accounts.totp(olga, step_offset=1), new_secret=new,
                  new_code=accounts.totp(new))
    assert done.status_code == 200 and env.user("olga").totp_secret == new
    assert Browser(env.app).login("olga", code=accounts.totp(olga, step_offset=1)).status_code == 401
    assert Browser(env.app).login("olga", code=accounts.totp(new, step_offset=1)).status_code == 303
    assert "user.totp_changed" in env.kinds("user:olga") and new not in env.log_text()


def test_the_account_page_changes_the_password(env):
    browser = Browser(env.app)
    assert browser.login("vic").status_code == 303
    page = browser.client.get("/account")
    assert 'id="change-password"' in page.text and 'id="change-totp"' in page.text
    csrf = browser.csrf()
    differ = browser.client.post("/account/password", data={"csrf_token": csrf, "password": PASSWORD,
                                                            "new_password": NEW_PASSWORD,
                                                            "new_password_again": NEW_PASSWORD + "!"})
    assert differ.status_code == 400 and "differ" in error_of(differ)
    done = browser.client.post("/account/password", data={"csrf_token": csrf, "password": PASSWORD,
                                                          "new_password": NEW_PASSWORD,
                                                          "new_password_again": NEW_PASSWORD},
                               follow_redirects=True)
    assert done.status_code == 200 and "Password changed" in done.text
    assert Browser(env.app).login("vic", NEW_PASSWORD).status_code == 303
    # without the CSRF token nothing changes
    forged = browser.client.post("/account/password", data={"password": NEW_PASSWORD, "new_password": PASSWORD,
                                                            "new_password_again": PASSWORD})
    assert forged.status_code == 403


def test_a_viewer_scope_token_changes_no_credentials(env):
    with env.sessions.begin() as s:
        token, _ = accounts.create_token(s, accounts.get_user(s, "olga"), "read", role="viewer")
    answer = env.call("POST", "/api/me/password", token, json={
        "password": PASSWORD, "code": accounts.totp(env.secrets["olga"]), "new_password": NEW_PASSWORD})
    assert answer.status_code == 403 and env.user("olga").failed_logins == 0


# -- an admin resets: a new link, no secret; sessions and tokens end --------------------------------------
def test_an_admin_reset_clears_credentials_and_gives_a_new_link(env):
    olga = Browser(env.app)
    assert olga.login("olga", code=accounts.totp(env.secrets["olga"])).status_code == 303
    reset = env.call("POST", "/api/users/olga/reset", env.tokens["root"])
    assert reset.status_code == 200
    body = reset.json()
    assert body["enrolled"] is False and body["second_factor"] is None and "enrollment_link" in body
    assert not {"password", "totp_secret"} & set(body)
    assert olga.client.get("/api/me").status_code == 401                          # session ended
    assert env.call("GET", "/api/me", env.tokens["olga"]).status_code == 401      # token revoked
    assert env.kinds("user:olga")[-2:] == ["user.credentials_reset", "user.enrollment_issued"]
    assert Browser(env.app).login("olga", code=accounts.totp(env.secrets["olga"], step_offset=1)).status_code == 401

    # a second reset replaces the first link
    newer = env.call("POST", "/api/users/olga/reset", env.tokens["root"]).json()["enrollment_link"]
    assert Browser(env.app).open_link(path_of(body["enrollment_link"]))[0].status_code == 404
    browser = Browser(env.app)
    _, secret = browser.open_link(path_of(newer))
    assert browser.enroll(path_of(newer), secret=secret).status_code == 303
    assert env.user("olga").totp_secret == secret != env.secrets["olga"]


def test_no_admin_resets_themselves_and_the_cli_can_reset_the_last_admin(env, db_url, capsys):
    refused = env.call("POST", "/api/users/ROOT/reset", env.tokens["root"])
    assert refused.status_code == 400 and "your own account" in refused.json()["detail"]
    assert env.user("root").enrolled_at is not None
    assert env.call("GET", "/api/me", env.tokens["root"]).status_code == 200
    assert env.call("POST", "/api/users/olga/reset", env.tokens["olga"]).status_code == 403
    assert env.call("POST", "/api/users/nobody/reset", env.tokens["root"]).status_code == 404
    # the CLI (whoever holds the database) is the recovery path, also for the only admin left
    assert env.call("POST", "/api/users/ada/reset", env.tokens["root"]).status_code == 200
    assert main(["--db", db_url, "--json", "--actor", "root", "user", "reset", "root",
                 "--url", "https://custody.example/"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["enrollment_link"].startswith("https://custody.example/enroll/") and "password" not in shown
    assert env.call("GET", "/api/me", env.tokens["root"]).status_code == 401
    browser = Browser(env.app)
    _, secret = browser.open_link(path_of(shown["enrollment_link"]))
    assert browser.enroll(path_of(shown["enrollment_link"]), secret=secret).status_code == 303
    assert browser.client.get("/api/me").json()["role"] == "admin"


def test_the_console_users_page_shows_links_and_resets(env):
    admin = Browser(env.app)
    assert admin.login("root", code=accounts.totp(env.secrets["root"])).status_code == 303
    csrf = admin.csrf()
    added = admin.client.post("/admin/users", data={"csrf_token": csrf, "username": "nina", "role": "officer"})
    assert added.status_code == 200
    link = re.search(r'<code id="enrollment-link">([^<]+)</code>', added.text).group(1)
    assert "/enroll/" in link and "waiting for enrollment" in added.text
    reset = admin.client.post("/admin/users/olga/reset", data={"csrf_token": csrf})
    assert reset.status_code == 200 and 'id="enrollment-link"' in reset.text and env.user("olga").enrolled_at is None
    assert 'action="/admin/users/root/reset"' not in reset.text           # no button to reset oneself


def test_the_cli_adds_an_account_with_a_link(env, db_url, capsys):
    assert main(["--db", db_url, "--json", "user", "add", "Nina", "--role", "officer"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["username"] == "nina" and shown["enrollment_link"].startswith("http://127.0.0.1:8000/enroll/")
    assert not {"password", "totp_secret"} & set(shown)
    assert main(["--db", db_url, "token", "create", "nina", "--name", "ci"]) == 1
    assert "has not enrolled yet" in capsys.readouterr().err


# -- the migration: accounts made before it were enrolled by their admin's hand-over ------------------------
def test_the_migration_counts_existing_accounts_as_enrolled(db_url):
    from alembic import command
    from alembic.config import Config
    from custody.store.db import MIGRATIONS, make_engine
    engine = make_engine(db_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0011")
        secret = accounts.new_totp_secret()
        for name, role, totp_secret in (("olga", "officer", secret), ("vic", "viewer", None)):
            connection.execute(text(
                "INSERT INTO users (username, role, password_hash, totp_secret, last_totp_step, failed_logins, "
                "failures_unlogged, disabled, created_at) VALUES (:name, :role, :hash, :secret, 0, 0, 0, :no, :now)"),
                {"name": name, "role": role, "hash": accounts.hash_password(PASSWORD), "secret": totp_secret,
                 "no": False, "now": datetime.now(timezone.utc)})
    engine.dispose()
    sessions = open_database(db_url)
    with sessions() as s:
        assert accounts.authenticate(s, "olga", PASSWORD, accounts.totp(secret)).second_factor == "totp"
        assert accounts.authenticate(s, "vic", PASSWORD).second_factor is None
        assert all(u.enrolled_at is not None for u in accounts.list_users(s))
    sessions.kw["bind"].dispose()


def test_one_admin_alone_cannot_make_another_admin_or_officer(env):
    """The account is made, but as a viewer: its admin role is a proposal another admin or officer must
    approve, and loosening waits its delay. So one admin cannot conjure the second person of a quorum."""
    created = env.call("POST", "/api/users", env.tokens["root"], json={"username": "eve", "role": "admin"})
    assert created.status_code == 201, created.text
    assert created.json()["role"] == "viewer" and created.json()["proposal"]["change"] == {"role": "admin"}
    proposal = created.json()["proposal"]["id"]
    own = env.call("POST", f"/api/governance/proposals/{proposal}/approve", env.tokens["root"])
    assert own.status_code == 400 and env.user("eve").role == "viewer"
    seconded = env.call("POST", f"/api/governance/proposals/{proposal}/approve", env.tokens["olga"])
    assert seconded.status_code == 200 and seconded.json()["state"] == "scheduled"     # a loosening: it waits
    assert env.user("eve").role == "viewer"
    # a viewer or signatory is made at once: they take no part in quorums or approvals
    plain = env.call("POST", "/api/users", env.tokens["root"], json={"username": "val", "role": "auditor"})
    assert plain.json()["role"] == "auditor" and "proposal" not in plain.json()
