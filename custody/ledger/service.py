"""The custody operations as the CLI and the API both call them: plain arguments in, JSON-able out.

Each function takes an open database session (the caller owns the transaction: commit on success,
roll back on any error so a refusal leaves the database as it was) and, where the chain is needed, a
NodeClient. Validation lives in the core modules these call, so both front ends refuse the same input
with the same message.
"""
from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody.chain.node_client import NodeClient
from custody.errors import CustodyError
from custody.ledger import coins as ledger, registry
from custody.ledger.models import Address, Key


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
    from custody.bitcoin.policies import build_policy
    spec = build_policy(kind, threshold, list(keys), network=network, recovery_keys=list(recovery_keys),
                        recovery_threshold=recovery_threshold, recovery_after=recovery_after)
    return policy_json(s, registry.create_policy(s, name, spec, gap_limit=gap_limit, actor=actor))


def policy_import(s: Session, text: str, *, fmt: str | None = None, name: str | None = None, network: str,
                  gap_limit: int = 20, actor: str) -> dict:
    from custody.bitcoin.formats import import_policy
    spec, found_name = import_policy(text, fmt, network=network)
    return policy_json(s, registry.create_policy(s, name or found_name, spec, gap_limit=gap_limit, actor=actor))


def policy_export(s: Session, name: str, fmt: str = "core") -> str:
    from custody.bitcoin.formats import export_policy
    policy = registry.get_policy(s, name)
    return export_policy(registry.spec_of(policy), fmt, name=policy.name)


def policy_list(s: Session) -> list[dict]:
    return [{k: v for k, v in policy_json(s, p).items() if k != "descriptor"} for p in registry.list_policies(s)]


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
    from custody.bitcoin.derive import derive_descriptor_addresses
    if not 0 <= start <= end or end - start >= 10_000:
        raise CustodyError("derive a range of at most 10,000 indexes, start <= end, both from 0")
    return derive_descriptor_addresses(descriptor, start, end, network=network, branch=branch)


# -- sync -------------------------------------------------------------------------------------------
def sync(sessions: sessionmaker, client: NodeClient, progress=None) -> dict:
    from custody.ledger.sync import Syncer
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


COIN_STATES = ledger.STATES      # a coin's states, as the interfaces offer them to filter by


def labels_parse(jsonl: str) -> list[dict]:
    """BIP-329 JSON Lines checked and parsed, without the database (the API runs it in a worker process)."""
    return ledger.parse_labels(jsonl)


def total_balance_history(s: Session) -> list[dict]:
    """The custodian's total confirmed balance after each block where any policy changed."""
    histories = {p.name: ledger.balance_history(s, p) for p in registry.list_policies(s)}
    heights = sorted({p["height"] for points in histories.values() for p in points})
    out, current = [], {name: 0 for name in histories}
    by_height = {name: {p["height"]: p["balance"] for p in points} for name, points in histories.items()}
    for h in heights:
        for name in histories:
            current[name] = by_height[name].get(h, current[name])
        out.append({"height": h, "balance": sum(current.values())})
    return out


def value_distribution(s: Session) -> list[dict]:
    """Unspent coins per power-of-ten value bucket, over every policy."""
    return ledger.value_distribution(s)


def frozen_count(s: Session) -> int:
    return ledger.utxo_page(s, states=["frozen"], limit=1)["total"]


def policy_names(s: Session, *, statuses: tuple[str, ...] | None = None) -> list[str]:
    """Every policy's name (only those in `statuses`, when given), for a form's choices."""
    return [p.name for p in registry.list_policies(s) if statuses is None or p.status in statuses]


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


# -- PSBT tools -------------------------------------------------------------------
def psbt_check(data: bytes | str, *, network: str) -> dict:
    from custody.bitcoin.psbt_check import check_psbt
    return check_psbt(data, network=network)


def psbt_check_json(data: bytes | str, *, network: str) -> bytes:
    """psbt_check's summary as JSON bytes: a worker process writes the (possibly 40,000-input) answer,
    so the web service's event loop only sends it."""
    return json.dumps(psbt_check(data, network=network), ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode()
