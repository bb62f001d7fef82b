"""Governance changes under a quorum (issue 17, item 3): approval rules, policies' and devices' status,
users' roles and the quorum settings change only when admins or officers other than the proposer approve;
a loosening change waits, a tightening one takes effect at once; execution happens once; every step is
in the event log. Through the domain, the API as several users, the console and the CLI."""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from coordinator import accounts
from coordinator.cli.main import main as cli_main
from custody.bitcoin.policies import build_policy
from custody.devices import inventory as devices
from custody.errors import CustodyError
from custody.eventlog.log import verify as verify_log
from custody.eventlog.models import EventLogEntry
from custody.governance import proposals as governance
from custody.ledger import registry
from custody.spending import spends
from custody.spending.models import ApprovalRule
from custody.store.db import open_database

from .concurrency import at_once
from .conftest import hd_keys

PASSWORD = "correct horse battery staple"
PEOPLE = [("root", "admin"), ("ada", "admin"), ("olga", "officer"), ("omar", "officer"), ("sina", "signatory"),
          ("aude", "auditor"), ("vic", "viewer")]
RULE = {"required_approvals": 2, "per_request_limit": 100_000_000, "daily_limit": 500_000_000,
        "allow_list": None, "delay_threshold": 200_000_000, "delay_seconds": 3600}


# -- what loosens ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, loosens", [
    ({}, False),
    ({"required_approvals": 3}, False),
    ({"required_approvals": 1}, True),
    ({"per_request_limit": 50_000_000}, False),
    ({"per_request_limit": 150_000_000}, True),
    ({"per_request_limit": None}, True),                  # the limit removed
    ({"daily_limit": 600_000_000}, True),
    ({"daily_limit": None}, True),
    ({"allow_list": ["bcrt1qa"]}, False),                 # an allow-list where any destination went
    ({"delay_threshold": 100_000_000}, False),
    ({"delay_threshold": 300_000_000}, True),
    ({"delay_threshold": None}, True),                    # no delay at all
    ({"delay_seconds": 7200}, False),
    ({"delay_seconds": 60}, True),
])
def test_approval_rule_changes_that_loosen(change, loosens):
    assert governance.is_loosening("approval_rule", RULE, {**RULE, **change}) is loosens


def test_what_else_loosens():
    listed = {**RULE, "allow_list": ["bcrt1qa", "bcrt1qb"]}
    assert governance.is_loosening("approval_rule", listed, {**listed, "allow_list": ["bcrt1qa"]}) is False
    assert governance.is_loosening("approval_rule", listed, {**listed, "allow_list": ["bcrt1qa", "bcrt1qc"]})
    assert governance.is_loosening("approval_rule", listed, {**listed, "allow_list": None})
    assert governance.is_loosening("approval_rule", None, RULE)          # no rule was no spend at all
    assert governance.is_loosening("policy_status", {"status": "retiring"}, {"status": "active"})
    assert not governance.is_loosening("policy_status", {"status": "active"}, {"status": "retiring"})
    assert governance.is_loosening("device_status", {"status": "suspended"}, {"status": "active"})
    assert not governance.is_loosening("device_status", {"status": "active"}, {"status": "revoked"})
    assert governance.is_loosening("user_role", {"role": "viewer"}, {"role": "admin"})
    assert governance.is_loosening("user_role", {"role": "admin"}, {"role": "officer"})   # officers move money
    assert not governance.is_loosening("user_role", {"role": "admin"}, {"role": "viewer"})
    settings = {"quorum": 2, "loosen_delay": 86400}
    assert governance.is_loosening("settings", settings, {**settings, "quorum": 1})
    assert governance.is_loosening("settings", settings, {**settings, "loosen_delay": 3600})
    assert not governance.is_loosening("settings", settings, {"quorum": 3, "loosen_delay": 90000})


# -- the domain --------------------------------------------------------------------------------------------
@pytest.fixture
def sessions(db_url):
    """A fresh database: the people above, an active policy "vault" with a 2-approval rule, a device."""
    made = open_database(db_url)
    secrets = {}
    with made.begin() as s:
        for name, role in PEOPLE:
            secrets[name] = accounts.create_user(s, name, role, PASSWORD)[1]
        policy = registry.create_policy(s, "vault", build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=8100)))
        registry.set_status(s, policy, "active")
        spends.set_approval_rule(s, policy, required_approvals=2, per_request_limit=100_000_000)
        devices.issue(s, model="reference", serial="RS-1", to="sina", actor="root")
    made.secrets = secrets
    return made


