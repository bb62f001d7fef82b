"""Spend operations as the CLI and the API both call them: rules, requests, approvals, PSBTs, broadcast, fees
(see custody.ledger.service for the conventions: plain arguments in, JSON-able out; the caller owns
the transaction, so a refusal leaves the database as it was)."""
from __future__ import annotations

import json

from embit.psbt import PSBT
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from custody.chain.node_client import NodeClient
from custody.errors import CustodyError
from custody.ledger import coins as ledger, registry
from custody.ledger.service import policy_json
from custody.ledger.models import Policy
from custody.devices import inventory as devices
from custody.spending import device_signing, spends
from custody.spending.models import ApprovalRule, Spend, SpendSignature


def policy_show(s: Session, name: str) -> dict:
    """A policy with its keys, its recovery path and the approval rule that guards its spends."""
    policy = registry.get_policy(s, name)
    shown = policy_json(s, policy)
    shown["keys"] = [f"{pk.role}: {pk.key.descriptor_key}" for pk in policy.keys]
    shown["recovery"] = (f"{policy.recovery_threshold} key(s) after {policy.recovery_after} blocks"
                         if policy.kind == "wsh-recovery" else None)
    shown["approval_rule"] = approval_rule_show(s, name)
    return shown




def approval_rule_set(s: Session, policy: str, *, approvals: int, per_request=None, daily=None,
                      allow: list[str] | None = None, delay_above=None, delay: int = 0, actor: str) -> dict:
    spends.set_approval_rule(s, registry.get_policy(s, policy), required_approvals=approvals,
                             per_request_limit=spends.satoshis(per_request), daily_limit=spends.satoshis(daily), allow_list=allow,
                             delay_threshold=spends.satoshis(delay_above), delay_seconds=delay, actor=actor)
    return approval_rule_show(s, policy)


def approval_rule_show(s: Session, policy: str) -> dict | None:
    rule = s.get(ApprovalRule, registry.get_policy(s, policy).id)
    if rule is None:
        return None
    return {"policy": policy, "required_approvals": rule.required_approvals,
            "per_request_limit": rule.per_request_limit, "daily_limit": rule.daily_limit,
            "allow_list": json.loads(rule.allow_list) if rule.allow_list else None,
            "delay_threshold": rule.delay_threshold, "delay_seconds": rule.delay_seconds}


def _destinations(items: list[tuple[str, object]], sweep: bool) -> list[tuple[str, int]]:
    out = []
    for address, amount in items:
        if sweep and amount in (None, "", 0):
            out.append((address, 0))
        else:
            out.append((address, spends.satoshis(amount)))
    return out


def spend_request(s: Session, policy: str, *, requester: str, to: list[tuple[str, object]], fee_rate: float | None,
                  client: NodeClient | None, memo: str | None = None, coins: list[str] | None = None,
                  sweep: bool = False) -> dict:
    spend = spends.request_spend(s, registry.get_policy(s, policy), requester, _destinations(to, sweep),
                                 fee_rate=fee_rate, client=client, memo=memo, coins=coins,
                                 sweep=sweep)
    return spends.summary(s, spend)


def fee_preview(s: Session, policy: str, *, to: list[tuple[str, object]], fee_rate: float | None,
                client: NodeClient | None, coins: list[str] | None = None, sweep: bool = False) -> dict:
    if fee_rate is None:
        fee_rate = spends.estimate_fee_rate(client)
    return spends.fee_preview(s, registry.get_policy(s, policy), _destinations(to, sweep), fee_rate=fee_rate,
                              coins=coins, sweep=sweep)


def spend_decide(s: Session, spend_id: int, *, officer: str, approve: bool, proof: dict | None = None) -> dict:
    return spends.summary(s, spends.decide(s, spends.get_spend(s, spend_id), officer, approve, proof))


def spend_approval_request(s: Session, spend_id: int, *, officer: str, client: NodeClient | None = None) -> dict:
    """The message an officer signs to approve the spend, and the passkey request for it (the spend's
    transaction is made first if it has none: a request made without a node, a rotation's)."""
    spend = spends.get_spend(s, spend_id)
    if spend.psbt is None and spend.state == "requested" and client is not None:
        spends.prepare_psbt(s, spend, client, actor=officer)
    return spends.approval_options(s, spend, officer)


