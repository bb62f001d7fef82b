"""Issue 16, the account findings, on SQLite and PostgreSQL: a TOTP code opens one session however
many logins race with it; parallel wrong passwords check at most MAX_FAILED_LOGINS; usernames are
canonical identities (also after the migration); viewer-scope tokens manage no tokens; a refusal never
says whether the account exists; weak passwords are refused; sessions end when idle; failed logins
are logged at most once a minute per real account.

The races go through the ASGI app from several threads, each its own TestClient (its own cookies and
event loop, so the sync routes really run at once)."""
from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta, timezone

import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select, update

from coordinator import accounts
from coordinator.auth import LOGIN_CSRF_COOKIE, SESSION_COOKIE
from custody.errors import CustodyError
from custody.eventlog.models import EventLogEntry
from custody.people.models import LoginSession, User
from custody.store.db import make_engine, MIGRATIONS, open_database

from .account_env import account_env, AccountEnv, PASSWORD
from .concurrency import at_once
from .conftest import hd_keys

USERS = [("root", "admin"), ("olga", "officer"), ("omar", "officer"), ("sam", "signatory"), ("sina", "signatory"),
         ("vic", "viewer")]


class Env(AccountEnv):
    def log(self, kind: str, subject: str | None = None) -> list[EventLogEntry]:
        with self.sessions() as s:
            query = select(EventLogEntry).where(EventLogEntry.kind == kind).order_by(EventLogEntry.seq)
            if subject:
                query = query.where(EventLogEntry.subject == subject)
            return list(s.scalars(query))

    def log_size(self) -> int:
        with self.sessions() as s:
            return s.scalar(select(func.count()).select_from(EventLogEntry))


@pytest.fixture
def env(db_url):
    """The app on a fresh database (no node: nothing here asks one), a user and a token per role."""
    with account_env(db_url, USERS, Env) as env:
        yield env


class Browser:
    """A browser of its own: its own cookies, its login form fetched."""

    def __init__(self, app):
        self.client = TestClient(app)
        assert self.client.get("/login").status_code == 200
        self.login_csrf = self.client.cookies.get(LOGIN_CSRF_COOKIE)

    def login(self, username: str, password: str = PASSWORD, code: str = ""):
        if self.client.cookies.get(LOGIN_CSRF_COOKIE) is None:      # spent by the last login: a new form
            assert self.client.get("/login").status_code == 200
            self.login_csrf = self.client.cookies.get(LOGIN_CSRF_COOKIE)
        return self.client.post("/login", data={"username": username, "password": password, "code": code,
                                                "login_csrf": self.login_csrf, "next": "/"}, follow_redirects=False)


def error_of(response) -> str:
    found = re.search(r'<p class="error" role="alert">(.*?)</p>', response.text, re.S)
    return found.group(1) if found else ""


@pytest.fixture
def hash_checks(monkeypatch):
    """Each argon2id verification made: True against an account's own hash, False against the dummy."""
    real, calls = accounts.check_password, []

    def counting(encoded, password):
        calls.append(encoded != accounts._DUMMY_HASH)
        return real(encoded, password)
    monkeypatch.setattr(accounts, "check_password", counting)
    return calls