def rule_of(s) -> ApprovalRule:
    return s.get(ApprovalRule, registry.get_policy(s, "vault").id)


def steps(s, proposal_id: int) -> list[tuple[str, str]]:
    return [(e.kind, e.actor) for e in s.scalars(select(EventLogEntry).where(
        EventLogEntry.subject == f"proposal:{proposal_id}").order_by(EventLogEntry.seq))]


def test_a_tightening_rule_waits_for_another_person_then_takes_effect_at_once(sessions):
    with sessions.begin() as s:
        # a rule is stated whole: leaving out the per-request limit would remove it, which loosens
        dropped = governance.propose(s, "approval_rule", "vault", governance.rule_change(approvals=3), "root")
        assert dropped.loosening
        governance.cancel(s, dropped.id, "root")
        pid = governance.propose(s, "approval_rule", "vault", governance.rule_change(approvals=3, per_request="1"),
                                 "ROOT").id
    with sessions.begin() as s:
        assert rule_of(s).required_approvals == 2                       # nothing changed yet
        shown = governance.proposal_json(s, governance.get(s, pid))
        assert shown["state"] == "pending" and shown["proposer"] == "root" and shown["waiting_for"] == 1
        assert shown["loosening"] is False
    for person in ("root", "Root"):                                     # the proposer, in any spelling
        with pytest.raises(CustodyError, match="proposer cannot approve"), sessions.begin() as s:
            governance.approve(s, pid, person)
    for person in ("sina", "aude", "vic"):                              # signatory, auditor, viewer
        with pytest.raises(CustodyError, match="only admins and officers"), sessions.begin() as s:
            governance.approve(s, pid, person)
    with pytest.raises(CustodyError, match="no user"), sessions.begin() as s:
        governance.approve(s, pid, "nobody")
    with sessions.begin() as s:
        assert governance.approve(s, pid, "olga").state == "scheduled"
    with pytest.raises(CustodyError, match="is scheduled"), sessions.begin() as s:
        governance.approve(s, pid, "omar")                              # settled: no more decisions
    done = governance.run_due(sessions)
    assert [p["state"] for p in done] == ["executed"]
    with sessions() as s:
        assert rule_of(s).required_approvals == 3
        assert steps(s, pid) == [("governance.proposed", "root"), ("governance.approved", "olga"),
                                 ("governance.scheduled", "olga"), ("governance.executed", "coordinator")]
        rule_set = s.scalars(select(EventLogEntry).where(EventLogEntry.kind == "approval_rule.set")).all()
        assert rule_set[-1].actor == "root" and json.loads(rule_set[-1].data)["required_approvals"] == 3
        assert verify_log(s).ok
    assert governance.run_due(sessions) == []                           # once


def test_a_loosening_change_waits_the_delay_after_the_quorum(sessions):
    with sessions.begin() as s:
        pid = governance.propose(s, "approval_rule", "vault", governance.rule_change(approvals=1), "olga").id
        assert governance.get(s, pid).loosening
    approved_at = datetime.now(timezone.utc)
    with sessions.begin() as s:
        proposal = governance.approve(s, pid, "ada", now=approved_at)
        assert proposal.state == "scheduled"
    with sessions() as s:
        due = datetime.fromisoformat(governance.proposal_json(s, governance.get(s, pid))["execute_after"])
    assert due == approved_at + timedelta(hours=24)
    assert governance.run_due(sessions) == []                           # not yet
    assert governance.run_due(sessions, now=approved_at + timedelta(hours=23, minutes=59)) == []
    with pytest.raises(CustodyError, match="waits until"), sessions.begin() as s:
        governance.execute(s, pid)
    with sessions() as s:
        assert rule_of(s).required_approvals == 2
    done = governance.run_due(sessions, now=approved_at + timedelta(hours=24, seconds=1))
    assert [p["state"] for p in done] == ["executed"]
    with sessions() as s:
        assert rule_of(s).required_approvals == 1


