"""Governance changes under a quorum: an approval rule, a policy's or a device's status, a user's role,
or the quorum settings themselves change only when people other than the proposer approve.

One admin alone could otherwise loosen every protection the spend rules give (one approval, no limit,
any destination) and then spend. So each such change is a proposal: `quorum` admins or officers other
than the proposer approve it (one rejection ends it), and then it is scheduled. A change that tightens
takes effect at once; one that loosens (`is_loosening`) waits `loosen_delay` seconds after the quorum, so
that the others see it coming and can act. A proposal records the target's state when it was made, and
is executed only if the target is still in that state: what the approvers saw is what they approved
(otherwise it fails with the reason and must be proposed again). Execution goes through the same domain
function as before (spends.set_approval_rule, registry.set_status, devices.set_status,
roles.set_role), exactly once: the state moves scheduled -> executed by a conditional UPDATE whose row
count is checked, in the transaction that makes the change. Every step is in the event log.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from custody.devices import inventory as devices
from custody.errors import CustodyError, NotFound
from custody.eventlog.log import canonical_json, record
from custody.governance.models import GovernanceSettings, Proposal, ProposalVote
from custody.ledger import registry
from custody.people import roles
from custody.spending import spends
from custody.spending.models import ApprovalRule

KINDS = ("approval_rule", "policy_status", "device_status", "user_role", "settings")
DECIDERS = ("admin", "officer")                 # who may propose, approve and reject
OPEN = ("pending", "scheduled")
STATES = ("pending", "scheduled", "executed", "rejected", "cancelled", "failed")
DEFAULT_QUORUM = 1                              # one other person: two people in all
DEFAULT_LOOSEN_DELAY = 24 * 3600
MAX_QUORUM = 10
MAX_LOOSEN_DELAY = 30 * 86400
SETTINGS_TARGET = "governance"
RULE_FIELDS = ("required_approvals", "per_request_limit", "daily_limit", "allow_list", "delay_threshold",
               "delay_seconds")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(moment: datetime | None) -> datetime | None:
    return moment.replace(tzinfo=timezone.utc) if moment is not None and moment.tzinfo is None else moment


# -- what loosens ------------------------------------------------------------------------------------------
def _raises_limit(before: int | None, after: int | None) -> bool:
    """A limit (None: none at all) raised or removed."""
    return before is not None and (after is None or after > before)


def is_loosening(kind: str, before, after: dict) -> bool:
    """Whether moving the target from `before` to `after` lets anything happen that could not before.

    Roles are not nested (an admin configures but moves no money; an officer moves money), so any role
    change but one to viewer gives powers the old role lacked: all of them loosen, a demotion to viewer
    tightens. A delay counts only where it applies (a threshold is set)."""
    if kind == "approval_rule":
        if before is None:
            return True                         # no rule is no spend at all (default deny)
        if after["required_approvals"] < before["required_approvals"]:
            return True
        if _raises_limit(before["per_request_limit"], after["per_request_limit"]) or \
                _raises_limit(before["daily_limit"], after["daily_limit"]):
            return True
        if before["allow_list"] is not None and (after["allow_list"] is None
                                                 or set(after["allow_list"]) - set(before["allow_list"])):
            return True
        if before["delay_threshold"] is not None and before["delay_seconds"] > 0:
            if _raises_limit(before["delay_threshold"], after["delay_threshold"]) \
                    or after["delay_seconds"] < before["delay_seconds"]:
                return True
        return False
    if kind in ("policy_status", "device_status"):
        return after["status"] == "active"      # spendable again, or able to sign again
    if kind == "user_role":
        return after["role"] != "viewer"
    if kind == "settings":
        return after["quorum"] < before["quorum"] or after["loosen_delay"] < before["loosen_delay"]
    raise CustodyError(f"unknown kind of proposal {kind!r}; one of {', '.join(KINDS)}")


# -- settings ----------------------------------------------------------------------------------------------
def settings(session: Session) -> dict:
    row = session.get(GovernanceSettings, 1)
    if row is None:
        return {"quorum": DEFAULT_QUORUM, "loosen_delay": DEFAULT_LOOSEN_DELAY}
    return {"quorum": row.quorum, "loosen_delay": row.loosen_delay}


def _set_settings(session: Session, quorum: int, loosen_delay: int) -> None:
    row = session.get(GovernanceSettings, 1) or GovernanceSettings(id=1)
    row.quorum, row.loosen_delay = quorum, loosen_delay
    session.add(row)


# -- targets: their state now, a change checked against it, and the one executor per kind -------------------
def amount(value) -> int | None:
    """A limit as the API, console and CLI give it (spends.satoshis); an empty field: no limit."""
    return None if value == "" else spends.satoshis(value)


def rule_change(*, approvals: int, per_request=None, daily=None, allow: list[str] | None = None,
                delay_above=None, delay: int = 0) -> dict:
    """An approval rule as a proposal's change, amounts in satoshis."""
    return {"required_approvals": approvals, "per_request_limit": amount(per_request), "daily_limit": amount(daily),
            "allow_list": allow, "delay_threshold": amount(delay_above), "delay_seconds": delay}


