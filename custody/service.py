"""The custody operations as the CLI and the API both call them: plain arguments in, JSON-able out.

Each function takes an open database session (the caller owns the transaction: commit on success,
roll back on any error so a refusal leaves the database as it was) and, where the chain is needed, a
NodeClient. Validation lives in the core modules these call, so both front ends refuse the same input
with the same message.
"""
from __future__ import annotations

import json

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from . import eventlog, ledger, registry, spends
from .errors import CustodyError
from .models import Address, Key, Policy
from .node_client import NodeClient
from .spend_models import ApprovalRule, Spend, SpendSignature
from embit.psbt import PSBT


# -- keys and policies ------------------------------------------------------------------------------
def key_import(s: Session, text: str, *, network: str, fingerprint: str | None = None, path: str | None = None) -> dict:
    key = registry.import_key(s, text, network=network, fingerprint=fingerprint, path=path)
    return {"key": key.descriptor_key, "fingerprint": key.fingerprint, "path": key.path}


def key_list(s: Session) -> list[dict]:
    return [{"fingerprint": k.fingerprint, "path": k.path, "xpub": k.xpub} for k in s.scalars(select(Key).order_by(Key.id))]


def policy_json(s: Session, policy) -> dict:
    balance = ledger.balances(s, policy)[0]
    return {"name": policy.name, "kind": policy.kind, "threshold": policy.threshold, "keys": len(policy.keys),
            "status": policy.status, "network": policy.network, "descriptor": policy.descriptor,
            "balance": balance.total}


def policy_create(s: Session, name: str, *, kind: str, threshold: int, keys: list[str], network: str,
                  recovery_keys: list[str] = (), recovery_threshold: int = 1, recovery_after: int = 0,
                  gap_limit: int = 20, actor: str) -> dict:
    from .policies import build_policy
    spec = build_policy(kind, threshold, list(keys), network=network, recovery_keys=list(recovery_keys),
                        recovery_threshold=recovery_threshold, recovery_after=recovery_after)
    return policy_json(s, registry.create_policy(s, name, spec, gap_limit=gap_limit, actor=actor))


def policy_import(s: Session, text: str, *, fmt: str | None = None, name: str | None = None, network: str,
                  gap_limit: int = 20, actor: str) -> dict:
    from .formats import import_policy
    spec, found_name = import_policy(text, fmt, network=network)
    return policy_json(s, registry.create_policy(s, name or found_name, spec, gap_limit=gap_limit, actor=actor))


def policy_export(s: Session, name: str, fmt: str = "core") -> str:
    from .formats import export_policy
    policy = registry.get_policy(s, name)
    return export_policy(registry.spec_of(policy), fmt, name=policy.name)


def policy_list(s: Session) -> list[dict]:
    return [{k: v for k, v in policy_json(s, p).items() if k != "descriptor"} for p in registry.list_policies(s)]


def policy_show(s: Session, name: str) -> dict:
    policy = registry.get_policy(s, name)
    shown = policy_json(s, policy)
    shown["keys"] = [f"{pk.role}: {pk.key.descriptor_key}" for pk in policy.keys]
    shown["recovery"] = (f"{policy.recovery_threshold} key(s) after {policy.recovery_after} blocks"
                         if policy.kind == "wsh-recovery" else None)
    shown["approval_rule"] = approval_rule_show(s, name)
    return shown


def policy_status(s: Session, name: str, status: str, *, actor: str) -> dict:
    policy = registry.set_status(s, registry.get_policy(s, name), status, actor=actor)
    return {"name": policy.name, "status": policy.status}


def addresses(s: Session, name: str, *, branch: int = 0, unused: bool = False) -> list[dict]:
    if branch not in (0, 1):
        raise CustodyError("branch is 0 (receive) or 1 (change)")
    policy = registry.get_policy(s, name)
    query = select(Address).where(Address.policy_id == policy.id, Address.branch == branch)
    if unused:
        query = query.where(Address.used.is_(False))
    return [{"index": a.index, "address": a.address, "used": a.used} for a in s.scalars(query.order_by(Address.index))]


