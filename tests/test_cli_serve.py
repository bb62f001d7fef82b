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

from custody import accounts
from regtest.launcher import free_port

from .support import stop, wait_healthy, wait_until


def run(node, db_url, *args, stdin=None, check=True):
    env = {**os.environ, "CUSTODY_DB": db_url, "CUSTODY_NODE": node.url, "CUSTODY_NODE_COOKIE": str(node.cookie_file)}
    result = subprocess.run([sys.executable, "-m", "custody.cli", "--json", *args], capture_output=True, text=True,
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


def test_accounts_and_tokens_from_the_cli_then_served(node, db, tmp_path):
    officer = run(node, db, "user", "add", "olga", "--role", "officer")
    assert officer["role"] == "officer" and len(officer["password"]) >= 12 and len(officer["totp_secret"]) == 32
    assert officer["totp_uri"].startswith("otpauth://totp/Custody:olga?secret=")
    viewer = run(node, db, "user", "add", "vic", "--role", "viewer", "--password-stdin", stdin="a long passphrase here\n")
    assert "password" not in viewer and "totp_secret" not in viewer
    short = run(node, db, "user", "add", "tiny", "--role", "viewer", "--password-stdin", stdin="short\n", check=False)
    assert short.returncode == 1 and short.stderr.strip() == "custody: error: a password has at least 12 characters"
    dup = run(node, db, "user", "add", "olga", "--role", "viewer", check=False)
    assert dup.returncode == 1 and "already exists" in dup.stderr
    token = run(node, db, "token", "create", "olga", "--name", "ci", "--days", "7")["token"]
    refused = run(node, db, "token", "create", "vic", "--name", "x", "--role", "admin", check=False)
    assert refused.returncode == 1 and "viewer, not admin" in refused.stderr
    assert [u["username"] for u in run(node, db, "user", "list")] == ["olga", "vic"]

    port = free_port()
    env = {**os.environ, "CUSTODY_NODE_COOKIE": str(node.cookie_file)}
    out, err = tmp_path / "serve.out", tmp_path / "serve.err"     # files, not pipes: nothing blocks the server
    with open(out, "w") as stdout, open(err, "w") as stderr:
        server = subprocess.Popen([sys.executable, "-m", "custody.cli", "serve", "--db", db, "--node", node.url,
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
    result = subprocess.run([sys.executable, "-m", "custody.cli", "serve", "--db", db, "--node", node.url,
                             "--tls-cert", str(tmp_path / "cert.pem")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.strip() == "custody: error: TLS needs both --tls-cert and --tls-key"
    assert not (tmp_path / "custody.db").exists()


def test_totp_codes_from_the_printed_secret_log_in(node, db):
    officer = run(node, db, "user", "add", "omar", "--role", "officer")
    from custody.db import open_database
    sessions = open_database(db)
    with sessions() as s:
        user = accounts.authenticate(s, "omar", officer["password"], accounts.totp(officer["totp_secret"]))
        assert user.username == "omar"
