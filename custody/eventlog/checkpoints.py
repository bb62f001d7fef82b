"""Checkpoints of the event log: its head, signed by the coordinator's log key and published outside the
host, so a log cut short or rewritten by whoever holds the database (and even the key) is caught.

A checkpoint (`audit.log_checkpoint` defines it, so the auditor reads the same definition) is written
to a directory the auditor copies (`custody log checkpoint --out DIR`, or the leader loop every
CUSTODY_CHECKPOINT_SECONDS into CUSTODY_CHECKPOINT_DIR) and goes inside every proof-of-reserves package.
Each one is recorded in the database (`EventLogCheckpoint`) and logged (`log.checkpoint`): the last
recorded one catches a cut log without any file, the files catch a cut that took the records too.

A checkpoint is signed only over a log that verifies and does not contradict the last one recorded:
the coordinator never vouches for a broken log.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from audit import log_checkpoint
from audit.log_checkpoint import CheckpointError

from custody.errors import CustodyError, NotFound
from custody.eventlog import log as eventlog
from custody.eventlog.models import EventLogCheckpoint, EventLogEntry

DEFAULT_EVERY = 3600             # seconds between scheduled checkpoints


# -- making one ------------------------------------------------------------------------------------
def _head(session: Session) -> tuple[int, str, str, int]:
    """(seq, hash, log_id, count) of the log as it stands; an empty log's head is seq 0 and 64 zeros."""
    last = session.execute(select(EventLogEntry.seq, EventLogEntry.hash)
                           .order_by(EventLogEntry.seq.desc()).limit(1)).first()
    first = session.scalar(select(EventLogEntry.hash).where(EventLogEntry.seq == 1))
    count = session.scalar(select(func.count()).select_from(EventLogEntry))
    if last is None:
        return 0, eventlog.GENESIS, eventlog.GENESIS, 0
    return last.seq, last.hash, first or eventlog.GENESIS, count


def create(session: Session, *, destination: str, actor: str = "coordinator") -> dict:
    """Sign the log's head as a checkpoint, record and log it (in the caller's transaction); the signed
    checkpoint ({"checkpoint", "signature"}) is returned for the caller to publish."""
    key = eventlog.coordinator_key()               # an unreachable signer refuses here, before anything
    eventlog.lock_tail(session)                    # no entry lands between reading the head and logging
    result = eventlog.verify(session, {key.public_hex})
    if not result.ok:
        raise CustodyError(f"no checkpoint is signed over a broken log: {result.problem}")
    problem = contradiction(session, last_recorded(session))
    if problem:
        raise CustodyError(f"no checkpoint is signed over a broken log: {problem}")
    seq, head_hash, log_id, count = _head(session)
    moment = datetime.now(timezone.utc)
    document = {"format": log_checkpoint.FORMAT, "log_id": log_id, "key_id": key.public_hex, "seq": seq,
                "head_hash": head_hash, "count": count, "time": eventlog.format_time(moment)}
    signed = {"checkpoint": document, "signature": key.sign(log_checkpoint.digest(document)).hex()}
    session.add(EventLogCheckpoint(seq=seq, head_hash=head_hash, time=moment, document=json.dumps(signed),
                                   destination=destination[:500]))
    eventlog.record(session, "log.checkpoint", actor, f"log:{seq}",
                    {"seq": seq, "head_hash": head_hash, "count": count, "destination": destination[:500]})
    return signed


def file_name(document: dict) -> str:
    return f"checkpoint-{document['seq']:012d}-{document['time'].replace(':', '')}.json"


