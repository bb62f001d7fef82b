"""The service when what it stands on fails: a Bitcoin node that hangs, a database that refuses
writes or is gone. Each answer is a 503 with a reason, nothing is changed, and pages that need only
the database keep answering while the node hangs."""
from __future__ import annotations

import os
import signal
import threading

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, event, func, select
from sqlalchemy.orm import sessionmaker

from coordinator import accounts
from coordinator.app import create_app, node_factory
from custody.people.models import User
from custody.store.db import make_engine, open_database
from regtest.launcher import start_node

PASSWORD = "correct horse battery staple"


def _with_token(sessions, name="olga", role="officer") -> dict:
    with sessions.begin() as s:
        user, _ = accounts.create_user(s, name, role, PASSWORD)
        token, _ = accounts.create_token(s, user, "test")
    return {"authorization": f"Bearer {token}"}


def _read_only(db_url: str):
    """The same database, as a server that answers reads and refuses every write (a full disk, a
    read-only volume, a standby promoted away): SQLite's query_only, PostgreSQL's read-only default."""
    engine = make_engine(db_url)

    @event.listens_for(engine, "connect")
    def _refuse_writes(conn, _record):
        cur = conn.cursor()
        cur.execute("PRAGMA query_only=ON" if db_url.startswith("sqlite") else "SET default_transaction_read_only=on")
        cur.close()
        if not db_url.startswith("sqlite"):
            conn.commit()
    return sessionmaker(engine, expire_on_commit=False)


def test_a_database_that_refuses_writes_answers_503_and_health_says_so(db_url, node):
    writable = open_database(db_url)
    headers = _with_token(writable, "root", "admin")
    app = create_app(_read_only(db_url), node_factory(node.url, cookie_file=node.cookie_file), sync_interval=0)
    with TestClient(app) as client:
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        assert health.json()["database"]["ok"] is False and health.json()["node"]["ok"] is True
        assert "read" in health.json()["database"]["error"].lower()      # read-only / readonly
        assert client.get("/api/spends", headers=headers).status_code == 200     # reads still work
        created = client.post("/api/users", headers=headers,
                              json={"username": "newbie", "role": "viewer"})
        assert created.status_code == 503, created.text
        detail = created.json()["detail"]
        assert detail.startswith("the database is not available: ") and detail.endswith("nothing was changed")
    with writable() as s:
        assert s.scalars(select(User.username)).all() == ["root"]


def test_a_database_that_is_gone_answers_503(node, tmp_path):
    from regtest.launcher import free_port
    gone = sessionmaker(create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/custody",
                                      pool_pre_ping=True), expire_on_commit=False)
    app = create_app(gone, node_factory(node.url, cookie_file=node.cookie_file), sync_interval=0)
    with TestClient(app) as client:
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["database"]["ok"] is False
        elsewhere = _with_token(open_database(f"sqlite:///{tmp_path}/other.db"))    # a well-formed token
        answer = client.get("/api/spends", headers=elsewhere)
        assert answer.status_code == 503 and "the database is not available" in answer.json()["detail"]
        assert "Traceback" not in answer.text


@pytest.fixture
def own_node(tmp_path):
    """A node of this test's own, which it stops (SIGSTOP) to make it hang."""
    running = start_node(tmp_path / "node")
    yield running
    os.kill(running.process.pid, signal.SIGCONT)
    running.stop()


def test_a_hung_node_keeps_database_pages_answering(own_node, tmp_path):
    """Six node calls wait on a stopped node; pages that read only the database still answer, before
    any node call has timed out, and new node calls are refused at once with a reason."""
    sessions = open_database(f"sqlite:///{tmp_path}/custody.db")
    headers = _with_token(sessions)
    app = create_app(sessions, node_factory(own_node.url, cookie_file=own_node.cookie_file), sync_interval=0)
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        os.kill(own_node.process.pid, signal.SIGSTOP)          # the node stops answering, keeps its socket
        answers = []
        callers = [threading.Thread(target=lambda: answers.append(client.get("/health"))) for _ in range(6)]
        for t in callers:
            t.start()
        listed = [client.get("/api/spends", headers=headers) for _ in range(5)]
        assert all(r.status_code == 200 for r in listed)
        timed_out = [a for a in answers if "did not answer within" in a.json()["node"].get("error", "")]
        assert timed_out == [] and any(t.is_alive() for t in callers), \
            "the database pages waited for node calls to time out"
        refused = client.get("/health")
        assert refused.status_code == 503 and "has not answered a call" in refused.json()["node"]["error"]
        assert any(t.is_alive() for t in callers)
        os.kill(own_node.process.pid, signal.SIGCONT)           # it answers again: so does everything
        for t in callers:
            t.join(60)
        assert len(answers) == 6 and client.get("/health").status_code == 200
