"""The tamper-evident log of custody events.

Every custody event (policy created, spend requested, approved, PSBT created, signed, broadcast,
confirmed, a coin frozen, ...) is one entry. Its hash covers its contents and the previous entry's
hash, and the coordinator signs that hash with its ed25519 key, so editing, deleting, inserting or
reordering entries breaks the chain at a point `verify` names. An entry is added in the caller's
transaction: it lands with the change it records, or not at all.

Canonical form (what an independent verifier recomputes): SHA-256 over the UTF-8 bytes of
``json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` where record is
``{"seq", "time", "kind", "actor", "subject", "data", "prev_hash"}``; time is ISO 8601 UTC with
microseconds and a "Z" (2025-01-31T12:00:00.000000Z), data the JSON object itself, and the first
entry's prev_hash 64 zeros. The signature is ed25519 over the 32 raw bytes of the hash.

What the chain cannot show on its own: entries cut off the end of the log, or a log rewritten and
re-signed by whoever holds the key. Signed heads published outside the host (`custody.eventlog.checkpoints`)
show both; the key itself may live outside the host too (`key_source`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import nacl.exceptions
import nacl.signing
from sqlalchemy import select, String, text, type_coerce
from sqlalchemy.orm import Session

from custody.errors import CustodyError
from custody.eventlog.models import EventLogEntry
from custody.json_depth import MAX_JSON_DEPTH, check_json_depth

GENESIS = "0" * 64
KINDS = ("policy.created", "spend.requested", "spend.approved", "psbt.created", "psbt.signed",
         "spend.broadcast", "spend.confirmed", "utxo.frozen")   # known today; device events follow
FIELDS = ("seq", "time", "kind", "actor", "subject", "data", "prev_hash", "hash", "signature", "key_id")
_LOCK_KEY = int.from_bytes(hashlib.sha256(b"custody.event_log").digest()[:8], "big", signed=True)
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_HEX128 = re.compile(r"[0-9a-f]{128}\Z")
_LIMITS = {"kind": 64, "actor": 200, "subject": 200}


class EventLogError(CustodyError, ValueError):
    """Refused: an event that cannot be logged faithfully (a float amount, a non-JSON value, ...)."""


# -- the coordinator's signing key -----------------------------------------------------------------
def default_key_path() -> Path:
    """Next to the default database: $CUSTODY_HOME/coordinator.key (~/.custody by default)."""
    return Path(os.environ.get("CUSTODY_HOME", Path.home() / ".custody")) / "coordinator.key"


class CoordinatorKey:
    """The ed25519 key the coordinator signs log entries with; its file holds the 32-byte seed in hex."""

    def __init__(self, signing_key: nacl.signing.SigningKey):
        self._signing_key = signing_key

    @property
    def signing_key(self) -> nacl.signing.SigningKey:
        """For documents the coordinator signs besides log entries (e.g. its proof-of-reserves self-check)."""
        return self._signing_key

    @classmethod
    def from_seed(cls, seed: bytes) -> "CoordinatorKey":
        """A key from a known 32-byte seed (tests, or a seed kept in an HSM-backed secret store)."""
        if len(seed) != 32:
            raise EventLogError("a coordinator key seed is 32 bytes")
        return cls(nacl.signing.SigningKey(seed))

    @classmethod
    def load(cls, path: str | Path | None = None) -> "CoordinatorKey":
        """Read an existing key file; refuse one others can read (a readable key can forge the log)."""
        path = Path(path) if path is not None else default_key_path()
        mode = path.stat().st_mode
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise EventLogError(f"{path} is readable by others (mode {stat.S_IMODE(mode):04o}); "
                                f"it must be 0600: chmod 600 {path}")
        seed = path.read_text().strip()
        if not _HEX64.match(seed.lower()):
            raise EventLogError(f"{path} does not hold a 32-byte hex seed")
        return cls.from_seed(bytes.fromhex(seed))

    @classmethod
    def load_or_create(cls, path: str | Path | None = None) -> "CoordinatorKey":
        """The coordinator's key, created (mode 0600, exclusively, so two processes agree) on first use."""
        path = Path(path) if path is not None else default_key_path()
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            seed = os.urandom(32)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return cls.load(path)          # another process created it first: use that one
            with os.fdopen(fd, "w") as f:
                f.write(seed.hex() + "\n")
                f.flush()
                os.fsync(f.fileno())
        return cls.load(path)

    @property
    def public_hex(self) -> str:
        """The public key in hex: the key_id of every entry this key signs."""
        return bytes(self._signing_key.verify_key).hex()

    def sign(self, message: bytes) -> bytes:
        """The 64-byte detached ed25519 signature of message."""
        return self._signing_key.sign(message).signature


