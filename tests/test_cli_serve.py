"""The command line's side of the console: accounts and tokens made with `custody user` and
`custody token`, then used against `custody serve` running as its own process, exactly as an
operator sets it up; and a refused `serve` leaves nothing behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from coordinator import accounts
from regtest.launcher import free_port

from .support import stop, wait_healthy, wait_until


def run(node, db_url, *args, stdin=None, check=True):
    env = {**os.environ, "CUSTODY_DB": db_url, "CUSTODY_NODE": node.url, "CUSTODY_NODE_COOKIE": str(node.cookie_file)}
    result = subprocess.run([sys.executable, "-m", "coordinator.cli.main", "--json", *args], capture_output=True, text=True,
                            env=env, input=stdin, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)
    return result


def get(url: str, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def db(tmp_path):
    return f"sqlite:///{tmp_path}/custody.db"


def enroll(db_url, link: str, password: str, secret: str | None = None) -> None:
    """What the holder does on the link the CLI printed (the page is tested in test_account_enrollment)."""
    from custody.store.db import open_database
    sessions = open_database(db_url)
    with sessions.begin() as s:
        accounts.complete_enrollment(s, link.rsplit("/", 1)[1], password, totp_secret=secret,
                                     code=accounts.totp(secret) if secret else None)
    sessions.kw["bind"].dispose()


def test_accounts_and_tokens_from_the_cli_then_served(node, db, tmp_path):
    officer = run(node, db, "user", "add", "olga", "--role", "officer")
    assert officer["role"] == "officer" and officer["enrollment_link"].startswith("http://127.0.0.1:8000/enroll/")
    assert not {"password", "totp_secret", "totp_uri"} & set(officer)         # the admin learns no credential
    viewer = run(node, db, "user", "add", "vic", "--role", "viewer", "--url", "https://custody.example")
    assert viewer["enrollment_link"].startswith("https://custody.example/enroll/")
    bad = run(node, db, "user", "add", "bad name!", "--role", "viewer", check=False)
    assert bad.returncode == 1 and "is not a valid username" in bad.stderr and len(bad.stderr.splitlines()) == 1
    dup = run(node, db, "user", "add", "olga", "--role", "viewer", check=False)
    assert dup.returncode == 1 and "already exists" in dup.stderr
    waiting = run(node, db, "token", "create", "olga", "--name", "ci", check=False)
    assert waiting.returncode == 1 and "has not enrolled yet" in waiting.stderr
    enroll(db, officer["enrollment_link"], "a long passphrase here", accounts.new_totp_secret())
    enroll(db, viewer["enrollment_link"], "another long passphrase")
    token = run(node, db, "token", "create", "olga", "--name", "ci", "--days", "7")["token"]
    refused = run(node, db, "token", "create", "vic", "--name", "x", "--role", "admin", check=False)
    assert refused.returncode == 1 and "viewer, not admin" in refused.stderr
    assert [u["username"] for u in run(node, db, "user", "list")] == ["olga", "vic"]

    port = free_port()
    env = {**os.environ, "CUSTODY_NODE_COOKIE": str(node.cookie_file)}
    out, err = tmp_path / "serve.out", tmp_path / "serve.err"     # files, not pipes: nothing blocks the server
    with open(out, "w") as stdout, open(err, "w") as stderr:
        server = subprocess.Popen([sys.executable, "-m", "coordinator.cli.main", "serve", "--db", db, "--node", node.url,
                                   "--port", str(port), "--workers", "2", "--sync-interval", "0.5"],
                                  env=env, stdout=stdout, stderr=stderr)
    try:
        base = f"http://127.0.0.1:{port}"
        health = wait_healthy(base, server, (out, err))
        assert health["node"]["ok"] and health["database"]["ok"]
        assert get(base + "/api/me", token) == (200, {"username": "olga", "role": "officer", "via": "token"})
        assert get(base + "/api/me")[0] == 401
        wait_until(lambda: get(base + "/health")[1]["database"]["ledger_height"] == health["node"]["height"],
                   what="the service's own sync loop reaching the node's tip", process=server, logs=(out, err),
                   retry_on=(OSError, KeyError))
    finally:
        stop(server)
    logs = [json.loads(line) for line in err.read_text().splitlines() if line.startswith("{")]
    requests = [entry for entry in logs if entry.get("message") == "request"]
    assert {"method", "path", "status", "duration_ms", "user"} <= set(requests[0])
    assert any(entry["user"] == "olga" and entry["path"] == "/api/me" for entry in requests)


def test_serve_refuses_half_a_tls_configuration(node, db, tmp_path):
    result = subprocess.run([sys.executable, "-m", "coordinator.cli.main", "serve", "--db", db, "--node", node.url,
                             "--tls-cert", str(tmp_path / "cert.pem")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.strip() == "custody: error: TLS needs both --tls-cert and --tls-key"
    assert not (tmp_path / "custody.db").exists()


def test_an_account_added_on_the_cli_logs_in_with_what_its_holder_chose(node, db):
    officer = run(node, db, "user", "add", "omar", "--role", "officer")
    secret = accounts.new_totp_secret()
    enroll(db, officer["enrollment_link"], "a long passphrase here", secret)
    from custody.store.db import open_database
    sessions = open_database(db)
    with sessions() as s:
        user = accounts.authenticate(s, "omar", "a long passphrase here", accounts.totp(secret, step_offset=1))
        assert user.username == "omar"
    # reset from the CLI: the old credentials stop working, a new link is printed
    reset = run(node, db, "user", "reset", "omar")
    assert "/enroll/" in reset["enrollment_link"] and reset["enrollment_link"] != officer["enrollment_link"]
    with sessions() as s, pytest.raises(accounts.AuthError):
        accounts.authenticate(s, "omar", "a long passphrase here", accounts.totp(secret, step_offset=2))
    sessions.kw["bind"].dispose()
