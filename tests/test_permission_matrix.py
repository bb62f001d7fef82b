"""The permission table is pinned by an independent specification (issue 17, item 6): docs/permissions.md,
a role x action matrix written and reviewed by hand. `auth.PERMISSIONS` must equal it exactly, every live
route must answer 403 exactly where it says no, and separation of duties holds through the API: an admin
moves no money, nobody approves their own request, signatories, auditors and viewers approve nothing.
The checkers are tested too: a table that lets a viewer or an admin approve spends is caught."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import select

from coordinator import auth
from coordinator.auth import ROUTE_ACCESS, ROUTE_TABLE

from custody.bitcoin.policies import build_policy
from custody.ledger import registry
from custody.people import credentials
from custody.people.models import User
from custody.spending import spends

from .approval_keys import ed25519_key
from .conftest import fund_policy, hd_keys
from .test_api import ROLE_USER, _concrete, _request, _served_routes, coins, service  # noqa: F401

MATRIX_FILE = Path(__file__).resolve().parents[1] / "docs" / "permissions.md"
COLUMNS = ("anonymous", "admin", "officer", "signatory", "auditor", "viewer")
ROLES = COLUMNS[1:]


def read_matrix(text: str) -> dict[str, frozenset[str]]:
    """action -> the roles (and "anonymous") whose cell says yes, from the document's one table."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.lstrip().startswith("|")]
    header, rule, *body = rows
    assert header[:len(COLUMNS) + 1] == ["action", *COLUMNS], f"unexpected columns {header}"
    assert all(re.fullmatch(r":?-+:?", cell) for cell in rule)
    matrix: dict[str, frozenset[str]] = {}
    for row in body:
        action, cells = row[0].strip("`"), row[1:len(COLUMNS) + 1]
        assert action not in matrix, f"action {action} has two rows"
        assert all(cell in ("yes", "no") for cell in cells), f"{action}: cells are yes or no, not {cells}"
        matrix[action] = frozenset(who for who, cell in zip(COLUMNS, cells) if cell == "yes")
    return matrix


MATRIX = read_matrix(MATRIX_FILE.read_text())


def table_differences(permissions: dict, matrix: dict) -> list[str]:
    """Every way a permission table departs from the matrix, one line each (empty: they agree)."""
    out = [f"{a}: in PERMISSIONS, no row in docs/permissions.md" for a in sorted(set(permissions) - set(matrix))]
    out += [f"{a}: in docs/permissions.md, not in PERMISSIONS" for a in sorted(set(matrix) - set(permissions))]
    for action in sorted(set(permissions) & set(matrix)):
        for who in COLUMNS:
            table, spec = who in permissions[action], who in matrix[action]
            if table != spec:
                out.append(f"{action}: PERMISSIONS {'lets' if table else 'refuses'} {who}, the matrix says "
                           f"{'yes' if spec else 'no'}")
    return out


def live_routes(app) -> list[tuple[str, str, str]]:
    """(method, path, action) of every route the app serves (included routers too), by its permission
    entry; a served route without one fails here."""
    found = []
    for r in _served_routes(app.routes):
        for method in sorted(getattr(r, "methods", ()) or ()):
            if method == "HEAD" or r.path.startswith(("/static", "/docs", "/redoc", "/openapi")):
                continue
            assert (method, r.path) in ROUTE_ACCESS, f"{method} {r.path} is served without a permission entry"
            found.append((method, r.path, ROUTE_ACCESS[(method, r.path)][0]))
    return found


def route_differences(service, matrix: dict, routes) -> list[str]:
    """Call each route as each role (and anonymously): 403 (anonymous: 401, or the login redirect for a
    page) exactly where the matrix says no, neither where it says yes."""
    out = []
    for method, path, action in routes:
        page = ROUTE_ACCESS[(method, path)][1]
        for who in COLUMNS:
            name = None if who == "anonymous" else ROLE_USER[who]
            answer = service.call(method, _concrete(path), name, json={} if method != "GET" else None)
            assert answer.status_code < 500, (method, path, who, answer.text)
            refused = answer.status_code == 403 or (who == "anonymous" and answer.status_code in (401, 303))
            if refused != (who not in matrix[action]):
                out.append(f"{method} {path} ({action}) as {who}: {answer.status_code}, the matrix says "
                           f"{'yes' if who in matrix[action] else 'no'}")
            elif refused and who != "anonymous":
                assert f"the {who} role may not" in answer.text, (method, path, who, answer.text)
    return out


def test_the_matrix_is_a_reviewed_document_with_every_role():
    assert len(MATRIX) >= 40 and MATRIX["public"] == frozenset(COLUMNS)
    assert all("anonymous" not in roles for action, roles in MATRIX.items() if action != "public")


def test_permissions_equal_the_matrix_exactly():
    assert table_differences(auth.PERMISSIONS, MATRIX) == []


def test_every_live_route_answers_as_the_matrix_says(service):
    routes = live_routes(service.client.app)
    assert len(routes) >= 60 and {(m, p) for m, p, _ in routes} <= {(m, p) for m, p, _ in ROUTE_TABLE}
    assert route_differences(service, MATRIX, routes) == []