def _target(kind: str, target: str) -> str:
    if kind not in KINDS:
        raise CustodyError(f"unknown kind of proposal {kind!r}; one of {', '.join(KINDS)}")
    if kind == "user_role":
        return roles.canonical_username(target)
    if kind == "settings":
        return SETTINGS_TARGET
    if not isinstance(target, str) or not target.strip():
        raise CustodyError("a proposal names what it changes")
    return target


def snapshot(session: Session, kind: str, target: str):
    """The target's state now, as a proposal's `before` records it (raises NotFound for no such target)."""
    if kind == "approval_rule":
        rule = session.get(ApprovalRule, registry.get_policy(session, target).id)
        if rule is None:
            return None
        return {"required_approvals": rule.required_approvals, "per_request_limit": rule.per_request_limit,
                "daily_limit": rule.daily_limit,
                "allow_list": json.loads(rule.allow_list) if rule.allow_list is not None else None,
                "delay_threshold": rule.delay_threshold, "delay_seconds": rule.delay_seconds}
    if kind == "policy_status":
        return {"status": registry.get_policy(session, target).status}
    if kind == "device_status":
        return {"status": devices.get(session, target).status}
    if kind == "user_role":
        return {"role": roles.get_user(session, target).role}
    return settings(session)


def _checked(session: Session, kind: str, target: str, before, change: dict) -> dict:
    """The change as the full new state of the target, refused now if it could not be applied."""
    if not isinstance(change, dict):
        raise CustodyError("a proposal's change is a JSON object")

    def field(name: str, types, default=None, required=True):
        if name not in change:
            if required:
                raise CustodyError(f"the change needs {name!r}")
            return default
        value = change[name]
        if value is not None and (isinstance(value, bool) and bool not in types or not isinstance(value, types)):
            raise CustodyError(f"{name!r} has the wrong type")
        return value

    extra = sorted(set(change) - set({"approval_rule": RULE_FIELDS, "policy_status": ("status",),
                                      "device_status": ("status", "reason"), "user_role": ("role",),
                                      "settings": ("quorum", "loosen_delay")}[kind]))
    if extra:
        raise CustodyError(f"a {kind} change has no {', '.join(extra)}")
    if kind == "approval_rule":
        policy = registry.get_policy(session, target)
        out = {"required_approvals": field("required_approvals", (int,)),
               "per_request_limit": field("per_request_limit", (int,), required=False),
               "daily_limit": field("daily_limit", (int,), required=False),
               "allow_list": field("allow_list", (list,), required=False),
               "delay_threshold": field("delay_threshold", (int,), required=False),
               "delay_seconds": field("delay_seconds", (int,), 0, required=False) or 0}
        if out["required_approvals"] is None or out["required_approvals"] < 1:
            raise CustodyError("an approval rule needs at least one approving officer")
        for name in ("per_request_limit", "daily_limit", "delay_threshold"):
            if out[name] is not None and out[name] <= 0:
                raise CustodyError("limits are positive whole satoshis")
        if out["delay_seconds"] < 0:
            raise CustodyError("delay cannot be negative")
        if out["allow_list"] is not None:
            if not all(isinstance(a, str) for a in out["allow_list"]):
                raise CustodyError("an allow-list is a list of addresses")
            for address in out["allow_list"]:
                spends._script(address, policy.network)     # the check set_approval_rule makes
            out["allow_list"] = sorted(set(out["allow_list"]))
        return out
    if kind in ("policy_status", "device_status"):
        status = field("status", (str,))
        flow = registry.STATUS_FLOW if kind == "policy_status" else devices.STATUS_FLOW
        if status not in flow:
            raise CustodyError(f"unknown status {status!r}")
        if status not in flow[before["status"]]:
            what = f"policy {target!r}" if kind == "policy_status" else f"device {target}"
            raise CustodyError(f"{what} is {before['status']}; it cannot become {status}")
        if kind == "policy_status":
            return {"status": status}
        reason = field("reason", (str,), "", required=False) or ""
        if len(reason) > 500:
            raise CustodyError("a reason is at most 500 characters")
        return {"status": status, "reason": reason}
    if kind == "user_role":
        role = field("role", (str,))
        if role not in roles.ROLES:
            raise CustodyError(f"unknown role {role!r}; one of {', '.join(roles.ROLES)}")
        user = roles.get_user(session, target)
        if role in roles.SECOND_FACTOR_ROLES and not roles.has_second_factor(session, user):
            raise CustodyError(f"{user.username} has no second factor; {role}s need one (reset their account first)")
        return {"role": role}
    quorum = field("quorum", (int,), before["quorum"], required=False)
    delay = field("loosen_delay", (int,), before["loosen_delay"], required=False)
    if quorum is None or not 1 <= quorum <= MAX_QUORUM:
        raise CustodyError(f"the quorum is 1 to {MAX_QUORUM} people besides the proposer")
    if delay is None or not 0 <= delay <= MAX_LOOSEN_DELAY:
        raise CustodyError(f"the loosening delay is 0 to {MAX_LOOSEN_DELAY} seconds")
    return {"quorum": quorum, "loosen_delay": delay}


