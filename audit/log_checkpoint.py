"""Event-log checkpoints: the custodian's signed statement "my event log had N entries ending in hash H
at time T", published outside its host (files an auditor keeps, and one inside every proof-of-reserves
package). The custodian writes them (`custody.eventlog.checkpoints`), the auditor checks them here, with nothing
of the custodian's code: a later head must be signed by the same key and never fall below a kept one.

A checkpoint file is ``{"checkpoint": {...}, "signature": HEX}``; the signature is ed25519, by the
coordinator's log key (`key_id`), over the 32-byte SHA-256 of the checkpoint's canonical JSON (sorted
keys, no spaces, UTF-8). `log_id` is the hash of the log's first entry: it tells two logs signed with
one key apart.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import VerifyKey

FORMAT = "custody-event-log-checkpoint/1"
FIELDS = {"format": str, "log_id": str, "key_id": str, "seq": int, "head_hash": str, "count": int, "time": str}
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_HEX128 = re.compile(r"[0-9a-f]{128}\Z")
MAX_FILE = 100_000


class CheckpointError(ValueError):
    """Not a checkpoint, or one whose signature does not hold."""


def canonical(document: dict) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(document: dict) -> bytes:
    """What the coordinator's key signs: SHA-256 of the canonical document."""
    return hashlib.sha256(canonical(document)).digest()


def check(signed, public_keys: set[str] | None = None) -> dict:
    """The checkpoint document, if it is well formed and its signature holds (by one of `public_keys`
    when given); CheckpointError naming what is wrong otherwise."""
    if not isinstance(signed, dict) or set(signed) != {"checkpoint", "signature"}:
        raise CheckpointError("not a checkpoint (expected {\"checkpoint\": ..., \"signature\": ...})")
    document, signature = signed["checkpoint"], signed["signature"]
    if not isinstance(document, dict) or set(document) != set(FIELDS):
        raise CheckpointError(f"not a checkpoint (its fields must be {', '.join(sorted(FIELDS))})")
    for name, kind in FIELDS.items():
        if not isinstance(document[name], kind) or isinstance(document[name], bool):
            raise CheckpointError(f"the checkpoint's {name!r} is not a {kind.__name__}")
    if document["format"] != FORMAT:
        raise CheckpointError(f"unknown checkpoint format {document['format']!r} (expected {FORMAT!r})")
    for name in ("log_id", "key_id", "head_hash"):
        if not _HEX64.match(document[name]):
            raise CheckpointError(f"the checkpoint's {name} is not 64 lowercase hex digits")
    if document["seq"] < 0 or document["count"] < 0:
        raise CheckpointError("the checkpoint's seq and count are not negative")
    if not isinstance(signature, str) or not _HEX128.match(signature):
        raise CheckpointError("the checkpoint's signature is not 128 lowercase hex digits")
    if public_keys is not None and document["key_id"] not in {k.lower() for k in public_keys}:
        raise CheckpointError(f"the checkpoint is signed by {document['key_id']}, not by a coordinator key "
                              "you accept")
    try:
        VerifyKey(bytes.fromhex(document["key_id"])).verify(digest(document), bytes.fromhex(signature))
    except (BadSignatureError, CryptoError, ValueError):
        raise CheckpointError("the checkpoint's signature does not verify (forged or altered)") from None
    return document


def load(text: str, public_keys: set[str] | None = None) -> dict:
    """A checkpoint file's document, checked."""
    if len(text) > MAX_FILE:
        raise CheckpointError(f"longer than {MAX_FILE:,} characters: not a checkpoint")
    try:
        signed = json.loads(text)
    except ValueError as e:
        raise CheckpointError(f"not JSON ({e})") from None
    return check(signed, public_keys)


def load_files(paths: list[Path], public_keys: set[str] | None = None) -> list[dict]:
    """Checked documents of checkpoint files (a directory stands for its *.json files), oldest seq first;
    CheckpointError naming the first file that is not a valid checkpoint."""
    files: list[Path] = []
    for path in map(Path, paths):
        files += sorted(path.glob("*.json")) if path.is_dir() else [path]
    documents = []
    for file in files:
        try:
            documents.append(load(file.read_text(), public_keys))
        except CheckpointError as e:
            raise CheckpointError(f"checkpoint {file}: {e}") from None
    return sorted(documents, key=lambda d: d["seq"])


def describe(document: dict) -> str:
    return f"checkpoint of {document['time']}"


def against_kept(head: dict, kept: list[dict]) -> str | None:
    """Why a later head contradicts the kept checkpoints, or None. Without the log only this much can be
    checked: one log, one key, and a head that never moves back (a cut log) or changes at a seq an earlier
    checkpoint saw (a rewritten one). The latest kept checkpoint is compared first: it says the most."""
    for earlier in sorted(kept, key=lambda d: d["seq"], reverse=True):
        if earlier["key_id"] != head["key_id"]:
            return (f"the head is signed by key {head['key_id']} but your {describe(earlier)} by "
                    f"{earlier['key_id']}: the coordinator's log key changed")
        if earlier["log_id"] != head["log_id"]:
            return (f"the head is of log {head['log_id']} but your {describe(earlier)} of log "
                    f"{earlier['log_id']}: another log")
        if head["seq"] < earlier["seq"]:
            return (f"the log ends at seq {head['seq']} but your {describe(earlier)} saw seq {earlier['seq']} "
                    f"with head {earlier['head_hash']}: the log was cut")
        if head["seq"] == earlier["seq"] and head["head_hash"] != earlier["head_hash"]:
            return (f"the entry at seq {head['seq']} has hash {head['head_hash']} but your {describe(earlier)} saw "
                    f"{earlier['head_hash']}: the log was rewritten")
    return None