# -- (3) races: one TOTP code, one session; N parallel guesses, MAX_FAILED_LOGINS checked ----------------
def test_one_totp_code_opens_one_session_however_many_logins_race(env):
    browsers = [Browser(env.app) for _ in range(6)]
    code = accounts.totp(env.secrets["olga"])
    answers = at_once(len(browsers), lambda i: browsers[i].login("olga", code=code))
    assert sorted(r.status_code for r in answers) == [303] + [401] * 5, [r.status_code for r in answers]
    olga = env.user("olga")
    with env.sessions() as s:
        assert s.scalar(select(func.count()).select_from(LoginSession).where(LoginSession.user_id == olga.id)) == 1
    assert olga.last_totp_step in {int(time.time() // 30) + d for d in (-2, -1, 0, 1)}
    assert len(env.log("user.login", "user:olga")) == 1
    # and sequentially, as before: the code is spent
    assert Browser(env.app).login("olga", code=code).status_code == 401


@pytest.mark.parametrize("attempts", [20, 40])
def test_parallel_wrong_passwords_check_at_most_the_allowed_number(env, hash_checks, attempts):
    browsers = [Browser(env.app) for _ in range(attempts)]
    answers = at_once(len(browsers), lambda i: browsers[i].login("sam", password="not the password"))
    assert {r.status_code for r in answers} == {401}
    assert len({error_of(r) for r in answers}) == 1                 # one message for all of them
    assert sum(hash_checks) == accounts.MAX_FAILED_LOGINS           # sam's hash: exactly five checks
    assert len(hash_checks) == attempts                             # the others cost the same work
    sam = env.user("sam")
    assert sam.failed_logins == accounts.MAX_FAILED_LOGINS and sam.locked_until is not None
    # locked now: the right password is refused too, until an admin unlocks the account
    assert Browser(env.app).login("sam").status_code == 401
    assert env.call("PATCH", "/api/users/sam", env.tokens["root"], json={"unlock": True}).status_code == 200
    assert Browser(env.app).login("sam").status_code == 303
    # the log: the first failure to finish and the lock (one entry when the lock finished first), not
    # 20 or 40 entries; with the count the next login carries (failures that finished within the minute
    # after an entry), every checked attempt is in it
    failed = [json.loads(e.data) for e in env.log("user.login_failed", "user:sam")]
    assert len(failed) in (1, 2) and any("locked_until" in d for d in failed)
    later = json.loads(env.log("user.login", "user:sam")[-1].data).get("failures_not_logged", 0)
    assert sum(d["failures"] for d in failed) + later == accounts.MAX_FAILED_LOGINS


# -- (11) no user enumeration ----------------------------------------------------------------------------
def test_refusals_never_say_whether_an_account_exists(env, hash_checks):
    browser = Browser(env.app)
    real = [browser.login("sam", password="not the password") for _ in range(accounts.MAX_FAILED_LOGINS + 2)]
    unknown = [browser.login("nobody", password="not the password") for _ in range(accounts.MAX_FAILED_LOGINS + 2)]
    assert [r.status_code for r in real] == [r.status_code for r in unknown] == [401] * 7
    assert [error_of(r) for r in real] == [error_of(r) for r in unknown]
    assert error_of(real[0]) == accounts.LOGIN_REFUSED
    assert len(hash_checks) == 14                                   # every attempt hashes, known or not
    # locked with the right password, disabled with the right password: the same answer again
    locked = browser.login("sam")
    assert locked.status_code == 401 and error_of(locked) == accounts.LOGIN_REFUSED
    assert env.call("PATCH", "/api/users/sina", env.tokens["root"], json={"disabled": True}).status_code == 200
    disabled = browser.login("sina")
    assert disabled.status_code == 401 and error_of(disabled) == accounts.LOGIN_REFUSED
    with pytest.raises(accounts.AuthError, match=re.escape(accounts.LOGIN_REFUSED)):
        with env.sessions() as s:
            accounts.authenticate(s, "ОLGA", PASSWORD)              # a Cyrillic О: not a name at all


# -- (13) failed logins are logged rarely, and only for real accounts ------------------------------------
def test_failed_logins_are_logged_once_a_minute_per_real_account(env):
    before = env.log_size()
    browser = Browser(env.app)
    for i in range(20):
        assert browser.login(f"nobody{i}", password="not the password").status_code == 401
    assert env.log_size() == before                                 # unknown names write nothing

    t0 = time.time()

    def attempt(offset: float, password: str = "not the password"):
        with env.sessions() as s:
            try:
                accounts.authenticate(s, "sam", password, now=t0 + offset)
            except accounts.AuthError:
                return False
            s.commit()
            return True
    assert not attempt(0) and not attempt(10) and not attempt(20)      # one entry for the first
    assert [json.loads(e.data)["failures"] for e in env.log("user.login_failed", "user:sam")] == [1]
    assert not attempt(61)                                           # a minute later: the next, counting 3
    assert [json.loads(e.data)["failures"] for e in env.log("user.login_failed", "user:sam")] == [1, 3]
    assert not attempt(62)                                           # the fifth locks: always logged
    failed = [json.loads(e.data) for e in env.log("user.login_failed", "user:sam")]
    assert [d["failures"] for d in failed] == [1, 3, 1] and failed[-1]["failed_logins"] == 5
    assert "locked_until" in failed[-1]
    with env.sessions.begin() as s:
        accounts.unlock(s, accounts.get_user(s, "sam"), actor="root")
    assert not attempt(63)                                           # within the minute: counted, not logged
    assert len(env.log("user.login_failed", "user:sam")) == 3
    assert attempt(64, PASSWORD)                                     # the login entry carries what is left
    assert json.loads(env.log("user.login", "user:sam")[-1].data) == {"failures_not_logged": 1}
    assert all(e.actor == "sam" for e in env.log("user.login_failed"))


# -- (4) canonical usernames -------------------------------------------------------------------------------
def test_usernames_are_canonical_identities(env):
    root = env.tokens["root"]

    def create(name: str):
        return env.call("POST", "/api/users", root, json={"username": name, "role": "officer"})
    made = create("Nina.K")
    assert made.status_code == 201 and made.json()["username"] == "nina.k"
    for same in ("NINA.K", "nina.K", "ＮＩＮＡ.Ｋ", " nina.k "):            # case, fullwidth forms, spaces
        refused = create(same)
        assert refused.status_code == 400 and "already exists" in refused.json()["detail"], same
    for look_alike in ("nіna.k", "ОLGA", "olga\u200b", "ol ga", "o", "-olga"):   # Ukrainian і, Cyrillic О, ZWSP
        refused = create(look_alike)
        assert refused.status_code == 400 and "not a valid username" in refused.json()["detail"], look_alike
    with env.sessions() as s:
        assert all(accounts.canonical_username(u.username) == u.username for u in s.scalars(select(User)))
    # OLGA is olga: the same session identity, which is what spends compare (requester, approving officer)
    browser = Browser(env.app)
    assert browser.login("OLGA", code=accounts.totp(env.secrets["olga"])).status_code == 303
    assert browser.client.get("/api/me").json() == {"username": "olga", "role": "officer", "via": "session"}
    assert env.call("PATCH", "/api/users/OMAR", root, json={"unlock": True}).json()["username"] == "omar"


def _at_revision(db_url: str, revision: str):
    engine = make_engine(db_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    return engine


def _old_user(connection, name: str, role: str = "officer") -> None:
    from sqlalchemy import text
    connection.execute(text(
        "INSERT INTO users (username, role, password_hash, totp_secret, last_totp_step, failed_logins, disabled, "
        "created_at) VALUES (:name, :role, :hash, NULL, 0, 0, :no, :now)"),
        {"name": name, "role": role, "hash": accounts.hash_password(PASSWORD), "no": False,
         "now": datetime.now(timezone.utc)})


def test_the_migration_canonicalises_usernames_and_the_names_spends_compare(db_url):
    from sqlalchemy import text
    from sqlalchemy.orm import Session
    from custody.ledger import registry
    from custody.bitcoin.policies import build_policy
    from custody.spending.models import Approval, Spend
    engine = _at_revision(db_url, "0008")
    with engine.begin() as connection:
        _old_user(connection, "Olga")
        _old_user(connection, "OMAR")
        _old_user(connection, "Vic", "viewer")
    with Session(engine) as s, s.begin():        # a spend Olga asked for, which OMAR approved
        policy = registry.create_policy(s, "vault", build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=9100)))
        spend = Spend(policy_id=policy.id, requester="Olga", destinations="[]", amount=1, fee_rate_milli=1000)
        s.add(spend)
        s.flush()
        # in SQL: the Approval model has columns of later revisions
        s.execute(text("INSERT INTO approvals (spend_id, officer, decision, at) VALUES (:spend, 'OMAR', 'approve', :at)"),
                  {"spend": spend.id, "at": datetime.now(timezone.utc)})
    engine.dispose()
    sessions = open_database(db_url)
    with sessions() as s:
        assert sorted(s.scalars(select(User.username))) == ["olga", "omar", "vic"]
        assert s.scalar(select(Spend.requester)) == "olga" and s.scalar(select(Approval.officer)) == "omar"
        assert accounts.authenticate(s, "VIC", PASSWORD).username == "vic"      # logs in by any spelling
    sessions.kw["bind"].dispose()


def test_the_migration_refuses_two_spellings_of_one_identity(db_url):
    from sqlalchemy import text
    engine = _at_revision(db_url, "0008")
    with engine.begin() as connection:
        _old_user(connection, "olga")
        _old_user(connection, "OLGA")
        _old_user(connection, "d\u0430na")                    # a Cyrillic а
    engine.dispose()
    with pytest.raises(Exception, match="migration 0009") as refused:
        open_database(db_url)
    message = str(refused.value)
    assert "'olga' and #2 'OLGA' are all 'olga'" in message and "'dаna'" in message and "rename" in message
    engine = make_engine(db_url)
    with engine.connect() as connection:                # nothing changed
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0008"
        assert sorted(connection.execute(text("SELECT username FROM users")).scalars()) == ["OLGA", "dаna", "olga"]
    engine.dispose()


# -- (7) token scopes on token management -----------------------------------------------------------------
def test_viewer_scope_tokens_manage_no_tokens(env):
    with env.sessions.begin() as s:
        narrowed_admin, _ = accounts.create_token(s, accounts.get_user(s, "root"), "dash", role="viewer")
        narrowed_officer, _ = accounts.create_token(s, accounts.get_user(s, "olga"), "dash", role="viewer")
        sams = accounts.list_tokens(s, accounts.get_user(s, "sam"))[0]["id"]
    for token in (narrowed_admin, narrowed_officer, env.tokens["vic"]):
        assert env.call("GET", "/api/tokens", token).status_code == 200          # reading one's own: yes
        made = env.call("POST", "/api/tokens", token, json={"name": "more"})
        assert made.status_code == 403 and "viewer role may not" in made.json()["detail"]
        assert env.call("POST", "/api/tokens", token, json={"name": "more", "role": "viewer"}).status_code == 403
        assert env.call("DELETE", f"/api/tokens/{sams}", token).status_code == 403
        # nor through the console's forms (a bearer token is accepted there too)
        assert env.call("POST", "/account/tokens", token, data={"name": "more", "role": "officer"}).status_code == 403
        assert env.call("POST", f"/account/tokens/{sams}/revoke", token).status_code == 403
    assert env.call("GET", "/api/me", env.tokens["sam"]).status_code == 200     # sam's token still works
    with pytest.raises(CustodyError, match="viewer-scope token cannot make"):
        with env.sessions.begin() as s:
            accounts.create_token(s, accounts.get_user(s, "olga"), "x", role="viewer", scope="viewer")
    with pytest.raises(CustodyError, match="viewer-scope token cannot revoke"):
        with env.sessions.begin() as s:
            accounts.revoke_token(s, sams, by=accounts.get_user(s, "root"), role="viewer")


def test_tokens_make_their_own_role_or_narrower_and_only_admins_revoke_others(env):
    olga, root = env.tokens["olga"], env.tokens["root"]
    assert env.call("POST", "/api/tokens", olga, json={"name": "x", "role": "admin"}).status_code == 400
    narrowed = env.call("POST", "/api/tokens", olga, json={"name": "dash", "role": "viewer"})
    assert narrowed.status_code == 201 and narrowed.json()["role"] == "viewer"
    own = env.call("POST", "/api/tokens", olga, json={"name": "ci"}).json()
    assert own["role"] == "officer"
    with env.sessions() as s:
        sams = accounts.list_tokens(s, accounts.get_user(s, "sam"))[0]["id"]
    assert env.call("DELETE", f"/api/tokens/{sams}", olga).status_code == 404   # not hers
    assert env.call("DELETE", f"/api/tokens/{own['id']}", olga).status_code == 204   # hers
    assert env.call("DELETE", f"/api/tokens/{sams}", root).status_code == 204   # an admin's token may
    assert env.call("GET", "/api/me", env.tokens["sam"]).status_code == 401


# -- (13) passwords ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("password, why", [
    ("000000000000", "Repeats"), ("password1234", "common password"), ("qwertyuiopas", "commonly used"),
    ("olgaolgaolga1", "Repeats"),
])
def test_weak_passwords_are_refused_with_the_reason(env, password, why):
    """A user choosing their own password (here changing it; enrolling checks the same way)."""
    before = env.user("vic").password_hash
    refused = env.call("POST", "/api/me/password", env.tokens["vic"],
                       json={"password": PASSWORD, "new_password": password})
    assert refused.status_code == 400, refused.text
    assert "too easy to guess" in refused.json()["detail"] and why in refused.json()["detail"]
    assert env.user("vic").password_hash == before