def _apply(session: Session, proposal: Proposal, change: dict) -> None:
    """The change itself, through the domain function that has always made it (and logs it)."""
    kind, target, actor = proposal.kind, proposal.target, proposal.proposer
    if kind == "approval_rule":
        spends.set_approval_rule(session, registry.get_policy(session, target), actor=actor, **change)
    elif kind == "policy_status":
        registry.set_status(session, registry.get_policy(session, target), change["status"], actor=actor)
    elif kind == "device_status":
        devices.set_status(session, devices.get(session, target), change["status"], actor=actor,
                           reason=change["reason"])
    elif kind == "user_role":
        roles.set_role(session, roles.get_user(session, target), change["role"], actor=actor)
    else:
        _set_settings(session, change["quorum"], change["loosen_delay"])
        record(session, "governance.settings", actor, f"governance:{SETTINGS_TARGET}", change)


# -- people ------------------------------------------------------------------------------------------------
def _decider(session: Session, name: str) -> str:
    """The canonical name of an enabled admin or officer, or a refusal naming why not."""
    name = roles.canonical_username(name)
    user = roles.get_user(session, name)
    if user.disabled:
        raise CustodyError(f"{name} is disabled")
    if user.role not in DECIDERS:
        raise CustodyError(f"{name} is {'an' if user.role[0] in 'aeiou' else 'a'} {user.role}: only admins and "
                           "officers propose and decide governance changes")
    return name


# -- the proposal's life -----------------------------------------------------------------------------------
def get(session: Session, proposal_id: int) -> Proposal:
    proposal = session.get(Proposal, proposal_id)
    if proposal is None:
        raise NotFound(f"no proposal #{proposal_id}")
    return proposal


def open_proposal(session: Session, kind: str, target: str) -> Proposal | None:
    """The pending or scheduled proposal on this target, if any."""
    return session.scalar(select(Proposal).where(Proposal.kind == kind, Proposal.target == target,
                                                 Proposal.state.in_(OPEN)).order_by(Proposal.id))


def propose(session: Session, kind: str, target: str, change: dict, proposer: str) -> Proposal:
    """Record a proposed change, checked now against the target as it is."""
    proposer = _decider(session, proposer)
    target = _target(kind, target)
    before = snapshot(session, kind, target)
    after = _checked(session, kind, target, before, change)
    comparable = {k: v for k, v in after.items() if k != "reason"}
    if before is not None and comparable == before:
        raise CustodyError(f"{kind.replace('_', ' ')} of {target} is already so: nothing to propose")
    waiting = open_proposal(session, kind, target)
    if waiting is not None:
        raise CustodyError(f"proposal #{waiting.id} to change this is {waiting.state}: decide or cancel it first")
    proposal = Proposal(kind=kind, target=target, change=canonical_json(after), before=canonical_json(before),
                        loosening=is_loosening(kind, before, after), proposer=proposer,
                        required=settings(session)["quorum"], state="pending", created_at=_now())
    session.add(proposal)
    session.flush()
    record(session, "governance.proposed", proposer, f"proposal:{proposal.id}",
           {"kind": kind, "target": target, "change": after, "before": before, "loosening": proposal.loosening,
            "required": proposal.required})
    return proposal


def approve(session: Session, proposal_id: int, person: str, *, now: datetime | None = None) -> Proposal:
    """One approval; with the quorum the proposal is scheduled (due at once unless it loosens)."""
    return _decide(session, proposal_id, person, approve=True, now=now)