def test_two_approvals_at_once_execute_once(sessions):
    with sessions.begin() as s:
        pid = governance.propose(s, "device_status", "RS-1", {"status": "suspended", "reason": "lost"}, "root").id

    def approve(i):
        try:
            with sessions.begin() as s:
                governance.approve(s, pid, ("olga", "ada")[i])
            return "approved"
        except CustodyError as e:
            return str(e)
    outcomes = at_once(2, approve)
    assert "approved" in outcomes                                        # the other: settled meanwhile
    runs = at_once(3, lambda i: governance.run_due(sessions))
    assert sum(len(r) for r in runs) == 1
    with sessions() as s:
        assert devices.get(s, "RS-1").status == "suspended"
        assert len(s.scalars(select(EventLogEntry).where(EventLogEntry.kind == "device.status")).all()) == 1
        kinds = [k for k, _ in steps(s, pid)]
        assert kinds.count("governance.scheduled") == 1 and kinds.count("governance.executed") == 1
        assert verify_log(s).ok


def test_a_proposal_is_executed_only_on_the_target_it_was_made_for(sessions):
    """vic's role changed between proposal and execution: the approvers approved 'viewer -> signatory',
    and vic is no longer a viewer, so the proposal fails instead of applying to another state."""
    with sessions.begin() as s:
        pid = governance.propose(s, "user_role", "vic", {"role": "signatory"}, "root").id
    with sessions.begin() as s:
        accounts.set_role(s, accounts.get_user(s, "vic"), "auditor", actor="test")      # changed meanwhile
    with sessions.begin() as s:
        governance.approve(s, pid, "olga")
    governance.run_due(sessions, now=datetime.now(timezone.utc) + timedelta(days=2))
    with sessions() as s:
        shown = governance.proposal_json(s, governance.get(s, pid))
        assert shown["state"] == "failed" and "changed since proposal" in shown["reason"]
        assert accounts.get_user(s, "vic").role == "auditor"
        assert [k for k, _ in steps(s, pid)][-1] == "governance.failed"


def test_reject_cancel_and_refusals(sessions):
    with sessions.begin() as s:
        first = governance.propose(s, "policy_status", "vault", {"status": "retiring"}, "root").id
    with pytest.raises(CustodyError, match="decide or cancel it first"), sessions.begin() as s:
        governance.propose(s, "policy_status", "vault", {"status": "retiring"}, "ada")
    with pytest.raises(CustodyError, match="cannot become retired"), sessions.begin() as s:
        governance.propose(s, "policy_status", "vault", {"status": "retired"}, "ada")
    with pytest.raises(CustodyError, match="only admins and officers"), sessions.begin() as s:
        governance.propose(s, "device_status", "RS-1", {"status": "suspended"}, "sina")
    with pytest.raises(CustodyError, match="already so"), sessions.begin() as s:
        governance.propose(s, "user_role", "olga", {"role": "officer"}, "root")
    with pytest.raises(CustodyError, match="not a valid address"), sessions.begin() as s:
        governance.propose(s, "approval_rule", "vault", governance.rule_change(approvals=2, allow=["nonsense"]),
                           "root")
    with pytest.raises(CustodyError, match="only root"), sessions.begin() as s:
        governance.cancel(s, first, "ada")
    with sessions.begin() as s:
        assert governance.reject(s, first, "olga", note="not now").state == "rejected"
    with pytest.raises(CustodyError, match="rejected"), sessions.begin() as s:
        governance.approve(s, first, "omar")
    with sessions.begin() as s:
        second = governance.propose(s, "policy_status", "vault", {"status": "retiring"}, "root").id
        assert governance.cancel(s, second, "root").state == "cancelled"
    with sessions() as s:
        assert registry.get_policy(s, "vault").status == "active"
        assert [k for k, _ in steps(s, first)] == ["governance.proposed", "governance.rejected"]
        assert [k for k, _ in steps(s, second)] == ["governance.proposed", "governance.cancelled"]


def test_nobody_approves_their_own_role(sessions):
    with sessions.begin() as s:
        pid = governance.propose(s, "user_role", "omar", {"role": "admin"}, "root").id
    with pytest.raises(CustodyError, match="their own role"), sessions.begin() as s:
        governance.approve(s, pid, "omar")


def test_the_quorum_is_a_setting_changed_by_proposal(sessions):
    with sessions.begin() as s:
        pid = governance.propose(s, "settings", "", {"quorum": 2}, "root").id         # tightening
    with sessions.begin() as s:
        governance.approve(s, pid, "olga")
    governance.run_due(sessions)
    with sessions() as s:
        assert governance.settings(s) == {"quorum": 2, "loosen_delay": 86400}
    with sessions.begin() as s:
        rule = governance.propose(s, "approval_rule", "vault", governance.rule_change(approvals=3, per_request="1"),
                                  "root").id
    with sessions.begin() as s:
        assert governance.approve(s, rule, "olga").state == "pending"                  # one of two
    with sessions.begin() as s:
        assert governance.approve(s, rule, "ada").state == "scheduled"
    with sessions.begin() as s:                                                         # lowering: loosens
        lower = governance.propose(s, "settings", "", {"quorum": 1}, "root")
        assert lower.loosening and lower.required == 2
    with pytest.raises(CustodyError, match="quorum is 1 to"), sessions.begin() as s:
        governance.propose(s, "settings", "", {"quorum": 0, "loosen_delay": 0}, "ada")


