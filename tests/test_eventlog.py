"""The tamper-evident event log, on SQLite and PostgreSQL: a chain verifies; an edit, a deletion, a
reordering, a forged or foreign signature is found and named by entry; the JSONL export verifies on
its own and fails when altered; floats are refused; a rolled-back event leaves no trace; concurrent
writers never fork the chain."""
from __future__ import annotations

import json
import os
import stat
import threading
from decimal import Decimal

import pytest
from sqlalchemy import select, text

from custody.eventlog import log as eventlog
from custody.eventlog.log import append, CoordinatorKey, export_jsonl, verify, verify_jsonl
from custody.eventlog.models import EventLogEntry
from custody.store.db import open_database

KEY = CoordinatorKey.from_seed(bytes(range(32)))
OTHER_KEY = CoordinatorKey.from_seed(b"\x07" * 32)
N = 8


@pytest.fixture
def sessions(db_url):
    return open_database(db_url)


def events(count: int = N):
    for i in range(1, count + 1):
        kind = eventlog.KINDS[(i - 1) % len(eventlog.KINDS)]
        yield kind, f"officer{i % 3}", f"spend:{i}", {"amount": 100_000 * i, "to": [f"bcrt1q{i}"], "memo": "é"}


@pytest.fixture
def chain(sessions):
    with sessions.begin() as s:
        for kind, actor, subject, data in events():
            append(s, KEY, kind, actor, subject, data)
    return sessions


def check(sessions, public_keys=None):
    with sessions() as s:
        return verify(s, public_keys)


def tamper(sessions, sql: str, **params):
    with sessions.begin() as s:
        s.execute(text(sql), params)


def dialect(sessions) -> str:
    return sessions.kw["bind"].dialect.name


# -- the chain -------------------------------------------------------------------------------------
def test_chain_verifies(chain):
    result = check(chain, {KEY.public_hex})
    assert (result.ok, result.entries, result.first_bad_seq, result.problem) == (True, N, None, None)
    with chain() as s:
        rows = s.scalars(select(EventLogEntry).order_by(EventLogEntry.seq)).all()
    assert [r.seq for r in rows] == list(range(1, N + 1))
    assert rows[0].prev_hash == "0" * 64
    assert all(b.prev_hash == a.hash for a, b in zip(rows, rows[1:]))
    assert {r.key_id for r in rows} == {KEY.public_hex}
    assert result.head_hash == rows[-1].hash
    assert json.loads(rows[0].data) == {"amount": 100_000, "to": ["bcrt1q1"], "memo": "é"}


def test_hash_is_the_documented_canonical_form(chain):
    """An auditor can recompute an entry with nothing but hashlib, json and an ed25519 library."""
    import hashlib
    import nacl.signing
    with chain() as s:
        entry = s.scalar(select(EventLogEntry).where(EventLogEntry.seq == 2))
        record = {"seq": 2, "time": eventlog.format_time(entry.time), "kind": entry.kind, "actor": entry.actor,
                  "subject": entry.subject, "data": json.loads(entry.data), "prev_hash": entry.prev_hash}
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert hashlib.sha256(canonical).hexdigest() == entry.hash
    assert record["time"].endswith("Z") and len(record["time"]) == len("2025-01-31T12:00:00.000000Z")
    nacl.signing.VerifyKey(bytes.fromhex(KEY.public_hex)).verify(bytes.fromhex(entry.hash),
                                                                 bytes.fromhex(entry.signature))


def test_empty_log_verifies(sessions):
    assert check(sessions) == eventlog.VerifyResult(True, 0, None, None, None)


# -- tampering in the database ---------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 4, N])
def test_edited_data_is_found_at_its_entry(chain, k):
    edited = json.dumps({"amount": 999, "memo": "é", "to": [f"bcrt1q{k}"]}, sort_keys=True, separators=(",", ":"),
                        ensure_ascii=False)
    tamper(chain, "UPDATE event_log SET data = :d WHERE seq = :k", d=edited, k=k)
    result = check(chain, {KEY.public_hex})
    assert not result.ok and result.first_bad_seq == k and result.entries == k - 1
    assert result.problem == f"entry {k}: hash does not match its contents (edited)"


def test_edited_actor_is_found(chain):
    tamper(chain, "UPDATE event_log SET actor = 'mallory' WHERE seq = 5")
    result = check(chain)
    assert (result.ok, result.first_bad_seq) == (False, 5)
    assert result.problem == "entry 5: hash does not match its contents (edited)"