def test_the_checkers_catch_a_table_that_lets_a_viewer_or_an_admin_approve(service, monkeypatch):
    """The attack on the old test: a wrong table. Both checkers name it; the live route admits the wrong
    roles (the table is read per request), and the route checker reports exactly that."""
    monkeypatch.setitem(auth.PERMISSIONS, "spend.decide", ("officer", "viewer", "admin"))
    assert table_differences(auth.PERMISSIONS, MATRIX) == [
        "spend.decide: PERMISSIONS lets admin, the matrix says no",
        "spend.decide: PERMISSIONS lets viewer, the matrix says no"]
    approve = [("POST", "/api/spends/{spend_id}/approve", "spend.decide")]
    reported = route_differences(service, MATRIX, approve)
    assert [line.split(":")[0] for line in reported] == [
        "POST /api/spends/{spend_id}/approve (spend.decide) as admin",
        "POST /api/spends/{spend_id}/approve (spend.decide) as viewer"], reported
    assert all(line.endswith("the matrix says no") for line in reported)
    monkeypatch.delitem(auth.PERMISSIONS, "reserves.schedule")
    assert "reserves.schedule: in docs/permissions.md, not in PERMISSIONS" in table_differences(auth.PERMISSIONS,
                                                                                                  MATRIX)
    assert read_matrix(MATRIX_FILE.read_text().replace("| `rule.write` | no | yes |", "| `rule.write` | no | no |"))[
        "rule.write"] == frozenset()


def test_the_matrix_separates_duties():
    moves_money = ("spend.request", "spend.decide", "spend.operate", "psbt.upload", "device.sign", "utxo.write",
                   "mining.sweep")
    assert [a for a in moves_money if "admin" in MATRIX[a]] == []
    assert [who for who in COLUMNS if who in MATRIX["spend.decide"]] == ["officer"]
    assert [a for a, roles in MATRIX.items() if "viewer" in roles and not a.endswith((".read", ".self"))
            and a not in ("public", "me", "psbt.tools", "metrics")] == []
    assert [a for a, roles in MATRIX.items() if "auditor" in roles and a.endswith((".write", ".decide", ".operate",
                                                                                   ".request", ".sign"))] == \
        ["token.write"]


@pytest.fixture
def funded(service, rpc, wallet, coins, other_address):
    """A 2-of-3 policy holding 1, 2 and 3 BTC with a one-approval rule; omar has an approval key file."""
    spec = build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=6100))
    with service.sessions.begin() as s:
        policy = registry.create_policy(s, "vault", spec)
        registry.set_status(s, policy, "active")
        spends.set_approval_rule(s, policy, required_approvals=1)
        omar = s.scalar(select(User).where(User.username == "omar"))
        credentials.enroll_key(s, omar, ed25519_key("omar").verify_key.encode().hex(), label="key file", actor="omar")
    fund_policy(rpc, wallet, coins.pop(), spec, other_address)
    assert service.call("POST", "/api/sync", "olga").status_code == 200


def test_separation_of_duties_through_the_api(service, funded):
    """An admin requests, approves, operates and signs nothing; an officer cannot approve their own
    request; signatories, auditors and viewers approve nothing; the requester's colleague can."""
    made = _request(service)
    assert made.status_code == 201, made.text
    sid = made.json()["id"]
    before = service.log_entries()
    for path in ("/api/spends", "/api/spends/preview"):
        answer = service.call("POST", path, "root", json={"policy": "vault", "to": [], "fee_rate": 2})
        assert answer.status_code == 403 and "the admin role may not" in answer.json()["detail"]
    for who in ("root", "sina", "aude", "vic"):
        for verb in ("approve", "reject"):
            answer = service.call("POST", f"/api/spends/{sid}/{verb}", who)
            assert answer.status_code == 403, (who, verb, answer.text)
    for verb in ("psbt", "broadcast", "cancel", "signatures"):
        assert service.call("POST", f"/api/spends/{sid}/{verb}", "root").status_code == 403, verb
    assert service.call("POST", f"/api/spends/{sid}/devices/any/sign", "root").status_code == 403
    own = service.call("POST", f"/api/spends/{sid}/approve", "olga", json={"proof": {}})   # olga requested it
    assert own.status_code == 400, own.text
    assert own.json()["detail"] == "the requester cannot approve or reject their own spend"
    assert service.call("POST", f"/api/spends/{sid}/reject", "olga").status_code == 400
    assert service.log_entries() == before
    assert service.call("GET", f"/api/spends/{sid}", "olga").json()["approvals"] == []
    message = service.call("POST", f"/api/spends/{sid}/approval-request", "omar").json()["message"].encode()
    key = ed25519_key("omar")
    other = service.call("POST", f"/api/spends/{sid}/approve", "omar", json={"proof": {
        "kind": "ed25519", "public_key": key.verify_key.encode().hex(), "signature": key.sign(message).signature.hex()}})
    assert other.status_code == 200 and other.json()["state"] in ("approved", "signing"), other.text
