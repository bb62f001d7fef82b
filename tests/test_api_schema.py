"""Schemathesis over the OpenAPI schema: generated requests to every API operation, each sent with a
token of a role allowed to perform it, never produce a server error (5xx) or a response the schema
does not describe. The node and database are real, holding a funded policy and a spend."""
from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis.checks import not_a_server_error

from coordinator.app import create_app, node_factory
from coordinator.auth import PERMISSIONS, ROUTE_TABLE
from custody import accounts, registry, spends
from custody.db import open_database
from custody.policies import build_policy
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


def _role_for(method: str, path: str) -> str:
    """A role the permission table allows for this operation (the least powerful that may)."""
    actions = {(m, p): action for m, p, action in ROUTE_TABLE}
    allowed = PERMISSIONS[actions[(method.upper(), path)]]
    for role in ("viewer", "auditor", "signatory", "officer", "admin"):
        if role in allowed:
            return role
    return "viewer"


def test_no_server_errors(api_schema, tokens_and_app):
    tokens, app = tokens_and_app
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 45
    failures = []
    with TestClient(app, raise_server_exceptions=False) as client:
        for operation in operations:
            role = _role_for(operation.method, operation.path)
            headers = {"authorization": f"Bearer {tokens[role]}"}

            @hypothesis.given(case=operation.as_strategy())
            @hypothesis.settings(max_examples=25, deadline=None, derandomize=True, database=None,
                                 suppress_health_check=list(hypothesis.HealthCheck))
            def check(case):
                response = case.call(session=client, headers=headers)
                case.validate_response(response, checks=[not_a_server_error])

            try:
                check()
            except Exception as e:        # collect every operation's failure, not only the first
                failures.append(f"{operation.method.upper()} {operation.path}: {str(e)[:500]}")
    assert not failures, "\n".join(failures)
