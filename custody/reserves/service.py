"""Proof-of-reserves operations as the CLI and the API call them: plain arguments in, JSON-able out.
The caller owns the transaction (commit on success, roll back on a refusal)."""
from __future__ import annotations

import json
from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit import report as audit_report, verify as audit_verify

from custody.chain.node_client import NodeClient
from custody.devices import inventory as devices
from custody.errors import CustodyError, NotFound
from custody.eventlog import log as eventlog
from custody.reserves import proofs as reserves
from custody.reserves.models import ReserveRun, ReserveSchedule


def run_json(run: ReserveRun) -> dict:
    return {"id": run.id, "audit": run.audit, "nonce": run.nonce, "custodian": run.custodian, "kind": run.kind,
            "height": run.height, "block_hash": run.block_hash, "policies": json.loads(run.policies),
            "coins": run.coins, "total": run.total, "state": run.state, "verdict": run.verdict,
            "signers": reserves.signers(run), "created_by": run.created_by,
            "created_at": run.created_at.isoformat(timespec="seconds") if run.created_at else None,
            "finalized_at": run.finalized_at.isoformat(timespec="seconds") if run.finalized_at else None}


def create(s: Session, client: NodeClient, *, nonce: str, audit: str, custodian: str, policies: list[str] | None,
           height: int | None, kind: str, actor: str) -> dict:
    run = reserves.create(s, client, nonce=nonce, audit=audit, custodian=custodian, policies=policies,
                          height=height, kind=kind, actor=actor)
    return {**run_json(run), "message": run.message}


def runs(s: Session) -> list[dict]:
    return [run_json(r) for r in s.scalars(select(ReserveRun).order_by(ReserveRun.id.desc()))]


def show(s: Session, run_id: int) -> dict:
    run = reserves.get_run(s, run_id)
    return {**run_json(run), "message": run.message}


def psbt(s: Session, run_id: int) -> str:
    return reserves.get_run(s, run_id).psbt


def sign(s: Session, run_id: int, upload: str, *, actor: str) -> dict:
    signers = reserves.add_signatures(s, reserves.get_run(s, run_id), upload, actor=actor)
    return {**show(s, run_id), "new_signers": signers}


def signing_input(s: Session, run_id: int) -> str:
    """sign in three steps, for the web service: this (the database), reserves.merge_signatures (CPU
    only: a worker process runs it), store_signatures (the database)."""
    return reserves.signing_input(reserves.get_run(s, run_id))


def store_signatures(s: Session, run_id: int, merged, *, based_on: str, actor: str) -> dict:
    signers = reserves.store_signatures(s, reserves.get_run(s, run_id), merged, based_on=based_on, actor=actor)
    return {**show(s, run_id), "new_signers": signers}


def sign_on_device(s: Session, run_id: int, serial: str, *, actor: str) -> dict:
    signers = reserves.sign_reserves_on_device(s, reserves.get_run(s, run_id), devices.get(s, serial),
                                                     actor=actor)
    return {**show(s, run_id), "new_signers": signers}


def finalize(s: Session, run_id: int, *, actor: str) -> dict:
    return reserves.finalize_run(s, reserves.get_run(s, run_id), actor=actor)


def package(s: Session, run_id: int) -> str:
    run = reserves.get_run(s, run_id)
    if run.package is None:
        raise CustodyError(f"run #{run.id} is {run.state}: its package is written when it is finalized")
    return run.package


def bip127_psbt(s: Session, run_id: int) -> str:
    return reserves.bip127_psbt(reserves.get_run(s, run_id))


def schedule(s: Session, audit: str, *, every_days: int, policies: list[str] | None, actor: str) -> dict:
    row = reserves.schedule(s, audit, every_days=every_days, policies=policies, actor=actor)
    return schedule_json(row)


def schedule_json(row: ReserveSchedule) -> dict:
    return {"id": row.id, "audit": row.audit, "policies": json.loads(row.policies), "every_days": row.every_days,
            "next_due": row.next_due.isoformat(timespec="seconds"), "created_by": row.created_by}


def schedules(s: Session) -> list[dict]:
    return [schedule_json(r) for r in s.scalars(select(ReserveSchedule).order_by(ReserveSchedule.next_due))]


def self_check(s: Session, client: NodeClient, run_id: int, *, actor: str, min_depth: int = 1) -> dict:
    """Verify a finalized run exactly as an auditor would (`audit.verify`), on this coordinator's node,
    and keep the report, signed with the coordinator's key, for auditors to download."""
    text = package(s, run_id)
    run = reserves.get_run(s, run_id)
    pkg = audit_verify.load_package(text)
    result = audit_verify.verify(pkg, client, nonce=run.nonce, audit=run.audit, min_depth=min_depth)
    signed = audit_report.sign(audit_report.build(pkg, audit_verify.package_digest(text), result,
                                                  auditor="custodian self-check"),
                               eventlog.coordinator_key().signing_key)
    reserves.record_report(s, run, signed, actor=actor)
    return signed


def report(s: Session, run_id: int) -> str:
    run = reserves.get_run(s, run_id)
    if run.report is None:
        raise CustodyError(f"run #{run.id} has not been verified yet")
    return run.report


def report_html(s: Session, run_id: int) -> str:
    return audit_report.to_html(json.loads(report(s, run_id)))


def require_run(s: Session, run_id: int) -> None:
    """NotFound (404 at the API) for a run that does not exist; other refusals are CustodyError (400)."""
    if s.get(ReserveRun, run_id) is None:
        raise NotFound(f"no proof-of-reserves run #{run_id}")


def run_policies(s: Session, run_id: int) -> list[str]:
    """The names of the policies a run proves (what a reader must be allowed to see to download its PSBT
    or package)."""
    return json.loads(s.get(ReserveRun, run_id).policies)


def overdue(next_due: datetime | str, now: datetime | None = None) -> bool:
    """Is a scheduled re-proof past due? (SQLite hands back naive datetimes: they are UTC.)"""
    due = datetime.fromisoformat(next_due) if isinstance(next_due, str) else next_due
    due = due if due.tzinfo else due.replace(tzinfo=timezone.utc)
    return due < (now or datetime.now(timezone.utc))