def reject(session: Session, proposal_id: int, person: str, *, note: str = "") -> Proposal:
    """One rejection ends the proposal: a governance change is one nobody who reviews it objects to."""
    return _decide(session, proposal_id, person, approve=False, note=note)


def _decide(session: Session, proposal_id: int, person: str, *, approve: bool, note: str = "",
            now: datetime | None = None) -> Proposal:
    person = _decider(session, person)
    # decisions on one proposal are taken one at a time (the row lock on PostgreSQL; SQLite's writer
    # lock, taken by the insert below); the conditional UPDATEs below are the last guard either way
    proposal = session.scalar(select(Proposal).where(Proposal.id == proposal_id).with_for_update())
    if proposal is None:
        raise NotFound(f"no proposal #{proposal_id}")
    if proposal.state != "pending":
        raise CustodyError(f"proposal #{proposal_id} is {proposal.state}; decisions are taken on pending proposals")
    if person == proposal.proposer:
        raise CustodyError("the proposer cannot approve or reject their own proposal")
    if proposal.kind == "user_role" and person == proposal.target:
        raise CustodyError("nobody decides on a change to their own role")
    if session.scalar(select(ProposalVote.id).where(ProposalVote.proposal_id == proposal_id,
                                                    ProposalVote.voter == person)):
        raise CustodyError(f"{person} has already decided on proposal #{proposal_id}")
    session.add(ProposalVote(proposal_id=proposal_id, voter=person, decision="approve" if approve else "reject",
                             at=_now()))
    try:
        session.flush()
    except IntegrityError:      # the same person's decision sent twice at once: the other one won
        raise CustodyError(f"{person} has already decided on proposal #{proposal_id}") from None
    session.refresh(proposal)
    if proposal.state != "pending":
        raise CustodyError(f"proposal #{proposal_id} is {proposal.state}; decisions are taken on pending proposals")
    record(session, "governance.approved" if approve else "governance.rejected", person, f"proposal:{proposal_id}",
           {"note": note} if note else {})
    if not approve:
        _move(session, proposal, "pending", state="rejected", reason=note or f"rejected by {person}")
        return proposal
    approvals = _approvers(session, proposal_id)
    config = settings(session)
    if len(approvals) < max(proposal.required, config["quorum"]):     # a quorum raised since counts too
        return proposal
    moment = now or _now()
    due = moment + timedelta(seconds=config["loosen_delay"] if proposal.loosening else 0)
    _move(session, proposal, "pending", state="scheduled", scheduled_at=moment, execute_after=due)
    record(session, "governance.scheduled", person, f"proposal:{proposal_id}",
           {"approvers": approvals, "execute_after": due.isoformat(), "loosening": proposal.loosening})
    return proposal


def _move(session: Session, proposal: Proposal, expected: str | tuple[str, ...], **values) -> None:
    """Move the proposal from an expected state, or refuse: whoever moved it first won."""
    expected = (expected,) if isinstance(expected, str) else expected
    moved = session.execute(update(Proposal).where(Proposal.id == proposal.id, Proposal.state.in_(expected))
                            .values(**values).execution_options(synchronize_session=False)).rowcount
    if moved != 1:
        session.refresh(proposal)
        raise CustodyError(f"proposal #{proposal.id} is {proposal.state} now (settled meanwhile)")
    session.refresh(proposal)


def cancel(session: Session, proposal_id: int, person: str) -> Proposal:
    """The proposer withdraws a proposal not yet executed."""
    person = roles.canonical_username(person)
    proposal = get(session, proposal_id)
    if person != proposal.proposer:
        raise CustodyError(f"only {proposal.proposer}, who proposed it, can cancel proposal #{proposal_id}")
    if proposal.state not in OPEN:
        raise CustodyError(f"proposal #{proposal_id} is {proposal.state}; it can no longer be cancelled")
    _move(session, proposal, OPEN, state="cancelled", reason=f"cancelled by {person}")
    record(session, "governance.cancelled", person, f"proposal:{proposal_id}", {})
    return proposal