def spend_approval_message(s: Session, spend_id: int) -> bytes:
    spend = spends.get_spend(s, spend_id)
    if spend.psbt is None:
        raise CustodyError(f"spend #{spend_id} has no transaction yet")
    return spends.approval_message(s, spend)


def spend_psbt(s: Session, spend_id: int, *, client: NodeClient | None, v2: bool = False,
               actor: str = "coordinator") -> str:
    """The spend's PSBT (base64): made first for a request that has none yet, and handed to the signers
    (with its approvals) once the spend is approved and any delay has passed."""
    spend = spends.get_spend(s, spend_id)
    if spend.psbt is None:
        if client is None:
            raise CustodyError(f"spend #{spend_id} has no PSBT yet")
        spends.prepare_psbt(s, spend, client, version=2 if v2 else 0, actor=actor)
    elif v2 and PSBT.from_string(spend.psbt).version != 2:
        raise CustodyError(f"spend #{spend_id}'s PSBT was made as version 0 when it was requested")
    if spend.state == "approved":
        spends.open_signing(s, spend, actor=actor)
    return spend.psbt


def spend_sign(s: Session, spend_id: int, data: bytes | str, *, actor: str | None = None) -> dict:
    """Merge an uploaded signed PSBT; the log names who uploaded it (`actor`) and the keys that signed."""
    spend = spends.get_spend(s, spend_id)
    signers = spends.add_signatures(s, spend, data, actor=actor)
    if not signers:
        raise CustodyError("the uploaded PSBT adds no new signature")
    return {**spends.summary(s, spend), "new_signers": signers}


def spend_signing_input(s: Session, spend_id: int) -> tuple[str, int]:
    """spend_sign in three steps, for the web service: this (the database), spends.merge_signatures
    (CPU only: a worker process runs it), spend_store_signatures (the database)."""
    return spends.signing_input(s, spends.get_spend(s, spend_id))


def spend_store_signatures(s: Session, spend_id: int, merged, *, based_on: str, actor: str | None = None) -> dict:
    spend = spends.get_spend(s, spend_id)
    signers = spends.store_signatures(s, spend, merged, based_on=based_on, actor=actor)
    if not signers:
        raise CustodyError("the uploaded PSBT adds no new signature")
    return {**spends.summary(s, spend), "new_signers": signers}


def spend_broadcast(sessions, spend_id: int, *, client: NodeClient, actor: str = "coordinator") -> dict:
    """Two transactions (see spends.broadcast): `sessions` is the sessionmaker, not a session."""
    spends.broadcast(sessions, spend_id, client, actor=actor)
    with sessions() as s:
        return spends.summary(s, spends.get_spend(s, spend_id))


def spends_to_track(s: Session) -> list[int]:
    """Spends whose state the chain can still change: broadcasting, broadcast, and confirmed within
    the reorganisation window."""
    tip = ledger.tip_height(s) or 0
    return list(s.scalars(select(Spend.id).where(
        (Spend.state.in_(("broadcasting", "broadcast")))
        | ((Spend.state == "confirmed") & (Spend.confirmed_height > tip - spends.REORG_WINDOW)))
        .order_by(Spend.id)))


def spend_track(s: Session, spend_id: int, *, client: NodeClient, confirmations: int = 1) -> dict:
    return spends.summary(s, spends.track(s, spends.get_spend(s, spend_id), client, confirmations))


def spend_bump_fee(s: Session, spend_id: int, *, client: NodeClient, fee_rate: float, cancel: bool = False,
                   actor: str = "coordinator") -> dict:
    return spends.summary(s, spends.bump_fee(s, spends.get_spend(s, spend_id), client, fee_rate, cancel=cancel,
                                             actor=actor))


def spend_cpfp(s: Session, spend_id: int, *, client: NodeClient, fee_rate: float, requester: str) -> dict:
    return spends.summary(s, spends.cpfp(s, spends.get_spend(s, spend_id), client, fee_rate, requester))