# -- canonical form --------------------------------------------------------------------------------
def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def format_time(moment: datetime) -> str:
    """ISO 8601 UTC with microseconds and a Z; a naive time is taken as UTC (SQLite drops the zone)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_hash(seq: int, time: str, kind: str, actor: str, subject: str, data: dict, prev_hash: str) -> str:
    """The hex SHA-256 an entry's `hash` must equal (time already in canonical form)."""
    record = {"seq": seq, "time": time, "kind": kind, "actor": actor, "subject": subject, "data": data,
              "prev_hash": prev_hash}
    return hashlib.sha256(canonical_json(record).encode("utf-8")).hexdigest()


def _check_data(value: Any, where: str) -> None:
    """Only what JSON keeps exactly: a float amount would not survive as the same number everywhere."""
    if isinstance(value, float):
        raise EventLogError(f"{where} is a float ({value!r}); amounts are integer satoshis")
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_data(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise EventLogError(f"{where} has a key that is not a string: {k!r}")
            _check_data(item, f"{where}.{k}")
        return
    raise EventLogError(f"{where} is a {type(value).__name__}, which JSON cannot hold exactly")


MAX_LINE = 16_000_000        # characters of one exported entry


def _strict_loads(text_: str) -> Any:
    """json.loads that refuses duplicate keys (two readers could see two different values), and values
    nested deeper than MAX_JSON_DEPTH."""
    check_json_depth(text_)
    def pairs(items):
        obj = {}
        for k, v in items:
            if k in obj:
                raise ValueError(f"duplicate key {k!r}")
            obj[k] = v
        return obj

    def no_constant(name):
        raise ValueError(f"{name} is not JSON")

    def finite(number: str) -> float:
        value = float(number)
        if value in (float("inf"), float("-inf")):
            raise ValueError(f"{number} is out of range")
        return value
    try:
        return json.loads(text_, object_pairs_hook=pairs, parse_constant=no_constant, parse_float=finite)
    except RecursionError:
        raise ValueError(f"nested deeper than this reader can follow (at most {MAX_JSON_DEPTH} levels)") from None


# -- appending -------------------------------------------------------------------------------------
def lock_tail(session: Session) -> None:
    """Serialise writers before reading the last entry so two of them cannot both extend it."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    elif dialect == "sqlite":
        # A write that changes nothing takes SQLite's write lock now, before the tail is read.
        session.execute(text("UPDATE event_log SET seq = seq WHERE 0"))


def append(session: Session, key: CoordinatorKey, kind: str, actor: str, subject: str,
           data: dict | None = None) -> EventLogEntry:
    """Log one event in the caller's transaction (not committed here: it lands with its change or not
    at all). Raises EventLogError (a ValueError) for floats or anything JSON cannot hold exactly."""
    for name, value in (("kind", kind), ("actor", actor), ("subject", subject)):
        if not isinstance(value, str):
            raise EventLogError(f"{name} must be a string")
        if len(value) > _LIMITS[name]:
            raise EventLogError(f"{name} is longer than {_LIMITS[name]} characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise EventLogError(f"{name} is not valid text") from None
    if not kind:
        raise EventLogError("an event needs a kind")
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise EventLogError("event data is a JSON object (a dict)")
    _check_data(data, "data")
    try:
        data_text = canonical_json(data)
        data_text.encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as e:
        raise EventLogError(f"event data cannot be logged: {e}") from None

    lock_tail(session)
    session.flush()   # earlier entries of this transaction are part of the tail
    last = session.execute(select(EventLogEntry.seq, EventLogEntry.hash)
                           .order_by(EventLogEntry.seq.desc()).limit(1)).first()
    seq, prev_hash = (last.seq + 1, last.hash) if last else (1, GENESIS)
    moment = datetime.now(timezone.utc)
    digest = entry_hash(seq, format_time(moment), kind, actor, subject, json.loads(data_text), prev_hash)
    entry = EventLogEntry(seq=seq, time=moment, kind=kind, actor=actor, subject=subject, data=data_text,
                          prev_hash=prev_hash, hash=digest, signature=key.sign(bytes.fromhex(digest)).hex(),
                          key_id=key.public_hex)
    session.add(entry)
    session.flush()   # the unique seq is the last guard against a fork: fail here, not at commit
    return entry


# -- verification ----------------------------------------------------------------------------------
@dataclass
class VerifyResult:
    """ok, or the first bad entry and why. entries: how many entries verified before the first bad one
    (all of them when ok); head_hash: the hash of the last good entry, to record and check later."""
    ok: bool
    entries: int
    first_bad_seq: int | None = None
    problem: str | None = None
    head_hash: str | None = None


def _verify_records(records: Iterable[tuple[int, dict | str]], public_keys: set[str] | None, *,
                    file_order: bool = False) -> VerifyResult:
    """records: (position from 1, the record or why it could not be read) in log order: seq order from
    the database (a gap is a deletion), line order from a file (a gap may also be a moved line)."""
    known = {k.lower() for k in public_keys} if public_keys is not None else None
    prev_hash, count = GENESIS, 0

    def bad(seq: int, problem: str) -> VerifyResult:
        return VerifyResult(False, count, seq, f"entry {seq}: {problem}", prev_hash if count else None)

    for expected, record in records:
        if isinstance(record, str):
            return bad(expected, record)
        seq = record.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            return bad(expected, f"malformed: seq is {seq!r}")
        if seq > expected:
            where = f"the log goes from entry {expected - 1} to entry {seq}" if expected > 1 \
                else f"the log starts at entry {seq}"
            return bad(expected, f"missing, {where} ({'deleted or moved' if file_order else 'deleted'})")
        if seq < expected:
            return bad(expected, f"expected next but found entry {seq} (duplicated or reordered)")
        if record.get("_problem"):
            return bad(seq, record["_problem"])
        for name in ("time", "kind", "actor", "subject"):
            if not isinstance(record.get(name), str):
                return bad(seq, f"malformed: {name} is not a string")
        if not isinstance(record.get("data"), dict):
            return bad(seq, "malformed: data is not a JSON object")
        for name, pattern in (("prev_hash", _HEX64), ("hash", _HEX64), ("signature", _HEX128), ("key_id", _HEX64)):
            if not isinstance(record.get(name), str) or not pattern.match(record[name]):
                return bad(seq, f"malformed: {name} is not lowercase hex of the right length")
        if record["prev_hash"] != prev_hash:
            before = f"entry {seq - 1}'s hash" if seq > 1 else "the genesis value (64 zeros)"
            return bad(seq, f"prev_hash does not match {before} (an entry was deleted, inserted or reordered)")
        try:
            digest = entry_hash(seq, record["time"], record["kind"], record["actor"], record["subject"],
                                record["data"], record["prev_hash"])
        except (TypeError, ValueError, UnicodeEncodeError) as e:
            return bad(seq, f"malformed: {e}")
        if digest != record["hash"]:
            return bad(seq, "hash does not match its contents (edited)")
        if known is not None and record["key_id"] not in known:
            return bad(seq, f"signed by unknown key {record['key_id']} (not a coordinator key)")
        try:
            nacl.signing.VerifyKey(bytes.fromhex(record["key_id"])).verify(bytes.fromhex(digest),
                                                                           bytes.fromhex(record["signature"]))
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
            return bad(seq, "signature does not verify (forged or altered)")
        prev_hash, count = digest, count + 1
    return VerifyResult(True, count, None, None, prev_hash if count else None)


def _rows(session: Session) -> Iterator:
    """Plain rows in seq order (not ORM objects: no stale identity map, no memory growth). time is
    read as stored so an unparseable value names its entry instead of failing the whole read."""
    t = EventLogEntry
    query = select(t.seq, type_coerce(t.time, String).label("time"), t.kind, t.actor, t.subject, t.data,
                   t.prev_hash, t.hash, t.signature, t.key_id).order_by(t.seq)
    return session.execute(query.execution_options(yield_per=1000))


def _row_time(value: Any) -> str:
    if isinstance(value, datetime):
        return format_time(value)
    return format_time(datetime.fromisoformat(str(value)))


def _db_records(session: Session) -> Iterator[tuple[int, dict]]:
    """Stored entries as records; what cannot be read as stored is kept raw, with the reason in
    "_problem" for the verifier (reported once the entry's place in the chain is checked)."""
    for position, row in enumerate(_rows(session), start=1):
        record = dict(row._mapping)
        try:
            record["time"] = _row_time(record["time"])
        except (TypeError, ValueError):
            record["_problem"] = f"time {record['time']!r} is not a valid time (edited)"
            record["time"] = str(record["time"])
        stored = record["data"]
        try:
            record["data"] = _strict_loads(stored)
        except (TypeError, ValueError):
            record.setdefault("_problem", "data is not valid JSON (edited)")
        else:
            try:
                if canonical_json(record["data"]) != stored:
                    record.setdefault("_problem", "data is not in its canonical form (edited)")
            except ValueError:
                pass   # not JSON-safe (e.g. an infinite float): the hash check names it
        yield position, record


def verify(session: Session, public_keys: set[str] | None = None) -> VerifyResult:
    """Recompute every hash and signature in seq order and name the first bad entry. Pass the
    coordinator's public key(s): without them only internal consistency is checked, and a log
    rewritten from some entry on and re-signed with another key would still verify."""
    return _verify_records(_db_records(session), public_keys)


# -- export ----------------------------------------------------------------------------------------
def export_jsonl(session: Session) -> str:
    """The log as JSONL, one entry per line, every field an auditor needs to verify it alone
    (`verify_jsonl`). Exported as stored, so a tampered entry stays visible in the copy."""
    lines = []
    for _, record in _db_records(session):
        lines.append(canonical_json({name: record[name] for name in FIELDS}))
    return "".join(line + "\n" for line in lines)


def verify_jsonl(text_: str, public_keys: set[str] | None = None) -> VerifyResult:
    """Verify an exported log standalone (an auditor's copy), line by line in file order, with the
    same checks as `verify`."""
    lines = text_.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()

    def records() -> Iterator[tuple[int, dict | str]]:
        for position, line in enumerate(lines, start=1):
            if len(line) > MAX_LINE:
                yield position, f"line {position} is longer than {MAX_LINE:,} characters: not an exported entry"
                return
            try:
                record = _strict_loads(line)
            except ValueError as e:
                yield position, f"line {position} is not valid JSON ({e})"
                return
            if not isinstance(record, dict):
                yield position, f"line {position} is not a JSON object"
                return
            extra = sorted(set(record) - set(FIELDS))
            missing = [name for name in FIELDS if name not in record]
            if extra or missing:
                yield position, (f"line {position} has unexpected fields {extra}" if extra
                                 else f"line {position} lacks {missing}")
                return
            yield position, record
    return _verify_records(records(), public_keys, file_order=True)


_loaded_keys: dict[str, CoordinatorKey] = {}


def key_source() -> str:
    """Where this coordinator's log key is, by precedence: a signer process ($CUSTODY_LOG_SIGNER=unix:PATH,
    the key on another host or user), a key file anywhere ($CUSTODY_LOG_KEY, e.g. a mounted secret), or
    the default file beside the default database."""
    signer = os.environ.get("CUSTODY_LOG_SIGNER")
    if signer:
        return signer
    return "file:" + str(os.environ.get("CUSTODY_LOG_KEY") or default_key_path())


def coordinator_key() -> CoordinatorKey:
    """This coordinator's signing key, from `key_source()`. The default file is made on first use; a
    $CUSTODY_LOG_KEY file must exist, and a signer must answer, or nothing is logged (EventLogError)."""
    source = key_source()
    if source not in _loaded_keys:
        if source.startswith("file:"):
            path = source[len("file:"):]
            if os.environ.get("CUSTODY_LOG_KEY"):
                if not Path(path).exists():
                    raise EventLogError(f"the log key file {path} ($CUSTODY_LOG_KEY) does not exist")
                _loaded_keys[source] = CoordinatorKey.load(path)
            else:
                _loaded_keys[source] = CoordinatorKey.load_or_create(path)
        else:
            from custody.eventlog.signer import RemoteKey
            _loaded_keys[source] = RemoteKey.connect(source)
    return _loaded_keys[source]


def record(session: Session, kind: str, actor: str, subject: str, data: dict | None = None) -> EventLogEntry:
    """Log a custody event with this coordinator's key, in the caller's transaction."""
    return append(session, coordinator_key(), kind, actor, subject, data)