def test_edited_time_is_found(chain):
    if dialect(chain) == "postgresql":
        tamper(chain, "UPDATE event_log SET time = time - interval '1 day' WHERE seq = 3")
    else:
        tamper(chain, "UPDATE event_log SET time = '2020-01-01 00:00:00.000000' WHERE seq = 3")
    result = check(chain)
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert result.problem == "entry 3: hash does not match its contents (edited)"


def test_a_time_that_is_no_time_is_named(chain):
    if dialect(chain) != "sqlite":
        pytest.skip("only SQLite stores a non-time in a time column")
    tamper(chain, "UPDATE event_log SET time = 'yesterday' WHERE seq = 6")
    result = check(chain)
    assert (result.ok, result.first_bad_seq) == (False, 6)
    assert "entry 6: time 'yesterday' is not a valid time (edited)" == result.problem


def test_data_rewritten_to_equal_json_with_a_duplicate_key_is_found(chain):
    tamper(chain, "UPDATE event_log SET data = :d WHERE seq = 2",
           d='{"amount":5,"amount":200000,"memo":"é","to":["bcrt1q2"]}')
    result = check(chain)
    assert (result.ok, result.first_bad_seq, result.problem) == (False, 2, "entry 2: data is not valid JSON (edited)")
    tamper(chain, "UPDATE event_log SET data = :d WHERE seq = 2",
           d='{"to": ["bcrt1q2"], "memo": "é", "amount": 200000}')
    result = check(chain)
    assert (result.first_bad_seq, result.problem) == (2, "entry 2: data is not in its canonical form (edited)")


@pytest.mark.parametrize("k", [1, 4])
def test_deleted_entry_is_found(chain, k):
    tamper(chain, "DELETE FROM event_log WHERE seq = :k", k=k)
    result = check(chain)
    assert (result.ok, result.first_bad_seq, result.entries) == (False, k, k - 1)
    where = "the log starts at entry 2" if k == 1 else f"the log goes from entry {k - 1} to entry {k + 1}"
    assert result.problem == f"entry {k}: missing, {where} (deleted)"


def test_deleted_entry_with_seqs_renumbered_is_found(chain):
    """Closing the gap does not help: entry 5 then links to what was entry 4's successor."""
    tamper(chain, "DELETE FROM event_log WHERE seq = 4")
    for seq in range(5, N + 1):
        tamper(chain, "UPDATE event_log SET seq = :new WHERE seq = :old", new=seq - 1, old=seq)
    result = check(chain)
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert result.problem == ("entry 4: prev_hash does not match entry 3's hash "
                              "(an entry was deleted, inserted or reordered)")


def test_swapped_entries_are_found(chain):
    tamper(chain, "UPDATE event_log SET seq = -1 WHERE seq = 3")
    tamper(chain, "UPDATE event_log SET seq = 3 WHERE seq = 6")
    tamper(chain, "UPDATE event_log SET seq = 6 WHERE seq = -1")
    result = check(chain)
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "reordered" in result.problem and result.problem.startswith("entry 3: prev_hash does not match")


def test_replaced_signature_is_found(chain):
    with chain() as s:
        other = s.scalar(select(EventLogEntry.signature).where(EventLogEntry.seq == 2))
    tamper(chain, "UPDATE event_log SET signature = :sig WHERE seq = 5", sig=other)
    result = check(chain, {KEY.public_hex})
    assert (result.ok, result.first_bad_seq) == (False, 5)
    assert result.problem == "entry 5: signature does not verify (forged or altered)"


def test_edit_with_recomputed_hash_is_found_by_its_signature(chain):
    with chain() as s:
        e = s.scalar(select(EventLogEntry).where(EventLogEntry.seq == 4))
        data = {"amount": 1, "memo": "é", "to": ["bcrt1q4"]}
        forged = eventlog.entry_hash(4, eventlog.format_time(e.time), e.kind, e.actor, e.subject, data, e.prev_hash)
    tamper(chain, "UPDATE event_log SET data = :d, hash = :h WHERE seq = 4", d=eventlog.canonical_json(data), h=forged)
    result = check(chain)
    assert (result.first_bad_seq, result.problem) == (4, "entry 4: signature does not verify (forged or altered)")