def require_spend(s: Session, spend_id: int) -> None:
    """NotFound (404 at the API) for a spend that does not exist."""
    spends.get_spend(s, spend_id)


def spend_progress(s: Session, spend_id: int) -> dict:
    """How far a spend is: the signatures its policy needs, its confirmations, whether its PSBT exists."""
    spend = spends.get_spend(s, spend_id)
    tip = ledger.tip_height(s)
    confirmations = 0
    if spend.confirmed_height is not None and tip is not None:
        confirmations = tip - spend.confirmed_height + 1
    return {"threshold": s.get(Policy, spend.policy_id).threshold, "confirmations": confirmations,
            "has_psbt": spend.psbt is not None}


def spend_policy(s: Session, spend_id: int) -> str:
    """The name of the policy a spend spends from."""
    return s.get(Policy, spends.get_spend(s, spend_id).policy_id).name


def spend_show(s: Session, spend_id: int) -> dict:
    return spends.summary(s, spends.get_spend(s, spend_id))


def spend_cancel(s: Session, spend_id: int, *, actor: str = "coordinator") -> dict:
    return spends.summary(s, spends.cancel(s, spends.get_spend(s, spend_id), actor=actor))


def spend_list(s: Session, *, policy: str | None = None, states: list[str] | None = None,
               after: int | None = None, limit: int | None = None) -> list[dict]:
    """Spends in id order (those after id `after`, at most `limit`): one query, whatever their number."""
    query = (select(Spend.id, Policy.name, Spend.state, Spend.amount, Spend.txid, Spend.requester, Spend.memo)
             .join(Policy, Policy.id == Spend.policy_id).order_by(Spend.id))
    if policy:
        query = query.where(Spend.policy_id == registry.get_policy(s, policy).id)
    if states:
        query = query.where(Spend.state.in_(states))
    if after is not None:
        query = query.where(Spend.id > after)
    if limit is not None:
        query = query.limit(limit)
    return [{"id": i, "policy": name, "state": state, "amount": amount, "txid": txid, "requester": requester,
             "memo": memo} for i, name, state, amount, txid, requester, memo in s.execute(query)]


def spend_timeline(s: Session, spend_id: int) -> list[dict]:
    """Everything that happened to a spend, oldest first, from the tamper-evident log, with the
    confirmations the ledger sees now."""
    from custody.eventlog.models import EventLogEntry
    spend = spends.get_spend(s, spend_id)
    events = [{"seq": e.seq, "time": e.time.isoformat(), "kind": e.kind, "actor": e.actor, "data": json.loads(e.data)}
              for e in s.scalars(select(EventLogEntry).where(EventLogEntry.subject == f"spend:{spend_id}")
                                 .order_by(EventLogEntry.seq))]
    tip = ledger.tip_height(s)
    if spend.confirmed_height is not None and tip is not None:
        for e in events:
            if e["kind"] == "spend.confirmed":
                e["data"]["confirmations_now"] = tip - spend.confirmed_height + 1
    return events


def signatures_outstanding(s: Session) -> int:
    """Signatures still needed across every spend collecting them."""
    missing = 0
    for spend, threshold in s.execute(select(Spend, Policy.threshold).join(Policy, Policy.id == Spend.policy_id)
                                      .where(Spend.state == "signing")):
        have = s.scalar(select(func.count()).select_from(SpendSignature).where(SpendSignature.spend_id == spend.id))
        missing += max(threshold - have, 0)
    return missing


def spends_by_state(s: Session) -> dict[str, int]:
    return dict(s.execute(select(Spend.state, func.count()).group_by(Spend.state)).all())


def spend_sign_on_device(s: Session, spend_id: int, serial: str, *, actor: str) -> dict:
    """Have the device of that serial sign the spend (through HWI); the spend with who newly signed."""
    signers = device_signing.sign_on_device(s, spends.get_spend(s, spend_id), devices.get(s, serial), actor=actor)
    return {**spend_show(s, spend_id), "new_signers": signers}