def write(session: Session, directory: str | Path, *, actor: str = "coordinator") -> dict:
    """A checkpoint written to `directory` (made if missing). The file is complete on disk before the
    record of it commits: a crash leaves a file of a head that exists, never a record of a missing file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not os.access(directory, os.W_OK):
        raise CustodyError(f"cannot write checkpoints to {directory}: not writable")
    signed = create(session, destination=str(directory), actor=actor)
    path = directory / file_name(signed["checkpoint"])
    temporary = path.with_suffix(".tmp")
    with open(temporary, "w") as f:
        f.write(json.dumps(signed, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    return {**signed["checkpoint"], "file": str(path)}


def due(session: Session, every_seconds: float) -> bool:
    """Whether a scheduled checkpoint is due: the last one is older than `every_seconds` and something
    was logged since (besides that checkpoint's own log.checkpoint entry)."""
    last = session.scalar(select(EventLogCheckpoint).order_by(EventLogCheckpoint.id.desc()).limit(1))
    if last is None:
        return True
    at = last.time if last.time.tzinfo else last.time.replace(tzinfo=timezone.utc)
    if datetime.now(timezone.utc) - at < timedelta(seconds=every_seconds):
        return False
    head = session.scalar(select(func.max(EventLogEntry.seq))) or 0
    return head > last.seq + 1


def scheduled(sessions, directory: str | Path, every_seconds: float) -> dict | None:
    """The leader loop's checkpoint: written when due, else None."""
    with sessions() as s:
        if not due(s, every_seconds):
            return None
    with sessions.begin() as s:
        return write(s, directory)


# -- checking the log against them ------------------------------------------------------------------
def last_recorded(session: Session) -> dict | None:
    """The most recent checkpoint this database recorded (its document), or None."""
    row = session.scalar(select(EventLogCheckpoint).order_by(EventLogCheckpoint.seq.desc(),
                                                             EventLogCheckpoint.id.desc()).limit(1))
    return None if row is None else json.loads(row.document)["checkpoint"]


def latest(session: Session) -> dict:
    """The most recent signed checkpoint, as published (for auditors to download)."""
    row = session.scalar(select(EventLogCheckpoint).order_by(EventLogCheckpoint.id.desc()).limit(1))
    if row is None:
        raise NotFound("no checkpoint of the event log has been made yet: run `custody log checkpoint --out DIR`")
    return json.loads(row.document)


def contradiction(session: Session, document: dict | None, hashes: dict[int, str] | None = None) -> str | None:
    """Why the log contradicts a checkpoint, or None: the log ends before the checkpoint's seq (cut), or
    its entry at that seq has another hash (rewritten). `hashes` (seq -> hash) stands for the log when
    checking an exported copy; otherwise the database's log is read."""
    if document is None:
        return None
    seq, saw = document["seq"], document["head_hash"]
    if hashes is None:
        last = session.scalar(select(func.max(EventLogEntry.seq))) or 0
        found = session.scalar(select(EventLogEntry.hash).where(EventLogEntry.seq == seq)) if seq else eventlog.GENESIS
        first = session.scalar(select(EventLogEntry.hash).where(EventLogEntry.seq == 1))
    else:
        last = max(hashes, default=0)
        found = hashes.get(seq) if seq else eventlog.GENESIS
        first = hashes.get(1)
    when = log_checkpoint.describe(document)
    if last < seq or found is None:
        return f"the log ends at seq {last} but the {when} saw seq {seq} with head {saw} (entries were cut)"
    if found != saw:
        return f"the entry at seq {seq} has hash {found} but the {when} saw {saw} (the log was rewritten)"
    if seq and first != document["log_id"]:
        return f"the log's first entry has hash {first} but the {when} is of log {document['log_id']}"
    return None


def check_all(signed: list, public_keys: set[str]) -> list[dict]:
    """Checked documents of signed checkpoints (as uploaded); CustodyError naming the first bad one."""
    documents = []
    for n, item in enumerate(signed, start=1):
        try:
            documents.append(log_checkpoint.check(item, public_keys))
        except CheckpointError as e:
            raise CustodyError(f"checkpoint {n}: {e}") from None
    return documents


def load_files(paths: list[str | Path], public_keys: set[str]) -> list[dict]:
    """Checked checkpoint documents from files (or directories of them); CustodyError naming a bad one."""
    try:
        return log_checkpoint.load_files([Path(p) for p in paths], public_keys)
    except (CheckpointError, OSError) as e:
        raise CustodyError(str(e)) from None
