"""The event log's operations as the CLI and the API both call them: verify, status, checkpoints, export
(see custody.ledger.service for the conventions: plain arguments in, JSON-able out; the caller owns
the transaction, so a refusal leaves the database as it was)."""
from __future__ import annotations

import json

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from custody.errors import CustodyError
from custody.eventlog import log as eventlog


def coordinator_keys() -> set[str]:
    """The public key (hex) the log's entries are signed with here: what a copy is checked against by default."""
    return {eventlog.coordinator_key().public_hex}


def log_verify(s: Session | None, *, keys: set[str] | None = None, jsonl: str | None = None,
               checkpoints: list[dict] | None = None) -> dict:
    """Check the whole log (or an exported copy), then that it still holds what each checkpoint saw (the
    given ones, and for the database the last it recorded). Refuses with the first problem found."""
    from custody.eventlog import checkpoints as log_checkpoints
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
    from custody.eventlog import checkpoints as log_checkpoints
    result = eventlog.verify(s, {eventlog.coordinator_key().public_hex})
    last = log_checkpoints.last_recorded(s)
    problem = result.problem or log_checkpoints.contradiction(s, last)
    return {"ok": problem is None, "entries": result.entries, "head_hash": result.head_hash, "problem": problem,
            "checkpoint": None if last is None else {"seq": last["seq"], "time": last["time"]}}


def log_checkpoint(s: Session, directory: str, *, actor: str) -> dict:
    """Sign the log's head and write it to `directory` for the auditor to keep."""
    from custody.eventlog import checkpoints as log_checkpoints
    return log_checkpoints.write(s, directory, actor=actor)


def log_checkpoint_latest(s: Session) -> dict:
    from custody.eventlog import checkpoints as log_checkpoints
    return log_checkpoints.latest(s)


def log_checkpoint_documents(signed: list, *, keys: set[str] | None = None) -> list[dict]:
    """Checked documents of uploaded signed checkpoints (by the coordinator's key, or `keys`)."""
    from custody.eventlog import checkpoints as log_checkpoints
    return log_checkpoints.check_all(signed, keys or {eventlog.coordinator_key().public_hex})


def log_checkpoint_files(paths: list[str], *, keys: set[str] | None = None) -> list[dict]:
    """Checked checkpoint documents from files or directories (signed by the coordinator's key, or `keys`)."""
    from custody.eventlog import checkpoints as log_checkpoints
    return log_checkpoints.load_files(paths, keys or {eventlog.coordinator_key().public_hex})


def log_export(s: Session) -> str:
    return eventlog.export_jsonl(s)


def log_entries(s: Session, *, subject: str | None = None, offset: int = 0, limit: int = 100) -> dict:
    from custody.eventlog.models import EventLogEntry
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