def derive(descriptor: str, start: int, end: int, *, network: str, branch: int | None = None) -> list:
    """The addresses of start..end; a multipath descriptor (`<0;1>`, as policies are written) gives one list
    per path (receive, then change), or with `branch` that path's list alone."""
    from .derive import derive_descriptor_addresses
    if not 0 <= start <= end or end - start >= 10_000:
        raise CustodyError("derive a range of at most 10,000 indexes, start <= end, both from 0")
    return derive_descriptor_addresses(descriptor, start, end, network=network, branch=branch)


# -- sync -------------------------------------------------------------------------------------------
def sync(sessions: sessionmaker, client: NodeClient, progress=None) -> dict:
    from .sync import Syncer
    report = Syncer(sessions, client, progress=progress).sync_once()
    return {"tip": report.tip_height, "blocks_applied": report.blocks_applied,
            "blocks_rolled_back": report.blocks_rolled_back, "policies_discovered": report.policies_discovered,
            "mempool_transactions": report.transactions_seen}


# -- ledger -----------------------------------------------------------------------------------------
def balance(s: Session, name: str | None = None) -> list[dict]:
    policy = registry.get_policy(s, name) if name else None
    return [b.to_json() for b in ledger.balances(s, policy)]


def balance_history(s: Session, name: str) -> list[dict]:
    return ledger.balance_history(s, registry.get_policy(s, name))


def utxos(s: Session, name: str, *, states: list[str] | None = None, include_spent: bool = False) -> list[dict]:
    return ledger.list_utxos(s, registry.get_policy(s, name), states=tuple(states) if states else None,
                             include_spent=include_spent)


def utxo_page(s: Session, *, policy: str | None = None, states: list[str] | None = None, search: str | None = None,
              sort: str = "height", descending: bool = False, offset: int = 0, limit: int = 50,
              known_total: int | None = None, search_labels: bool = True) -> dict:
    return ledger.utxo_page(s, policy=registry.get_policy(s, policy) if policy else None, states=states,
                            search=search, sort=sort, descending=descending, offset=offset, limit=limit,
                            known_total=known_total, search_labels=search_labels)


def history(s: Session, name: str) -> list[dict]:
    return ledger.history(s, registry.get_policy(s, name))


def freeze(s: Session, outpoint: str, reason: str, *, actor: str) -> dict:
    utxo = ledger.freeze(s, outpoint, reason, actor=actor)
    return {"outpoint": outpoint, "frozen": True, "reason": utxo.freeze_reason}


def unfreeze(s: Session, outpoint: str, *, actor: str) -> dict:
    ledger.unfreeze(s, outpoint, actor=actor)
    return {"outpoint": outpoint, "frozen": False}


def labels_import(s: Session, text: str, *, actor: str = "coordinator") -> dict:
    return {"imported": ledger.import_labels(s, text, actor=actor)}


def labels_store(s: Session, records: list[dict], *, actor: str = "coordinator") -> dict:
    """labels_import's database half, for records ledger.parse_labels checked (in a worker process)."""
    return {"imported": ledger.store_labels(s, records, actor=actor)}


def labels_export(s: Session) -> str:
    return ledger.export_labels(s)


def label_set(s: Session, type_: str, ref: str, text: str, *, actor: str = "coordinator") -> dict:
    ledger.set_label(s, type_, ref, text, actor=actor)
    return {"type": type_, "ref": ref, "label": text}


# -- PSBT tools and the event log -------------------------------------------------------------------
def psbt_check(data: bytes | str, *, network: str) -> dict:
    from .psbt_check import check_psbt
    return check_psbt(data, network=network)


