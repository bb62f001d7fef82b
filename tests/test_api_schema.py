"""Schemathesis over the OpenAPI schema: generated requests to every API operation, each sent with a
token of a role allowed to perform it, never produce a server error (5xx) or a response the schema
does not describe. The node and database are real, holding a funded policy and a spend."""
from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from coordinator import accounts
from coordinator.app import create_app, node_factory
from coordinator.auth import PERMISSIONS, ROUTE_TABLE
from custody.bitcoin.policies import build_policy
from custody.ledger import registry
from custody.spending import spends
from custody.store.db import open_database
from regtest.testwallet import TestWallet

from .conftest import hd_keys

USERS = {"admin": "root", "officer": "olga", "signatory": "sina", "auditor": "aude", "viewer": "vic"}


@pytest.fixture(scope="module")
def tokens_and_app(node, tmp_path_factory):
    sessions = open_database(f"sqlite:///{tmp_path_factory.mktemp('schema')}/c.db")
    tokens = {}
    with sessions.begin() as s:
        for role, name in USERS.items():
            user, _ = accounts.create_user(s, name, role, "correct horse battery staple")
            tokens[role] = accounts.create_token(s, user, "schemathesis")[0]
        policy = registry.create_policy(s, "vault", build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=6100)))
        registry.set_status(s, policy, "active")
        spends.set_approval_rule(s, policy, required_approvals=1)
        spends.request_spend(s, policy, "olga", [(TestWallet("x").address(), 10_000)], fee_rate=2.0)
    app = create_app(sessions, node_factory(node.url, cookie_file=node.cookie_file), sync_interval=0)
    return tokens, app


@pytest.fixture(scope="module")
def api_schema(tokens_and_app):
    _, app = tokens_and_app
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _fresh_token(app, role: str) -> str:
    """The role's user as the fixture made it (an admin's generated requests may have disabled it,
    changed its role or revoked its tokens), with a new token."""
    from sqlalchemy import update
    from custody.people.models import User
    with app.state.sessions.begin() as s:
        s.execute(update(User).where(User.username == USERS[role]).values(role=role, disabled=False))
        return accounts.create_token(s, accounts.get_user(s, USERS[role]), "schemathesis")[0]


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.mark.parametrize("role", list(USERS))
def test_every_role_gets_only_documented_answers(api_schema, tokens_and_app, role):
    """Generated requests to every operation, authenticated as `role`: never a 5xx, and every answer
    (the refusals included: 400, 401, 403, 404, 413, 422, 429, 503 ...) is one the schema declares,
    with the content type and body it declares. A role the table refuses gets 403 on every case."""
    tokens, app = tokens_and_app
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 45
    actions = {(m, p): action for m, p, action in ROUTE_TABLE}
    failures = []
    with TestClient(app, raise_server_exceptions=False) as client:
        for operation in operations:
            allowed = role in PERMISSIONS[actions[(operation.method.upper(), operation.path)]]
            headers = {"authorization": f"Bearer {_fresh_token(app, role)}"}
            statuses = []

            @hypothesis.given(case=operation.as_strategy())
            @hypothesis.settings(max_examples=20 if allowed else 3, deadline=None, derandomize=True,
                                 database=None, suppress_health_check=list(hypothesis.HealthCheck))
            def check(case):
                response = case.call(session=client, headers=headers)
                statuses.append(response.status_code)
                case.validate_response(response, checks=CHECKS)

            try:
                check()
            except (Exception, BaseExceptionGroup) as e:    # every operation's failure, not only the first
                failures.append(f"{operation.method.upper()} {operation.path}: {str(e)[:600]}")
                continue
            if not allowed and set(statuses) - {403, 422, 413}:
                failures.append(f"{operation.method.upper()} {operation.path}: {role} got {sorted(set(statuses))}")
    assert not failures, "\n".join(failures)