def test_entry_resigned_with_another_key_is_found_when_keys_are_given(chain):
    with chain() as s:
        e = s.scalar(select(EventLogEntry).where(EventLogEntry.seq == N))
        data = {"amount": 1, "memo": "é", "to": ["bcrt1qmallory"]}
        forged = eventlog.entry_hash(N, eventlog.format_time(e.time), e.kind, e.actor, e.subject, data, e.prev_hash)
    tamper(chain, "UPDATE event_log SET data = :d, hash = :h, signature = :sig, key_id = :kid WHERE seq = :k",
           d=eventlog.canonical_json(data), h=forged, sig=OTHER_KEY.sign(bytes.fromhex(forged)).hex(),
           kid=OTHER_KEY.public_hex, k=N)
    assert check(chain).ok        # consistent on its own: the reason to pass the coordinator's keys
    result = check(chain, {KEY.public_hex})
    assert (result.ok, result.first_bad_seq) == (False, N)
    assert result.problem == f"entry {N}: signed by unknown key {OTHER_KEY.public_hex} (not a coordinator key)"
    assert check(chain, {KEY.public_hex, OTHER_KEY.public_hex.upper()}).ok   # a rotated key, listed


def test_log_of_another_coordinator_fails_at_entry_1(sessions):
    with sessions.begin() as s:
        append(s, OTHER_KEY, "policy.created", "admin", "policy:treasury", {"threshold": 2})
    result = check(sessions, {KEY.public_hex})
    assert (result.ok, result.first_bad_seq) == (False, 1)


# -- export ----------------------------------------------------------------------------------------
def exported(sessions) -> list[str]:
    with sessions() as s:
        out = export_jsonl(s)
    assert out.endswith("\n")
    return out.splitlines()


def test_export_verifies_standalone(chain):
    lines = exported(chain)
    assert len(lines) == N
    first = json.loads(lines[0])
    assert set(first) == {"seq", "time", "kind", "actor", "subject", "data", "prev_hash", "hash", "signature", "key_id"}
    assert first["data"]["amount"] == 100_000 and first["time"].endswith("Z")
    result = verify_jsonl("\n".join(lines) + "\n", {KEY.public_hex})
    assert (result.ok, result.entries) == (True, N)
    assert result.head_hash == check(chain).head_hash
    assert verify_jsonl("").ok


def test_altered_export_line_fails(chain):
    lines = exported(chain)
    record = json.loads(lines[4])
    record["data"]["amount"] += 1
    lines[4] = json.dumps(record)
    result = verify_jsonl("\n".join(lines))
    assert (result.ok, result.first_bad_seq, result.entries) == (False, 5, 4)
    assert result.problem == "entry 5: hash does not match its contents (edited)"


@pytest.mark.parametrize("change, seq, words", [
    (lambda ls: ls[:2] + ls[3:], 3, "missing"),                            # a line deleted
    (lambda ls: ls[:2] + [ls[3], ls[2]] + ls[4:], 3, "deleted or moved"), # two lines swapped
    (lambda ls: ls[:3] + [ls[2]] + ls[3:], 4, "duplicated or reordered"),  # a line repeated
    (lambda ls: ls[:1] + ["{not json"] + ls[2:], 2, "not valid JSON"),
    (lambda ls: ls[:1] + [ls[1][:-1] + ',"note":"x"}'] + ls[2:], 2, "unexpected fields"),
    (lambda ls: ls[:1] + [ls[1].replace('"seq":2', '"seq":2,"seq":2')] + ls[2:], 2, "duplicate key"),
])
def test_reordered_or_broken_export_fails(chain, change, seq, words):
    result = verify_jsonl("\n".join(change(exported(chain))))
    assert (result.ok, result.first_bad_seq) == (False, seq)
    assert result.problem.startswith(f"entry {seq}: ") and words in result.problem


def test_export_of_a_tampered_log_shows_the_tampering(chain):
    tamper(chain, "UPDATE event_log SET actor = 'mallory' WHERE seq = 2")
    result = verify_jsonl("\n".join(exported(chain)))
    assert (result.first_bad_seq, result.problem) == (2, "entry 2: hash does not match its contents (edited)")


# -- appending ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("data", [
    {"amount": 1.5},
    {"outputs": [{"address": "bcrt1q", "value": 0.1}]},
    {"amount": float("nan")},
    {"amount": Decimal("0.1")},
    {1: "a key that is not a string"},
    {"when": object()},
])
def test_floats_and_non_json_values_are_refused(sessions, data):
    with sessions.begin() as s:
        with pytest.raises(ValueError):
            append(s, KEY, "spend.requested", "dana", "spend:1", data)
    assert check(sessions).entries == 0


