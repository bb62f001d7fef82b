"""A database that refuses (read-only, corrupt, not running, read-only by the server's setting) makes
the `custody` command line print one line naming the database without its password, and exit 1,
never a traceback."""
from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest

from regtest.launcher import free_port


def custody(db_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUSTODY_DB": db_url, "CUSTODY_NODE": "http://127.0.0.1:9", "CUSTODY_RPCUSER": "u",
           "CUSTODY_RPCPASSWORD": "p"}
    return subprocess.run([sys.executable, "-m", "coordinator.cli.main", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def refused_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("{")]  # the worker's JSON log
    assert len(lines) == 1 and lines[0].startswith("custody: error: the database refused: "), result.stderr
    return lines[0]


@pytest.fixture
def read_only_sqlite(tmp_path):
    """A migrated SQLite database the process cannot write: immutable (chattr +i) as root, whom file
    modes do not stop; read-only modes otherwise."""
    path = tmp_path / "custody.db"
    assert custody(f"sqlite:///{path}", "key", "list").returncode == 0
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("running as root on a file system without immutable files (chattr +i)")
        yield path
        subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        path.chmod(0o444)
        yield path
        path.chmod(0o644)


def test_a_read_only_sqlite_database(read_only_sqlite):
    result = custody(f"sqlite:///{read_only_sqlite}", "user", "add", "zed", "--role", "viewer")
    assert refused_line(result) == (f"custody: error: the database refused: attempt to write a readonly database "
                                    f"(sqlite:///{read_only_sqlite})")


@pytest.mark.parametrize("command", [["key", "list"], ["worker"], ["serve", "--port", "0"]])
def test_a_corrupt_sqlite_file(tmp_path, command):
    path = tmp_path / "custody.db"
    path.write_bytes(b"this is not a database\0" * 200)
    assert "file is not a database" in refused_line(custody(f"sqlite:///{path}", *command))


def test_a_postgresql_server_that_is_not_running_and_the_password_is_not_shown():
    url = f"postgresql://treasury:s3cret-pw@127.0.0.1:{free_port()}/custody"
    line = refused_line(custody(url, "balance"))
    assert "Connection refused" in line and "s3cret-pw" not in line
    assert line.endswith(f"(postgresql://treasury:***@{url.split('@')[1]})")


def test_a_postgresql_database_the_server_keeps_read_only(postgres_server):
    name = f"custody_read_only_{os.getpid()}"
    url = f"{postgres_server}/{name}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    assert custody(url, "key", "list").returncode == 0            # migrated while writable
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
    line = refused_line(custody(url, "user", "add", "zed", "--role", "viewer"))
    assert "read-only transaction" in line and line.endswith(f"({url})")