def psbt_check_json(data: bytes | str, *, network: str) -> bytes:
    """psbt_check's summary as JSON bytes: a worker process writes the (possibly 40,000-input) answer,
    so the web service's event loop only sends it."""
    return json.dumps(psbt_check(data, network=network), ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode()


def log_verify(s: Session | None, *, keys: set[str] | None = None, jsonl: str | None = None,
               checkpoints: list[dict] | None = None) -> dict:
    """Check the whole log (or an exported copy), then that it still holds what each checkpoint saw (the
    given ones, and for the database the last it recorded). Refuses with the first problem found."""
    from . import checkpoints as log_checkpoints
    keys = keys or {eventlog.coordinator_key().public_hex}
    result = eventlog.verify_jsonl(jsonl, keys) if jsonl is not None else eventlog.verify(s, keys)
    if not result.ok:
        raise CustodyError(f"event log verification failed: {result.problem}")
    against = list(checkpoints or [])
    if jsonl is None:
        against.append(log_checkpoints.last_recorded(s))
    hashes = _jsonl_hashes(jsonl) if jsonl is not None else None
    for document in against:
        problem = log_checkpoints.contradiction(s, document, hashes)
        if problem:
            raise CustodyError(f"event log verification failed: {problem}")
    return {"ok": True, "entries": result.entries, "head_hash": result.head_hash,
            "checkpoints": sum(d is not None for d in against)}


def _jsonl_hashes(jsonl: str) -> dict[int, str]:
    """seq -> hash of an exported log that verified."""
    return {record["seq"]: record["hash"] for record in map(json.loads, filter(str.strip, jsonl.split("\n")))}


def log_status(s: Session) -> dict:
    """Like log_verify, but reports a broken log instead of refusing: what a dashboard shows."""
    from . import checkpoints as log_checkpoints
    result = eventlog.verify(s, {eventlog.coordinator_key().public_hex})
    last = log_checkpoints.last_recorded(s)
    problem = result.problem or log_checkpoints.contradiction(s, last)
    return {"ok": problem is None, "entries": result.entries, "head_hash": result.head_hash, "problem": problem,
            "checkpoint": None if last is None else {"seq": last["seq"], "time": last["time"]}}


def log_checkpoint(s: Session, directory: str, *, actor: str) -> dict:
    """Sign the log's head and write it to `directory` for the auditor to keep."""
    from . import checkpoints as log_checkpoints
    return log_checkpoints.write(s, directory, actor=actor)


def log_checkpoint_latest(s: Session) -> dict:
    from . import checkpoints as log_checkpoints
    return log_checkpoints.latest(s)


def log_checkpoint_documents(signed: list, *, keys: set[str] | None = None) -> list[dict]:
    """Checked documents of uploaded signed checkpoints (by the coordinator's key, or `keys`)."""
    from . import checkpoints as log_checkpoints
    return log_checkpoints.check_all(signed, keys or {eventlog.coordinator_key().public_hex})


def log_checkpoint_files(paths: list[str], *, keys: set[str] | None = None) -> list[dict]:
    """Checked checkpoint documents from files or directories (signed by the coordinator's key, or `keys`)."""
    from . import checkpoints as log_checkpoints
    return log_checkpoints.load_files(paths, keys or {eventlog.coordinator_key().public_hex})


def log_export(s: Session) -> str:
    return eventlog.export_jsonl(s)


def log_entries(s: Session, *, subject: str | None = None, offset: int = 0, limit: int = 100) -> dict:
    from .models import EventLogEntry
    if limit < 1 or limit > 1000 or offset < 0:
        raise CustodyError("limit is 1..1000 and offset at least 0")
    query = select(EventLogEntry)
    if subject:
        query = query.where(EventLogEntry.subject == subject)
    total = s.scalar(select(func.count()).select_from(query.subquery()))
    rows = s.scalars(query.order_by(EventLogEntry.seq.desc()).offset(offset).limit(limit))
    return {"total": total, "entries": [{"seq": e.seq, "time": e.time.isoformat(), "kind": e.kind, "actor": e.actor,
                                          "subject": e.subject, "data": json.loads(e.data), "hash": e.hash}
                                         for e in rows]}


# -- spends -----------------------------------------------------------------------------------------
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
    from .models import EventLogEntry
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