def test_data_must_be_an_object(sessions):
    with sessions.begin() as s, pytest.raises(ValueError, match="dict"):
        append(s, KEY, "spend.requested", "dana", "spend:1", [1, 2])


def test_rolled_back_event_leaves_no_trace(sessions):
    with sessions.begin() as s:
        append(s, KEY, "policy.created", "admin", "policy:treasury", {"threshold": 2})
    with sessions() as s:
        append(s, KEY, "spend.requested", "dana", "spend:1", {"amount": 5_000})
        append(s, KEY, "spend.approved", "erin", "spend:1", {})
        s.rollback()
    with pytest.raises(RuntimeError):
        with sessions.begin() as s:
            append(s, KEY, "spend.requested", "dana", "spend:2", {"amount": 6_000})
            raise RuntimeError("the change this event records failed")
    with sessions() as s:
        assert s.scalars(select(EventLogEntry.subject)).all() == ["policy:treasury"]
    with sessions.begin() as s:
        assert append(s, KEY, "spend.requested", "dana", "spend:3", {}).seq == 2
    assert check(sessions, {KEY.public_hex}).entries == 2


def test_appends_in_one_transaction_chain_up(sessions):
    with sessions.begin() as s:
        first = append(s, KEY, "spend.requested", "dana", "spend:1", {"amount": 1})
        second = append(s, KEY, "spend.approved", "erin", "spend:1", {})
        assert (first.seq, second.seq, second.prev_hash) == (1, 2, first.hash)
        assert second.time.tzinfo is not None
    assert check(sessions).ok


def test_concurrent_writers_do_not_fork_the_chain(sessions):
    errors = []

    def writer(name: str):
        try:
            for i in range(15):
                with sessions.begin() as s:
                    append(s, KEY, "spend.approved", name, f"spend:{i}", {"n": i})
        except Exception as e:   # noqa: BLE001  (reported below)
            errors.append(e)
    threads = [threading.Thread(target=writer, args=(f"officer{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    result = check(sessions, {KEY.public_hex})
    assert (result.ok, result.entries) == (True, 60)


# -- the coordinator's key -------------------------------------------------------------------------
def test_coordinator_key_is_created_once_with_mode_0600(tmp_path, monkeypatch):
    monkeypatch.setenv("CUSTODY_HOME", str(tmp_path / "home"))
    key = CoordinatorKey.load_or_create()
    path = tmp_path / "home" / "coordinator.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text().strip()) == 64
    assert CoordinatorKey.load_or_create().public_hex == key.public_hex == CoordinatorKey.load(path).public_hex
    assert len(key.sign(b"x" * 32)) == 64 and len(key.public_hex) == 64
    os.chmod(path, 0o644)
    with pytest.raises(ValueError, match="0600"):
        CoordinatorKey.load(path)


def test_the_key_comes_from_the_signer_then_the_key_file_then_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("CUSTODY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CUSTODY_LOG_SIGNER", raising=False)
    monkeypatch.delenv("CUSTODY_LOG_KEY", raising=False)
    assert eventlog.key_source() == f"file:{tmp_path / 'home' / 'coordinator.key'}"
    secret = tmp_path / "secret.key"
    secret.write_text(bytes(range(32)).hex())
    secret.chmod(0o644)
    monkeypatch.setenv("CUSTODY_LOG_KEY", str(secret))
    with pytest.raises(ValueError, match="readable by others"):    # a mounted secret others can read: refused
        eventlog.coordinator_key()
    secret.chmod(0o600)
    assert eventlog.coordinator_key().public_hex == KEY.public_hex
    assert not (tmp_path / "home").exists()
    monkeypatch.setenv("CUSTODY_LOG_SIGNER", f"tcp:{tmp_path}")
    with pytest.raises(ValueError, match="CUSTODY_LOG_SIGNER must be unix:PATH"):
        eventlog.coordinator_key()


def test_coordinator_key_from_seed():
    assert CoordinatorKey.from_seed(bytes(range(32))).public_hex == KEY.public_hex
    with pytest.raises(ValueError):
        CoordinatorKey.from_seed(b"short")


def test_text_that_is_not_utf8_is_refused(sessions):
    with sessions.begin() as s:
        with pytest.raises(ValueError):
            append(s, KEY, "spend.requested", "dana\ud800", "spend:1", {})
        with pytest.raises(ValueError):
            append(s, KEY, "spend.requested", "dana", "spend:1", {"memo": "\udfff"})
