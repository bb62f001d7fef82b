"""The event log anchored outside the host (issue 17): signed checkpoints written on demand and by a real
worker on a schedule; a log cut below a checkpoint or rewritten and re-signed is refused against the
checkpoint file and against the one the database recorded; a forged checkpoint is refused; the log key
in a signer process (the database host then holds no key) or in a file anywhere; an unreachable signer
stops every change; a proof of reserves carries the signed head and the auditor's verifier checks it
against the checkpoints it kept; label changes are logged."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from embit import bip32
from embit.networks import NETWORKS
from embit.psbt import PSBT
from embit.transaction import SIGHASH
from sqlalchemy import delete, func, select

from audit import log_checkpoint, verify as audit_verify
from coordinator.cli.main import main as custody
from custody.bitcoin.policies import build_policy
from custody.errors import CustodyError
from custody.eventlog import checkpoints, log as eventlog
from custody.eventlog.log import CoordinatorKey
from custody.eventlog.models import EventLogCheckpoint, EventLogEntry
from custody.ledger import registry, service
from custody.eventlog import service as log_service
from custody.ledger.models import Label
from custody.ledger.sync import Syncer
from custody.reserves import proofs as reserves
from custody.store.db import open_database
from regtest.testwallet import TestWallet

from .conftest import fund_policy, hd_keys, mine_coins
from .support import stop, wait_until

SEED_BASE = 171
MINER = TestWallet("checkpoint miner").address()


@pytest.fixture
def sessions(db_url):
    return open_database(db_url)


def log_events(sessions, count: int, start: int = 1) -> None:
    with sessions.begin() as s:
        for i in range(start, start + count):
            eventlog.record(s, "spend.approved", "omar", f"spend:{i}", {"amount": 1_000 * i})


def run(db_url, *argv, capsys) -> tuple[int, str, str]:
    code = custody(["--db", db_url, "--actor", "tess", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def cut_to(sessions, last_seq: int, *, records_too: bool = False) -> None:
    """The attack: someone with the database deletes the newest entries (and perhaps the checkpoint records)."""
    with sessions.begin() as s:
        s.execute(delete(EventLogEntry).where(EventLogEntry.seq > last_seq))
        if records_too:
            s.execute(delete(EventLogCheckpoint))


def rewrite(sessions, seq: int, key: CoordinatorKey) -> None:
    """The stronger attack: edit entry `seq` and re-chain and re-sign every entry from it with the key."""
    with sessions.begin() as s:
        entries = list(s.scalars(select(EventLogEntry).where(EventLogEntry.seq >= seq).order_by(EventLogEntry.seq)))
        prev = s.scalar(select(EventLogEntry.hash).where(EventLogEntry.seq == seq - 1)) or eventlog.GENESIS
        entries[0].data = eventlog.canonical_json({"amount": 999_999_999})
        for e in entries:
            digest = eventlog.entry_hash(e.seq, eventlog.format_time(e.time), e.kind, e.actor, e.subject,
                                         json.loads(e.data), prev)
            e.prev_hash, e.hash, e.signature = prev, digest, key.sign(bytes.fromhex(digest)).hex()
            prev = digest


def only_file(directory: Path) -> Path:
    files = sorted(directory.glob("*.json"))
    assert len(files) == 1, files
    return files[0]


# -- checkpoints, and the log checked against them ---------------------------------------------------------
def test_a_checkpoint_is_signed_written_recorded_and_logged(sessions, db_url, tmp_path, capsys):
    log_events(sessions, 5)
    code, out, err = run(db_url, "--json", "log", "checkpoint", "--out", str(tmp_path / "kept"), capsys=capsys)
    assert code == 0, err
    written = json.loads(out)
    document = log_checkpoint.load(only_file(tmp_path / "kept").read_text(), {eventlog.coordinator_key().public_hex})
    with sessions() as s:
        fifth = s.scalar(select(EventLogEntry).where(EventLogEntry.seq == 5))
        first = s.scalar(select(EventLogEntry.hash).where(EventLogEntry.seq == 1))
        logged = s.scalar(select(EventLogEntry).where(EventLogEntry.seq == 6))
        assert s.scalar(select(EventLogCheckpoint.seq)) == 5
    assert (document["seq"], document["head_hash"], document["count"], document["log_id"]) == (5, fifth.hash, 5, first)
    assert written["file"] == str(only_file(tmp_path / "kept")) and written["seq"] == 5
    assert logged.kind == "log.checkpoint" and logged.actor == "tess" and json.loads(logged.data)["head_hash"] == fifth.hash
    code, out, err = run(db_url, "log", "verify", "--checkpoint", str(tmp_path / "kept"), capsys=capsys)
    assert code == 0 and "entries: 6" in out and "checkpoints: 2" in out, err


def test_a_log_cut_below_a_checkpoint_is_refused_against_the_file_and_the_record(sessions, db_url, tmp_path, capsys):
    log_events(sessions, 5)
    assert run(db_url, "log", "checkpoint", "--out", str(tmp_path), capsys=capsys)[0] == 0
    file = only_file(tmp_path)
    head = json.loads(file.read_text())["checkpoint"]
    log_events(sessions, 2, start=6)
    cut_to(sessions, 3)                                      # entries 4.. gone: the chain that is left verifies
    with sessions() as s:
        assert eventlog.verify(s, {eventlog.coordinator_key().public_hex}).ok
    code, out, err = run(db_url, "log", "verify", "--checkpoint", str(file), capsys=capsys)
    assert code == 1 and out == ""
    assert err == (f"custody: error: event log verification failed: the log ends at seq 3 but the checkpoint of "
                   f"{head['time']} saw seq 5 with head {head['head_hash']} (entries were cut)\n")
    code, _, err = run(db_url, "log", "verify", capsys=capsys)              # no file: the recorded checkpoint
    assert code == 1 and "the log ends at seq 3 but the checkpoint of" in err and err.count("\n") == 1
    with sessions() as s:
        status = log_service.log_status(s)
        assert not status["ok"] and "the log ends at seq 3" in status["problem"]
    cut_to(sessions, 3, records_too=True)                    # the records deleted too: the file still knows
    assert run(db_url, "log", "verify", capsys=capsys)[0] == 0
    code, _, err = run(db_url, "log", "verify", "--checkpoint", str(file), capsys=capsys)
    assert code == 1 and "the log ends at seq 3 but the checkpoint of" in err


def test_a_rewritten_and_resigned_log_is_refused(sessions, db_url, tmp_path, capsys):
    log_events(sessions, 5)
    assert run(db_url, "log", "checkpoint", "--out", str(tmp_path), capsys=capsys)[0] == 0
    head = json.loads(only_file(tmp_path).read_text())["checkpoint"]
    rewrite(sessions, 2, eventlog.coordinator_key())         # whoever holds the key re-signs the whole chain
    with sessions() as s:
        assert eventlog.verify(s, {eventlog.coordinator_key().public_hex}).ok
        new_hash = s.scalar(select(EventLogEntry.hash).where(EventLogEntry.seq == 5))
    code, _, err = run(db_url, "log", "verify", "--checkpoint", str(only_file(tmp_path)), capsys=capsys)
    assert code == 1 and err == (f"custody: error: event log verification failed: the entry at seq 5 has hash "
                                 f"{new_hash} but the checkpoint of {head['time']} saw {head['head_hash']} "
                                 "(the log was rewritten)\n")
    # the exported copy too, as the auditor checks it alone
    code, _, _ = run(db_url, "log", "export", str(tmp_path / "log.jsonl"), capsys=capsys)
    code, _, err = run(db_url, "log", "verify", "--file", str(tmp_path / "log.jsonl"), "--checkpoint",
                       str(only_file(tmp_path)), capsys=capsys)
    assert code == 1 and "the entry at seq 5 has hash" in err
    with sessions.begin() as s, pytest.raises(CustodyError, match="no checkpoint is signed over a broken log"):
        checkpoints.write(s, tmp_path / "later")             # the coordinator does not vouch for it either
    assert not (tmp_path / "later").exists() or not list((tmp_path / "later").glob("*.json"))


def test_a_forged_or_foreign_checkpoint_is_refused(sessions, db_url, tmp_path, capsys):
    log_events(sessions, 3)
    assert run(db_url, "log", "checkpoint", "--out", str(tmp_path), capsys=capsys)[0] == 0
    signed = json.loads(only_file(tmp_path).read_text())
    signed["checkpoint"]["seq"] = 2                          # "it was only 2 entries long"
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(signed))
    code, _, err = run(db_url, "log", "verify", "--checkpoint", str(forged), capsys=capsys)
    assert code == 1 and err == (f"custody: error: checkpoint {forged}: the checkpoint's signature does not verify "
                                 "(forged or altered)\n")
    other = CoordinatorKey.from_seed(b"\x05" * 32)
    signed["signature"] = other.sign(log_checkpoint.digest({**signed["checkpoint"], "key_id": other.public_hex})).hex()
    signed["checkpoint"]["key_id"] = other.public_hex
    forged.write_text(json.dumps(signed))
    code, _, err = run(db_url, "log", "verify", "--checkpoint", str(forged), capsys=capsys)
    assert code == 1 and f"the checkpoint is signed by {other.public_hex}, not by a coordinator key" in err
    forged.write_text("not json")
    code, _, err = run(db_url, "log", "verify", "--checkpoint", str(forged), capsys=capsys)
    assert code == 1 and "not JSON" in err


# -- on a schedule, by a real worker -----------------------------------------------------------------------
def test_a_worker_writes_checkpoints_on_its_schedule(node, tmp_path):
    db_url = f"sqlite:///{tmp_path}/custody.db"
    sessions = open_database(db_url)
    log_events(sessions, 3)
    kept = tmp_path / "kept"
    env = {**os.environ, "CUSTODY_DB": db_url, "CUSTODY_NODE": node.url, "CUSTODY_NODE_COOKIE": str(node.cookie_file),
           "CUSTODY_CHECKPOINT_DIR": str(kept), "CUSTODY_CHECKPOINT_SECONDS": "1"}
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        worker = subprocess.Popen([sys.executable, "-m", "coordinator.cli.main", "worker", "--interval", "0.2"], env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: list(kept.glob("*.json")), what="the first checkpoint", process=worker, logs=[log])
        log_events(sessions, 2, start=4)                     # something new: the next one is due after a second
        second = wait_until(lambda: [f for f in kept.glob("*.json") if json.loads(f.read_text())["checkpoint"]["seq"] > 3],
                            what="a later checkpoint", process=worker, logs=[log])
    finally:
        stop(worker)
    heads = sorted(json.loads(f.read_text())["checkpoint"]["seq"] for f in kept.glob("*.json"))
    assert heads[0] == 3 and json.loads(second[0].read_text())["checkpoint"]["seq"] == 6   # 3 + its entry + 2
    with sessions() as s:
        assert [c.seq for c in s.scalars(select(EventLogCheckpoint).order_by(EventLogCheckpoint.id))] == heads
        assert [e.kind for e in s.scalars(select(EventLogEntry).where(EventLogEntry.seq.in_((4, 7))))] == \
            ["log.checkpoint", "log.checkpoint"]
    assert len(heads) == 2                                   # nothing new since: no checkpoint after every round


# -- the key outside the database host ---------------------------------------------------------------------
@pytest.fixture
def signer(tmp_path):
    """A real `custody log-signer` process holding a key the coordinator never sees."""
    seed = hashlib.sha256(b"log signer test").digest()
    key_file = tmp_path / "signer" / "log.key"
    key_file.parent.mkdir()
    key_file.write_text(seed.hex() + "\n")
    key_file.chmod(0o600)
    socket_path = tmp_path / "signer.sock"
    log = tmp_path / "signer.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "coordinator.cli.main", "log-signer", "--key", str(key_file),
                                    "--socket", str(socket_path)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(socket_path.exists, what="the log signer's socket", process=process, logs=[log])
        yield {"process": process, "socket": socket_path, "seed": seed,
               "public": CoordinatorKey.from_seed(seed).public_hex}
    finally:
        stop(process)


def coordinator(tmp_path, **env) -> dict:
    """The environment of a coordinator on a host of its own (its CUSTODY_HOME holds nothing yet)."""
    home = tmp_path / "coordinator-home"
    home.mkdir(exist_ok=True)
    return {**os.environ, "CUSTODY_HOME": str(home), **env}


def custody_process(env, db_url, *argv):
    return subprocess.run([sys.executable, "-m", "coordinator.cli.main", "--db", db_url, "--actor", "lena", *argv], env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_signer_process_signs_and_the_database_host_holds_no_key(signer, tmp_path):
    db_url = f"sqlite:///{tmp_path}/custody.db"
    env = coordinator(tmp_path, CUSTODY_LOG_SIGNER=f"unix:{signer['socket']}")
    for n in range(3):
        done = custody_process(env, db_url, "label", "tx", f"{n:064x}", f"payroll batch {n}")
        assert done.returncode == 0, done.stderr
    done = custody_process(env, db_url, "log", "checkpoint", "--out", str(tmp_path / "kept"))
    assert done.returncode == 0, done.stderr
    done = custody_process(env, db_url, "--json", "log", "verify", "--checkpoint", str(tmp_path / "kept"))
    assert done.returncode == 0 and json.loads(done.stdout)["entries"] == 4, done.stderr
    sessions = open_database(db_url)
    with sessions() as s:
        assert {e.key_id for e in s.scalars(select(EventLogEntry))} == {signer["public"]}
    assert json.loads(only_file(tmp_path / "kept").read_text())["checkpoint"]["key_id"] == signer["public"]
    assert list((tmp_path / "coordinator-home").iterdir()) == []              # no key file was made
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("custody.db*"))
    assert signer["seed"].hex().encode() not in stored and signer["seed"] not in stored


def test_an_unreachable_signer_stops_every_change(signer, tmp_path):
    db_url = f"sqlite:///{tmp_path}/custody.db"
    env = coordinator(tmp_path, CUSTODY_LOG_SIGNER=f"unix:{signer['socket']}")
    assert custody_process(env, db_url, "label", "tx", "a" * 64, "before").returncode == 0
    stop(signer["process"])                                  # the signer goes away
    done = custody_process(env, db_url, "label", "tx", "b" * 64, "after")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (f"custody: error: the log signer at unix:{signer['socket']} is unreachable (No such file or "
                           f"directory): start `custody log-signer --socket {signer['socket']}`; nothing is logged "
                           "without it\n")
    sessions = open_database(db_url)
    with sessions() as s:                                    # the label was not set without its log entry
        assert [l.ref for l in s.scalars(select(Label))] == ["a" * 64]
        assert s.scalar(select(func.count()).select_from(EventLogEntry)) == 1


def test_a_key_file_anywhere_signs_and_a_missing_one_is_refused(tmp_path):
    db_url = f"sqlite:///{tmp_path}/custody.db"
    secret = tmp_path / "mounted-secret" / "log.key"
    secret.parent.mkdir()
    secret.write_text((b"\x09" * 32).hex())
    secret.chmod(0o600)
    env = coordinator(tmp_path, CUSTODY_LOG_KEY=str(secret))
    assert custody_process(env, db_url, "label", "tx", "c" * 64, "rent").returncode == 0
    with open_database(db_url)() as s:
        assert s.scalar(select(EventLogEntry.key_id)) == CoordinatorKey.from_seed(b"\x09" * 32).public_hex
    assert list((tmp_path / "coordinator-home").iterdir()) == []
    done = custody_process(coordinator(tmp_path, CUSTODY_LOG_KEY=str(tmp_path / "nowhere.key")), db_url,
                           "label", "tx", "d" * 64, "rent")
    assert done.returncode == 1 and done.stderr == (f"custody: error: the log key file {tmp_path / 'nowhere.key'} "
                                                    "($CUSTODY_LOG_KEY) does not exist\n")


# -- the head in every proof of reserves ---------------------------------------------------------------------
def _roots() -> list[bip32.HDKey]:
    return [bip32.HDKey.from_seed(hashlib.sha256(f"test device {SEED_BASE + i}".encode()).digest(),
                                  version=NETWORKS["regtest"]["xprv"]) for i in range(3)]


def _sign(psbt_b64: str, signers: list[bip32.HDKey]) -> str:
    psbt = PSBT.from_string(psbt_b64)
    for i, inp in enumerate(psbt.inputs[1:], start=1):
        for root in signers:
            for pub, der in inp.bip32_derivations.items():
                if der.fingerprint == root.my_fingerprint:
                    digest = psbt.tx.sighash_segwit(i, inp.witness_script, inp.witness_utxo.value, SIGHASH.ALL)
                    inp.partial_sigs[pub] = root.derive(der.derivation).key.sign(digest).serialize() + b"\x01"
    return psbt.to_string()


def _proof(sessions, rpc, nonce: str, height: int) -> dict:
    with sessions.begin() as s:
        run_ = reserves.create(s, rpc, nonce=nonce, audit="2026-Q4", custodian="Acme", height=height, actor="carol")
        reserves.add_signatures(s, run_, _sign(run_.psbt, _roots()[:2]), actor="alice")
        return reserves.finalize_run(s, run_, actor="carol")


def test_a_proof_carries_the_signed_head_and_the_auditor_checks_it_against_kept_checkpoints(
        rpc, wallet, other_address, tmp_path):
    sessions = open_database(f"sqlite:///{tmp_path}/custody.db")
    spec = build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=SEED_BASE))
    with sessions.begin() as s:
        registry.create_policy(s, "treasury", spec)
    fund_policy(rpc, wallet, mine_coins(rpc, wallet, 1)[0], spec, other_address)
    Syncer(sessions, rpc).sync_once()          # found by scantxoutset; the ledger follows the chain from here
    height = rpc.getblockcount()
    rpc.generatetoaddress(6, MINER)
    Syncer(sessions, rpc).sync_once()
    kept = tmp_path / "kept"
    with sessions.begin() as s:
        earlier = checkpoints.write(s, kept)                 # the auditor's copy of an earlier checkpoint
    package = _proof(sessions, rpc, "auditor-nonce-1", height)
    head = log_checkpoint.check(package["event_log"], {eventlog.coordinator_key().public_hex})
    with sessions() as s:
        finalized = s.scalar(select(EventLogEntry).where(EventLogEntry.kind == "reserves.finalized"))
        assert head["seq"] == finalized.seq - 2 > earlier["seq"]     # then its log.checkpoint, then finalized
        assert head["head_hash"] == s.scalar(select(EventLogEntry.hash).where(EventLogEntry.seq == head["seq"]))

    def event_log_check(pkg, kept_documents):
        result = audit_verify.verify(pkg, rpc, nonce=pkg["nonce"], min_depth=1, checkpoints=kept_documents)
        return next(c for c in result.checks if c.name == "event log"), result.verdict

    check, verdict = event_log_check(package, log_checkpoint.load_files([kept]))
    assert (check.verdict, verdict) == ("valid", "valid") and f"head at seq {head['seq']}" in check.detail
    assert "consistent with your 1 kept checkpoints" in check.detail
    # the auditor's CLI shows it, and keeps the new head beside the earlier one
    (tmp_path / "package.json").write_text(json.dumps(package))
    node_url = rpc.url.replace("http://", f"http://{rpc._user}:{rpc._password}@") if rpc._user else rpc.url
    cmd = [sys.executable, "-m", "audit.cli", "verify", str(tmp_path / "package.json"), "--node", node_url,
           "--nonce", "auditor-nonce-1", "--min-depth", "1", "--key", str(tmp_path / "auditor.key"), "--checkpoints", str(kept)]
    if rpc._cookie_file:
        cmd += ["--cookie", str(rpc._cookie_file)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and f"event log   valid         head at seq {head['seq']}" in done.stdout, done.stderr
    assert sorted(d["seq"] for d in log_checkpoint.load_files([kept])) == [earlier["seq"], head["seq"]]

    # a head whose signature does not hold
    forged = json.loads(json.dumps(package))
    forged["event_log"]["checkpoint"]["seq"] += 100
    check, verdict = event_log_check(forged, None)
    assert (check.verdict, verdict) == ("invalid", "invalid") and "signature does not verify" in check.detail

    # the custodian cuts its log (and the records of its checkpoints) and proves again: the head went back
    with sessions.begin() as s:
        later = checkpoints.write(s, kept)
    cut_to(sessions, earlier["seq"] + 1, records_too=True)
    package = _proof(sessions, rpc, "auditor-nonce-2", height)
    check, verdict = event_log_check(package, log_checkpoint.load_files([kept]))
    new_seq = package["event_log"]["checkpoint"]["seq"]
    assert new_seq < later["seq"] and (check.verdict, verdict) == ("invalid", "invalid")
    assert check.detail == (f"the log ends at seq {new_seq} but your checkpoint of {later['time']} saw seq "
                            f"{later['seq']} with head {later['head_hash']}: the log was cut")
    cmd[cmd.index("auditor-nonce-1")] = "auditor-nonce-2"
    (tmp_path / "package.json").write_text(json.dumps(package))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "the log was cut" in done.stdout
    assert len(list(kept.glob("*.json"))) == 3                # a contradicting head is not kept


def test_a_head_under_another_key_contradicts_kept_checkpoints():
    def signed_head(key: CoordinatorKey, seq: int) -> dict:
        document = {"format": log_checkpoint.FORMAT, "log_id": "1" * 64, "key_id": key.public_hex, "seq": seq,
                    "head_hash": f"{seq:064x}", "count": seq, "time": "2026-01-01T00:00:00.000000Z"}
        return log_checkpoint.check({"checkpoint": document,
                                     "signature": key.sign(log_checkpoint.digest(document)).hex()})
    ours, theirs = CoordinatorKey.from_seed(b"\x01" * 32), CoordinatorKey.from_seed(b"\x02" * 32)
    assert log_checkpoint.against_kept(signed_head(ours, 9), [signed_head(ours, 5)]) is None
    assert "the coordinator's log key changed" in log_checkpoint.against_kept(signed_head(theirs, 9),
                                                                              [signed_head(ours, 5)])
    assert "the log was rewritten" in log_checkpoint.against_kept(
        {**signed_head(ours, 5), "head_hash": "f" * 64}, [signed_head(ours, 5)])


# -- labels ---------------------------------------------------------------------------------------------------
def test_label_changes_are_logged(sessions):
    with sessions.begin() as s:
        service.label_set(s, "tx", "a" * 64, "payroll", actor="olga")
        service.label_set(s, "tx", "a" * 64, "payroll", actor="olga")        # no change, no entry
        service.label_set(s, "tx", "a" * 64, "exchange", actor="omar")
    jsonl = '{"type":"tx","ref":"%s","label":"exchange"}\n{"type":"addr","ref":"bcrt1qx","label":"cold"}\n' % ("a" * 64)
    with sessions.begin() as s:
        assert service.labels_import(s, jsonl, actor="olga") == {"imported": 2}
    with sessions.begin() as s, pytest.raises(CustodyError, match="labels line 2"):
        service.labels_import(s, '{"type":"tx","ref":"b","label":"x"}\n{"type":"bogus","ref":"c"}\n', actor="olga")
    with sessions() as s:
        entries = list(s.scalars(select(EventLogEntry).order_by(EventLogEntry.seq)))
        assert eventlog.verify(s, {eventlog.coordinator_key().public_hex}).ok
    assert [(e.kind, e.actor, e.subject) for e in entries] == [
        ("label.set", "olga", f"label:tx:{'a' * 64}"), ("label.set", "omar", f"label:tx:{'a' * 64}"),
        ("labels.imported", "olga", "labels")]
    assert json.loads(entries[1].data)["previous"] == "payroll" and json.loads(entries[1].data)["label"] == "exchange"
    imported = json.loads(entries[2].data)
    records = [json.loads(line) for line in jsonl.splitlines()]
    digest = hashlib.sha256("".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n"
                                    for r in records).encode()).hexdigest()
    assert imported == {"records": 2, "created": 1, "changed": 0, "unchanged": 1, "sha256": digest}


# -- over the API and in the console ----------------------------------------------------------------------
def test_auditors_download_the_latest_checkpoint_and_verify_against_theirs_over_the_api(sessions, node, tmp_path):
    from fastapi.testclient import TestClient
    from coordinator.app import create_app, node_factory
    from coordinator import accounts
    tokens = {}
    with sessions.begin() as s:
        for name, role in (("aude", "auditor"), ("vic", "viewer")):
            user, _ = accounts.create_user(s, name, role, "correct horse battery staple")
            tokens[name] = {"authorization": f"Bearer {accounts.create_token(s, user, 'test')[0]}"}
    app = create_app(sessions, node_factory(node.url, cookie_file=node.cookie_file), sync_interval=0)
    with TestClient(app) as client:
        answer = client.get("/api/log/checkpoint", headers=tokens["aude"])
        assert answer.status_code == 404 and "no checkpoint of the event log has been made yet" in answer.json()["detail"]
        log_events(sessions, 4)
        with sessions.begin() as s:
            checkpoints.write(s, tmp_path)
        answer = client.get("/api/log/checkpoint", headers=tokens["aude"])
        assert answer.status_code == 200 and answer.json() == json.loads(only_file(tmp_path).read_text())
        kept = answer.json()
        seq = kept["checkpoint"]["seq"]                      # the accounts' own entries, then the four
        assert f"event-log-checkpoint-{seq}.json" in answer.headers["content-disposition"]
        assert client.get("/api/log/checkpoint", headers=tokens["vic"]).status_code == 403
        ok = client.post("/api/log/verify/checkpoints", json={"checkpoints": [kept]}, headers=tokens["aude"])
        assert ok.status_code == 200 and ok.json()["entries"] == seq + 1
        page = client.get("/log", headers=tokens["aude"])
        assert page.status_code == 200 and 'id="log-checkpoint"' in page.text and f"seq {seq}," in page.text
        cut_to(sessions, seq - 2, records_too=True)
        refused = client.post("/api/log/verify/checkpoints", json={"checkpoints": [kept]}, headers=tokens["aude"])
        assert refused.status_code == 400 and refused.json()["detail"] == (
            f"event log verification failed: the log ends at seq {seq - 2} but the checkpoint of "
            f"{kept['checkpoint']['time']} saw seq {seq} with head {kept['checkpoint']['head_hash']} (entries were cut)")
        forged = {**kept, "checkpoint": {**kept["checkpoint"], "seq": seq - 2}}
        refused = client.post("/api/log/verify/checkpoints", json={"checkpoints": [forged]}, headers=tokens["aude"])
        assert refused.status_code == 400 and refused.json()["detail"] == \
            "checkpoint 1: the checkpoint's signature does not verify (forged or altered)"


def test_a_signer_that_changes_its_key_or_lies_is_refused(tmp_path):
    import threading
    from custody.eventlog.signer import RemoteKey, SignerServer
    server = SignerServer(CoordinatorKey.from_seed(b"\x03" * 32), tmp_path / "s.sock")
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        remote = RemoteKey.connect(f"unix:{tmp_path / 's.sock'}")
        assert len(remote.sign(b"\x11" * 32)) == 64
        server.key = CoordinatorKey.from_seed(b"\x04" * 32)              # someone swapped the signer's key
        with pytest.raises(CustodyError, match="now signs with another key"):
            remote.sign(b"\x11" * 32)
        liar = CoordinatorKey.from_seed(b"\x03" * 32)
        server.key = liar
        server.answer = lambda request: f"OK {'00' * 64} {liar.public_hex}"   # a signature over nothing
        with pytest.raises(CustodyError, match="does not verify"):
            remote.sign(b"\x11" * 32)
    finally:
        server.shutdown()
        server.server_close()