def test_strong_passwords_are_accepted_and_short_ones_refused():
    accounts._check_new_password(PASSWORD, "olga")
    accounts._check_new_password("vX9#qL2!rT7@", "olga")
    with pytest.raises(CustodyError, match="at least 12 characters"):
        accounts._check_new_password("vX9#qL2!rT7", "olga")
    with pytest.raises(CustodyError, match="too easy"):
        accounts._check_new_password("0" * 72 + "vX9#qL2!rT7@", "olga")     # judged by its first 72


# -- (13) sessions end when idle --------------------------------------------------------------------------
def test_sessions_end_when_idle_and_are_seen_at_most_once_a_minute(env):
    engine = env.sessions.kw["bind"]
    browser = Browser(env.app)
    assert browser.login("sina").status_code == 303
    cookie = browser.client.cookies.get(SESSION_COOKIE)
    touches = []

    def watch(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("UPDATE LOGIN_SESSIONS"):
            touches.append(statement)

    def set_last_seen(minutes_ago: float):
        with env.sessions.begin() as s:
            s.execute(update(LoginSession).where(LoginSession.id == accounts._sha256(cookie))
                      .values(last_seen_at=datetime.now(timezone.utc) - timedelta(minutes=minutes_ago)))

    def last_seen() -> datetime:
        with env.sessions() as s:
            return accounts._aware(s.get(LoginSession, accounts._sha256(cookie)).last_seen_at)
    event.listen(engine, "before_cursor_execute", watch)
    try:
        for _ in range(5):
            assert browser.client.get("/api/me").status_code == 200
        assert touches == []                                       # fresh: no write per request
        set_last_seen(2)
        touches.clear()
        for _ in range(5):
            assert browser.client.get("/api/me").status_code == 200
        assert len(touches) == 1                                   # one write, then fresh again
        assert datetime.now(timezone.utc) - last_seen() < timedelta(seconds=30)
    finally:
        event.remove(engine, "before_cursor_execute", watch)
    set_last_seen(accounts.SESSION_IDLE.total_seconds() / 60 - 1)
    assert browser.client.get("/api/me").status_code == 200        # active 29 minutes ago: still on
    set_last_seen(accounts.SESSION_IDLE.total_seconds() / 60 + 1)
    assert browser.client.get("/api/me").status_code == 401        # idle 31 minutes: over, and deleted
    with env.sessions() as s:
        assert s.get(LoginSession, accounts._sha256(cookie)) is None
    # the idle time is configurable per app
    env.app.state.session_idle = timedelta(minutes=5)
    assert browser.login("sina").status_code == 303
    cookie = browser.client.cookies.get(SESSION_COOKIE)
    set_last_seen(4)
    assert browser.client.get("/api/me").status_code == 200
    set_last_seen(6)
    assert browser.client.get("/api/me").status_code == 401
    assert browser.client.get("/", follow_redirects=False).headers["location"].startswith("/login")
