"""Governance proposals under /api/governance/: list, show, propose, approve, reject, cancel, run what is due.

Routes translate HTTP to `custody.governance.proposals` calls only. An approval that completes a quorum is committed
first; a change that is due at once (it tightens) is then executed in a transaction of its own, as the
leader loop would a moment later, so that a crash in between leaves it scheduled, never lost or doubled.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import Field

from custody.governance import proposals as governance

from coordinator.api.common import Id, Strict
from coordinator.auth import route
from coordinator.context import actor, read, write

router = APIRouter(prefix="/api/governance")
State = Literal["pending", "scheduled", "executed", "rejected", "cancelled", "failed"]


class ProposalIn(Strict):
    kind: Literal["approval_rule", "policy_status", "device_status", "user_role", "settings"]
    target: str = Field("governance", min_length=1, max_length=200,
                        description="the policy name, device serial or username; for settings: governance")
    change: dict[str, Any] = Field(description="the target's new state: approval_rule {required_approvals, "
                                   "per_request_limit, daily_limit, allow_list, delay_threshold, delay_seconds} "
                                   "(satoshis); policy_status {status}; device_status {status, reason}; "
                                   "user_role {role}; settings {quorum, loosen_delay}")


class NoteIn(Strict):
    note: str = Field("", max_length=500)


@route(router, "GET", "/proposals", "governance.read")
def list_proposals(request: Request, state: Annotated[list[State] | None, Query(max_length=6)] = None,
                   limit: int = Query(200, ge=1, le=1000)) -> list[dict]:
    with read(request) as s:
        return governance.list_proposals(s, states=state, limit=limit)


@route(router, "GET", "/proposals/{proposal_id}", "governance.read")
def show_proposal(request: Request, proposal_id: Id) -> dict:
    with read(request) as s:
        return governance.proposal_json(s, governance.get(s, proposal_id))


@route(router, "POST", "/proposals", "governance.propose", status_code=201)
def propose(request: Request, body: ProposalIn) -> dict:
    with write(request) as s:
        return governance.proposal_json(s, governance.propose(s, body.kind, body.target, body.change, actor(request)))


@route(router, "POST", "/proposals/{proposal_id}/approve", "governance.decide")
def approve(request: Request, proposal_id: Id) -> dict:
    with write(request) as s:
        governance.approve(s, proposal_id, actor(request))
    governance.run_due(request.app.state.sessions, only=proposal_id, actor=actor(request))
    with read(request) as s:
        return governance.proposal_json(s, governance.get(s, proposal_id))


@route(router, "POST", "/proposals/{proposal_id}/reject", "governance.decide")
def reject(request: Request, proposal_id: Id, body: NoteIn | None = None) -> dict:
    with write(request) as s:
        return governance.proposal_json(s, governance.reject(s, proposal_id, actor(request),
                                                             note=body.note if body else ""))


@route(router, "POST", "/proposals/{proposal_id}/cancel", "governance.propose")
def cancel(request: Request, proposal_id: Id) -> dict:
    with write(request) as s:
        return governance.proposal_json(s, governance.cancel(s, proposal_id, actor(request)))


@route(router, "POST", "/run-due", "governance.decide")
def run_due(request: Request) -> list[dict]:
    """Execute the approved changes whose delay has passed (the leader loop does this every round too)."""
    return governance.run_due(request.app.state.sessions, actor=actor(request))


@route(router, "GET", "/settings", "governance.read")
def show_settings(request: Request) -> dict:
    with read(request) as s:
        return governance.settings(s)