def test_the_leader_loop_executes_what_is_due_even_without_the_node(sessions):
    from coordinator.worker import LeaderLoop
    with sessions.begin() as s:
        pid = governance.propose(s, "device_status", "RS-1", {"status": "revoked", "reason": "stolen"}, "olga").id
    with sessions.begin() as s:
        governance.approve(s, pid, "omar")                   # due at once; nobody ran it (a crash, say)

    def no_node():
        raise CustodyError("no node in this test")
    loop = LeaderLoop(sessions, no_node, interval=0.01)
    try:
        with pytest.raises(CustodyError, match="no node"):
            loop.step()
    finally:
        loop.lock.release()
    with sessions() as s:
        assert governance.get(s, pid).state == "executed" and devices.get(s, "RS-1").status == "revoked"


# -- the API as several users --------------------------------------------------------------------------------
@pytest.fixture
def api(sessions):
    from coordinator.app import create_app, node_factory
    tokens = {}
    with sessions.begin() as s:
        for name, _ in PEOPLE:
            tokens[name] = accounts.create_token(s, accounts.get_user(s, name), "test")[0]
    app = create_app(sessions, node_factory("http://127.0.0.1:9"), sync_interval=0)
    with TestClient(app) as client:
        def call(method, path, name, **kw):
            return client.request(method, path, headers={"authorization": f"Bearer {tokens[name]}"},
                                  follow_redirects=False, **kw)
        call.client = client
        yield call


def test_the_old_routes_propose_and_change_nothing(api, sessions):
    rule = api("PUT", "/api/policies/vault/approval-rule", "root", json={"approvals": 1, "daily": "5"})
    assert rule.status_code == 202, rule.text
    assert rule.json()["change"]["daily_limit"] == 500_000_000 and rule.json()["loosening"] is True
    status = api("POST", "/api/policies/vault/status", "root", json={"status": "retiring"})
    device = api("POST", "/api/devices/RS-1/status", "ada", json={"status": "suspended", "reason": "lost"})
    role = api("PATCH", "/api/users/vic", "root", json={"role": "signatory"})
    assert (status.status_code, device.status_code, role.status_code) == (202, 202, 202), role.text
    assert role.json()["waiting_for"] == 1 and role.json()["kind"] == "user_role"
    bad = api("PUT", "/api/policies/vault/approval-rule", "root", json={"approvals": 1, "daily": "lots"})
    assert bad.status_code == 400 and "not an amount" in bad.json()["detail"]
    assert api("PUT", "/api/policies/nosuch/approval-rule", "root", json={"approvals": 1}).status_code == 404
    with sessions() as s:
        assert rule_of(s).required_approvals == 2 and rule_of(s).daily_limit is None
        assert registry.get_policy(s, "vault").status == "active"
        assert devices.get(s, "RS-1").status == "issued" and accounts.get_user(s, "vic").role == "viewer"
    listed = api("GET", "/api/governance/proposals?state=pending", "aude")
    assert listed.status_code == 200 and len(listed.json()) == 4
    assert api("GET", "/api/governance/proposals", "vic").status_code == 403


