"""The console's governance page: proposals waiting for approval (approve, reject, cancel), the quorum
settings, and the forms that propose a change to a rule, a status, a role or the settings."""
from __future__ import annotations

from fastapi import APIRouter, Form, Request

from coordinator import accounts
from custody.devices import service as ds
from custody.errors import CustodyError
from custody.governance import proposals as governance
from custody.ledger import service

from coordinator.api.common import Id
from coordinator.auth import route
from coordinator.console.pages import back, render, safe_next
from coordinator.context import actor, read, write

router = APIRouter()


def waiting(proposal: dict) -> str:
    """What a form that proposed a change says it became."""
    if proposal["state"] == "pending":
        return (f"proposal #{proposal['id']}: proposed, waiting for {proposal['waiting_for']} more "
                f"approval{'' if proposal['waiting_for'] == 1 else 's'}")
    return f"proposal #{proposal['id']}: {proposal['state']}"


@route(router, "GET", "/governance", "governance.read", page=True)
def proposals_page(request: Request, flash: str = ""):
    with read(request) as s:
        open_ = governance.list_proposals(s, states=list(governance.OPEN))
        closed = governance.list_proposals(s, states=["executed", "rejected", "cancelled", "failed"], limit=50)
        policies = service.policy_names(s)
        serials = [d["serial"] for d in ds.device_list(s)]
        config = governance.settings(s)
    return render(request, "proposals.html", flash=flash, open_proposals=open_, closed=closed, policies=policies,
                  serials=serials, settings=config, roles=accounts.ROLES, me=request.state.principal.username)


def _optional_int(text: str, what: str) -> int | None:
    if not text.strip():
        return None
    try:
        return int(text)
    except ValueError:
        raise CustodyError(f"{what} is a whole number, not {text!r}") from None


@route(router, "POST", "/governance/propose", "governance.propose", page=True)
def propose(request: Request, kind: str = Form(..., max_length=32), target: str = Form("", max_length=200),
            status: str = Form("", max_length=20), reason: str = Form("", max_length=500),
            role: str = Form("", max_length=16), approvals: str = Form("", max_length=10),
            per_request: str = Form("", max_length=40), daily: str = Form("", max_length=40),
            allow: str = Form("", max_length=100_000), delay_above: str = Form("", max_length=40),
            delay: str = Form("", max_length=10), quorum: str = Form("", max_length=10),
            loosen_delay: str = Form("", max_length=10), back_to: str = Form("/governance", max_length=200)):
    if kind == "approval_rule":
        addresses = [line.strip() for line in allow.splitlines() if line.strip()]
        change = governance.rule_change(approvals=_optional_int(approvals, "approvals"), per_request=per_request,
                                        daily=daily, allow=addresses or None, delay_above=delay_above,
                                        delay=_optional_int(delay, "the delay") or 0)
    elif kind in ("policy_status", "device_status"):
        change = {"status": status} if kind == "policy_status" else {"status": status, "reason": reason}
    elif kind == "user_role":
        change = {"role": role}
    else:
        change = {k: v for k, v in (("quorum", _optional_int(quorum, "the quorum")),
                                    ("loosen_delay", _optional_int(loosen_delay, "the delay"))) if v is not None}
    with write(request) as s:
        proposal = governance.proposal_json(s, governance.propose(s, kind, target, change, actor(request)))
    return back(safe_next(back_to), flash=waiting(proposal))


@route(router, "POST", "/governance/{proposal_id}/approve", "governance.decide", page=True)
def approve(request: Request, proposal_id: Id):
    with write(request) as s:
        governance.approve(s, proposal_id, actor(request))
    governance.run_due(request.app.state.sessions, only=proposal_id, actor=actor(request))
    with read(request) as s:
        proposal = governance.proposal_json(s, governance.get(s, proposal_id))
    if proposal["state"] == "scheduled":
        return back("/governance", flash=f"approved; proposal #{proposal_id} takes effect after "
                                         f"{proposal['execute_after'][:16].replace('T', ' ')} UTC")
    if proposal["state"] == "failed":
        return back("/governance", flash=f"approved, but proposal #{proposal_id} failed: {proposal['reason']}")
    return back("/governance", flash=f"approved; {waiting(proposal)}")


@route(router, "POST", "/governance/{proposal_id}/reject", "governance.decide", page=True)
def reject(request: Request, proposal_id: Id, note: str = Form("", max_length=500)):
    with write(request) as s:
        governance.reject(s, proposal_id, actor(request), note=note)
    return back("/governance", flash=f"rejected proposal #{proposal_id}")


@route(router, "POST", "/governance/{proposal_id}/cancel", "governance.propose", page=True)
def cancel(request: Request, proposal_id: Id):
    with write(request) as s:
        governance.cancel(s, proposal_id, actor(request))
    return back("/governance", flash=f"cancelled proposal #{proposal_id}")