def execute(session: Session, proposal_id: int, *, actor: str = "coordinator",
            now: datetime | None = None) -> Proposal:
    """Make a scheduled, due change, once. Refuses (and changes nothing) when it is not due, was executed
    meanwhile, its target changed since it was proposed, or the change no longer applies."""
    proposal = get(session, proposal_id)
    if proposal.state != "scheduled":
        raise CustodyError(f"proposal #{proposal_id} is {proposal.state}; only scheduled proposals are executed")
    due = _aware(proposal.execute_after)
    if due is not None and due > (now or _now()):
        raise CustodyError(f"proposal #{proposal_id} loosens a protection: it waits until {due.isoformat()}")
    before, current = json.loads(proposal.before), snapshot(session, proposal.kind, proposal.target)
    if current != before:
        raise TargetChanged(f"{proposal.kind.replace('_', ' ')} of {proposal.target} changed since proposal "
                            f"#{proposal_id} was made (was {canonical_json(before)}, now {canonical_json(current)}): "
                            "propose again")
    _move(session, proposal, "scheduled", state="executed", executed_at=now or _now())
    _apply(session, proposal, json.loads(proposal.change))
    record(session, "governance.executed", actor, f"proposal:{proposal_id}",
           {"kind": proposal.kind, "target": proposal.target, "change": json.loads(proposal.change)})
    return proposal


class TargetChanged(CustodyError):
    """What a proposal changes is no longer as it was when proposed."""


def fail(session: Session, proposal_id: int, reason: str, *, actor: str = "coordinator") -> Proposal | None:
    """Close a scheduled proposal that cannot be executed, with the reason; None if it is not scheduled."""
    proposal = get(session, proposal_id)
    moved = session.execute(update(Proposal).where(Proposal.id == proposal_id, Proposal.state == "scheduled")
                            .values(state="failed", reason=reason[:2000])
                            .execution_options(synchronize_session=False)).rowcount
    if moved != 1:
        return None
    session.refresh(proposal)
    record(session, "governance.failed", actor, f"proposal:{proposal_id}", {"reason": reason[:2000]})
    return proposal


def due(session: Session, *, now: datetime | None = None) -> list[int]:
    """Scheduled proposals whose time has come, oldest first."""
    now = now or _now()
    rows = session.scalars(select(Proposal).where(Proposal.state == "scheduled").order_by(Proposal.id))
    return [p.id for p in rows if _aware(p.execute_after) is None or _aware(p.execute_after) <= now]


def run_due(sessions, *, only: int | None = None, actor: str = "coordinator",
            now: datetime | None = None) -> list[dict]:
    """Execute every due proposal (or just `only`), each in its own transaction. One that cannot be
    executed is closed as failed with the reason, in a transaction of its own; one another process
    executed meanwhile is left as that process left it."""
    with sessions() as s:
        ids = [i for i in due(s, now=now) if only is None or i == only]
    results = []
    for proposal_id in ids:
        try:
            with sessions.begin() as s:
                results.append(proposal_json(s, execute(s, proposal_id, actor=actor, now=now)))
        except CustodyError as e:
            with sessions.begin() as s:
                failed = fail(s, proposal_id, str(e), actor=actor)
                if failed is not None:
                    results.append(proposal_json(s, failed))
    return results


# -- reading -----------------------------------------------------------------------------------------------
def _approvers(session: Session, proposal_id: int) -> list[str]:
    return list(session.scalars(select(ProposalVote.voter).where(ProposalVote.proposal_id == proposal_id,
                                                                 ProposalVote.decision == "approve")
                                .order_by(ProposalVote.id)))


def proposal_json(session: Session, proposal: Proposal) -> dict:
    votes = list(session.scalars(select(ProposalVote).where(ProposalVote.proposal_id == proposal.id)
                                 .order_by(ProposalVote.id)))
    approvals = [v.voter for v in votes if v.decision == "approve"]
    needed = max(proposal.required, settings(session)["quorum"]) if proposal.state == "pending" else proposal.required

    def when(moment):
        return _aware(moment).isoformat() if moment is not None else None
    return {"id": proposal.id, "kind": proposal.kind, "target": proposal.target,
            "change": json.loads(proposal.change), "before": json.loads(proposal.before),
            "loosening": proposal.loosening, "proposer": proposal.proposer, "state": proposal.state,
            "required": needed, "approvals": approvals,
            "rejections": [v.voter for v in votes if v.decision == "reject"],
            "waiting_for": max(needed - len(approvals), 0) if proposal.state == "pending" else 0,
            "reason": proposal.reason, "created_at": when(proposal.created_at),
            "scheduled_at": when(proposal.scheduled_at), "execute_after": when(proposal.execute_after),
            "executed_at": when(proposal.executed_at)}


def list_proposals(session: Session, *, states: list[str] | None = None, limit: int = 200) -> list[dict]:
    """Newest first."""
    for state in states or []:
        if state not in STATES:
            raise CustodyError(f"unknown proposal state {state!r}; one of {', '.join(STATES)}")
    query = select(Proposal).order_by(Proposal.id.desc()).limit(limit)
    if states:
        query = query.where(Proposal.state.in_(states))
    return [proposal_json(session, p) for p in session.scalars(query)]