def test_approvals_through_the_api(api, sessions):
    made = api("POST", "/api/policies/vault/status", "root", json={"status": "retiring"}).json()
    path = f"/api/governance/proposals/{made['id']}"
    assert api("POST", path + "/approve", "root").status_code == 400                       # the proposer
    for name in ("sina", "aude", "vic"):
        refused = api("POST", path + "/approve", name)
        assert refused.status_code == 403 and "may not" in refused.json()["detail"]
    done = api("POST", path + "/approve", "olga")
    assert done.status_code == 200 and done.json()["state"] == "executed"                # tightening: at once
    assert api("POST", path + "/approve", "omar").status_code == 400
    with sessions() as s:
        assert registry.get_policy(s, "vault").status == "retiring"

    back = api("POST", "/api/policies/vault/status", "ada", json={"status": "active"}).json()
    assert back["loosening"] is True
    waiting = api("POST", f"/api/governance/proposals/{back['id']}/approve", "omar").json()
    assert waiting["state"] == "scheduled" and waiting["execute_after"]
    assert api("POST", "/api/governance/run-due", "olga").json() == []                  # the delay holds
    with sessions() as s:
        assert registry.get_policy(s, "vault").status == "retiring"
    cancelled = api("POST", f"/api/governance/proposals/{back['id']}/cancel", "ada")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"

    proposed = api("POST", "/api/governance/proposals", "olga",
                   json={"kind": "settings", "change": {"loosen_delay": 7200}})
    assert proposed.status_code == 201 and proposed.json()["loosening"] is True
    assert api("POST", "/api/governance/proposals", "olga",
               json={"kind": "user_role", "target": "vic", "change": {"role": "emperor"}}).status_code == 400
    assert api("POST", "/api/governance/proposals", "sina",
               json={"kind": "user_role", "target": "vic", "change": {"role": "admin"}}).status_code == 403
    assert api("GET", "/api/governance/settings", "aude").json() == {"quorum": 1, "loosen_delay": 86400}


def test_the_console_lists_pending_proposals_with_buttons(api, sessions):
    client = api.client
    api("PATCH", "/api/users/vic", "root", json={"role": "auditor"})

    def login(name):
        client.cookies.clear()
        client.get("/login")
        code = accounts.totp(sessions.secrets[name]) if sessions.secrets[name] else ""
        response = client.post("/login", data={"username": name, "password": PASSWORD, "code": code,
                                               "login_csrf": client.cookies.get("custody_login_csrf"), "next": "/"},
                               follow_redirects=False)
        assert response.status_code == 303, response.text
        page = client.get("/governance")
        return page, re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)

    page, csrf = login("ada")
    assert page.status_code == 200 and 'href="/governance"' in page.text
    assert "user role</strong> of <code>vic</code>" in page.text and "waiting for 1 more" in page.text
    pid = re.search(r'data-proposal="(\d+)"', page.text).group(1)
    assert f'action="/governance/{pid}/approve"' in page.text
    made = client.post("/governance/propose", data={"kind": "device_status", "target": "RS-1", "status": "suspended",
                                                    "reason": "lost", "csrf_token": csrf}, follow_redirects=False)
    assert made.status_code == 303
    assert "proposed, waiting for 1 more approval" in client.get(made.headers["location"]).text
    users = client.get("/admin/users")
    assert "role auditor proposed" in users.text and "waiting for 1 more approval" in users.text
    approved = client.post(f"/governance/{pid}/approve", data={"csrf_token": csrf}, follow_redirects=False)
    assert approved.status_code == 303 and "takes effect after" in client.get(approved.headers["location"]).text
    page, _ = login("root")                                          # root proposed: no approve button
    assert f'action="/governance/{pid}/approve"' not in page.text
    client.cookies.clear()
    client.get("/login")
    assert api("GET", "/governance", "sina").status_code in (303, 403)


# -- the CLI -------------------------------------------------------------------------------------------------
def test_the_cli_acts_as_a_named_person(sessions, db_url, capsys):
    def custody(*argv):
        code = cli_main(["--db", db_url, "--json", *argv])
        out, err = capsys.readouterr()
        return code, json.loads(out) if code == 0 and out.strip() else err
    code, made = custody("governance", "propose", "approval-rule", "vault", "--as", "olga", "--approvals", "3",
                         "--per-request", "1", "--allow", spends_address())
    assert code == 0 and made["state"] == "pending" and made["loosening"] is False
    code, err = custody("governance", "approve", str(made["id"]), "--as", "olga")
    assert code == 1 and "proposer cannot" in err and err.count("\n") == 1
    code, err = custody("governance", "approve", str(made["id"]), "--as", "vic")
    assert code == 1 and "only admins and officers" in err
    code, done = custody("governance", "approve", str(made["id"]), "--as", "root")
    assert code == 0 and done["state"] == "executed"
    code, listed = custody("governance", "list", "--state", "executed")
    assert code == 0 and [p["id"] for p in listed] == [made["id"]]
    assert custody("governance", "run-due")[1] == []
    with sessions() as s:
        assert rule_of(s).required_approvals == 3 and json.loads(rule_of(s).allow_list) == [spends_address()]


def spends_address() -> str:
    from regtest.testwallet import TestWallet
    return TestWallet("governance payee").address()
