"""The accounts tests' world: the app on a fresh database with no node (nothing there asks one), and a
user with a token per named role, all enrolled with one password."""
from __future__ import annotations

from contextlib import contextmanager

from fastapi.testclient import TestClient
from sqlalchemy import select

from coordinator import accounts
from coordinator.app import create_app, node_factory
from custody.people.models import User
from custody.store.db import open_database

PASSWORD = "correct horse battery staple"


class AccountEnv:
    def __init__(self, app, sessions, tokens, secrets_):
        self.app, self.sessions, self.tokens, self.secrets = app, sessions, tokens, secrets_
        self.client = TestClient(app)

    def call(self, method: str, path: str, token: str | None = None, **kw):
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return self.client.request(method, path, headers=headers, follow_redirects=False, **kw)

    def user(self, name: str) -> User:
        with self.sessions() as s:
            return s.scalar(select(User).where(User.username == name))


@contextmanager
def account_env(db_url: str, users, env_class=AccountEnv):
    """`env_class` over the app, with (name, role) `users` created; the database closed afterwards."""
    sessions = open_database(db_url)
    tokens, secrets_ = {}, {}
    with sessions.begin() as s:
        for name, role in users:
            user, secrets_[name] = accounts.create_user(s, name, role, PASSWORD)
            tokens[name], _ = accounts.create_token(s, user, "test")
    app = create_app(sessions, node_factory("http://127.0.0.1:9"), sync_interval=0)
    try:
        yield env_class(app, sessions, tokens, secrets_)
    finally:
        sessions.kw["bind"].dispose()
