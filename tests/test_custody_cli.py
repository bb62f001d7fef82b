"""The `custody` command line as an operator scripts it: --json output, exit codes, one-line errors,
and the sync worker (killed mid-sync, and two workers on one PostgreSQL database)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest


from . import officers
from .conftest import hd_keys, mine_coins
from .support import stop, STOP_TIMEOUT, wait_until


def custody(node, db_url, *args, check=True):
    env = {**os.environ, "CUSTODY_DB": db_url, "CUSTODY_NODE": node.url, "CUSTODY_NODE_COOKIE": str(node.cookie_file)}
    result = subprocess.run([sys.executable, "-m", "coordinator.cli.main", "--json", *args], capture_output=True, text=True,
                            env=env, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout) if result.stdout.strip() else None
    return result


def worker(node, db_url, log):
    """`custody worker` as its own process, its output appended to the file `log` (a pipe nobody reads
    would fill and stop it)."""
    env = {**os.environ, "CUSTODY_DB": db_url, "CUSTODY_NODE": node.url, "CUSTODY_NODE_COOKIE": str(node.cookie_file)}
    with open(log, "a") as out:
        return subprocess.Popen([sys.executable, "-m", "coordinator.cli.main", "worker", "--interval", "0.2"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def confirmed(node, db) -> int:
    return custody(node, db, "balance")[0]["confirmed"]


@pytest.fixture(scope="module")
def coins(rpc, wallet):
    return mine_coins(rpc, wallet, 10)


def test_policy_lifecycle_and_ledger_through_the_cli(node, rpc, wallet, coins, tmp_path, other_address):
    db = f"sqlite:///{tmp_path}/c.db"
    keys = hd_keys(3, seed_base=300)
    imported = custody(node, db, "key", "import", keys[0])
    assert imported["key"] == keys[0]
    created = custody(node, db, "policy", "create", "vault", "--threshold", "2", *sum((["--key", k] for k in keys), []))
    assert created["kind"] == "wsh-sortedmulti" and created["status"] == "draft" and created["descriptor"].startswith("wsh(")
    assert custody(node, db, "policy", "status", "vault", "active")["status"] == "active"
    addresses = custody(node, db, "addresses", "vault")
    assert len(addresses) == 20 and addresses[0]["index"] == 0
    spk = bytes.fromhex(rpc.validateaddress(addresses[2]["address"])["scriptPubKey"])
    coin = coins.pop()
    txid = rpc.sendrawtransaction(wallet.sign([coin], [(spk, 25_000_000), (wallet.wpkh, coin.value - 25_002_000)]))
    rpc.generatetoaddress(1, other_address)
    report = custody(node, db, "sync")
    assert report["policies_discovered"] == 1
    [balance] = custody(node, db, "balance")
    assert balance["confirmed"] == 25_000_000 and balance["policy"] == "vault"
    [utxo] = custody(node, db, "utxos", "vault")
    assert utxo["outpoint"] == f"{txid}:0" and utxo["state"] == "confirmed"
    assert custody(node, db, "freeze", f"{txid}:0", "--reason", "audit hold")["frozen"] is True
    assert custody(node, db, "utxos", "vault", "--state", "frozen")[0]["freeze_reason"] == "audit hold"
    custody(node, db, "unfreeze", f"{txid}:0")
    assert custody(node, db, "history", "vault")[0]["txid"] == txid
    assert custody(node, db, "balance-history", "vault")[-1]["balance"] == 25_000_000
    custody(node, db, "label", "tx", txid, "first deposit")
    labels = tmp_path / "labels.jsonl"
    custody(node, db, "labels", "export", str(labels))
    assert json.loads(labels.read_text()) == {"type": "tx", "ref": txid, "label": "first deposit"}
    shown = custody(node, db, "policy", "show", "vault")
    assert len(shown["keys"]) == 3 and shown["balance"] == 25_000_000


def test_derive_matches_the_node(node, rpc, tmp_path):
    keys = hd_keys(3, seed_base=310)
    descriptor = rpc.getdescriptorinfo("wsh(sortedmulti(2,{}/0/*,{}/0/*,{}/0/*))".format(*keys))["descriptor"]
    ours = custody(node, f"sqlite:///{tmp_path}/d.db", "derive", descriptor, "--from", "0", "--to", "9")
    assert ours == rpc.deriveaddresses(descriptor, [0, 9])


@pytest.mark.parametrize("args, fragment", [
    (["policy", "create", "x", "--threshold", "4", "--key", "[00000000/48h]tpubnotakey"], "key"),
    (["policy", "show", "nothing"], "no policy named"),
    (["freeze", "abc:1", "--reason", "r"], "not an outpoint"),
    (["labels", "import", "/nonexistent/file"], "No such file"),
])
def test_errors_are_one_line_with_exit_code_1(node, tmp_path, args, fragment):
    result = custody(node, f"sqlite:///{tmp_path}/e.db", *args, check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("custody: error:") and fragment in lines[0]


def test_refused_policy_leaves_the_database_unchanged(node, tmp_path):
    db = f"sqlite:///{tmp_path}/u.db"
    keys = hd_keys(3, seed_base=320)
    result = custody(node, db, "policy", "create", "dup", "--threshold", "2", "--key", keys[0], "--key", keys[1],
                     "--key", keys[0], check=False)
    assert result.returncode == 1 and "repeats key 1" in result.stderr
    assert custody(node, db, "policy", "list") == [] and custody(node, db, "key", "list") == []


def test_unreachable_node_is_one_clear_line(tmp_path):
    env = {**os.environ, "CUSTODY_DB": f"sqlite:///{tmp_path}/n.db", "CUSTODY_NODE": "http://127.0.0.1:9",
           "CUSTODY_RPCUSER": "u", "CUSTODY_RPCPASSWORD": "p"}
    result = subprocess.run([sys.executable, "-m", "coordinator.cli.main", "sync"], capture_output=True, text=True, env=env)
    assert result.returncode == 1 and "cannot reach Bitcoin node at http://127.0.0.1:9" in result.stderr


def _setup_funded_policy(node, rpc, wallet, coins, db, seed, payments: int, other_address):
    keys = hd_keys(3, seed_base=seed)
    custody(node, db, "policy", "create", "fleet", "--threshold", "2", "--gap-limit", "200",
            *sum((["--key", k] for k in keys), []))
    custody(node, db, "sync")
    addresses = [a["address"] for a in custody(node, db, "addresses", "fleet")]
    total = 0
    coin = coins.pop()
    from regtest.testwallet import Utxo
    for i in range(payments):   # one payment per block, chained through the wallet's change
        spk = bytes.fromhex(rpc.validateaddress(addresses[i % 150])["scriptPubKey"])
        amount = 100_000 + i
        raw = wallet.sign([coin], [(spk, amount), (wallet.wpkh, coin.value - amount - 1_000)])
        txid = rpc.sendrawtransaction(raw)
        coin = Utxo(txid, 1, coin.value - amount - 1_000, wallet.wpkh)
        total += amount
        rpc.generatetoaddress(1, other_address)
    return total


def test_worker_killed_mid_sync_resumes_without_double_counting(node, rpc, wallet, coins, tmp_path, other_address):
    db = f"sqlite:///{tmp_path}/w.db"
    total = _setup_funded_policy(node, rpc, wallet, coins, db, 330, 150, other_address)
    log = tmp_path / "worker.log"
    proc = worker(node, db, log)
    time.sleep(1.0)                      # not a wait: whenever the kill lands, the next worker must recover
    proc.send_signal(signal.SIGKILL)     # mid-sync, as a crash would
    proc.wait()
    proc = worker(node, db, log)
    try:
        wait_until(lambda: confirmed(node, db) == total, what="a restarted worker syncing the ledger to the tip",
                   process=proc, logs=(log,))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(STOP_TIMEOUT) == 0
    assert confirmed(node, db) == total
    assert len(custody(node, db, "utxos", "fleet")) == 150


def test_two_workers_on_postgresql_one_leads_the_other_takes_over(node, rpc, wallet, coins, postgres_server,
                                                                  other_address, tmp_path):
    import psycopg
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
        conn.execute("CREATE DATABASE custody_workers")
    db = f"{postgres_server}/custody_workers"
    total = _setup_funded_policy(node, rpc, wallet, coins, db, 340, 40, other_address)
    logs = (tmp_path / "first.log", tmp_path / "second.log")
    first, second = worker(node, db, logs[0]), worker(node, db, logs[1])
    try:
        wait_until(lambda: confirmed(node, db) == total, what="two workers syncing the ledger to the tip",
                   process=second, logs=logs)
        first.send_signal(signal.SIGKILL)          # the leader (or the follower) dies
        first.wait()
        coin = coins.pop()
        addresses = custody(node, db, "addresses", "fleet")
        spk = bytes.fromhex(rpc.validateaddress(addresses[199]["address"])["scriptPubKey"])
        rpc.sendrawtransaction(wallet.sign([coin], [(spk, 777_000), (wallet.wpkh, coin.value - 779_000)]))
        rpc.generatetoaddress(1, other_address)
        wait_until(lambda: confirmed(node, db) == total + 777_000, what="the surviving worker taking over",
                   process=second, logs=logs)
        assert len(custody(node, db, "utxos", "fleet")) == 41      # nothing applied twice
    finally:
        for p in (first, second):
            stop(p)


@pytest.mark.parametrize("fmt", ["core", "bsms", "coldcard", "caravan"])
def test_policy_export_then_import_elsewhere(node, tmp_path, fmt):
    keys = hd_keys(3, seed_base=350)
    first, second = f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"
    created = custody(node, first, "policy", "create", "ops", "--threshold", "2", *sum((["--key", k] for k in keys), []))
    exported = tmp_path / f"ops.{fmt}"
    result = subprocess.run([sys.executable, "-m", "coordinator.cli.main", "policy", "export", "ops", "--format", fmt],
                            capture_output=True, text=True, env={**os.environ, "CUSTODY_DB": first}, check=True)
    exported.write_text(result.stdout)
    imported = custody(node, second, "policy", "import", str(exported), "--name", "ops-copy")
    assert imported["descriptor"] == created["descriptor"] and imported["name"] == "ops-copy"
    bad = custody(node, second, "policy", "import", str(exported), "--name", "again", check=False)
    assert bad.returncode == 1 and "exactly these keys" in bad.stderr


def test_a_spend_scripted_end_to_end(node, rpc, wallet, coins, tmp_path, other_address):
    """Request, two approvals, PSBT, two signatures uploaded as files, broadcast, confirmation."""
    import hashlib
    from embit import bip32
    from embit.networks import NETWORKS
    from embit.psbt import PSBT
    db = f"sqlite:///{tmp_path}/s.db"
    seed = 360
    keys = hd_keys(3, seed_base=seed)
    custody(node, db, "policy", "create", "ops", "--threshold", "2", *sum((["--key", k] for k in keys), []))
    custody(node, db, "policy", "status", "ops", "active")
    custody(node, db, "approval-rule", "set", "ops", "--approvals", "2", "--per-request", "1")
    address = custody(node, db, "addresses", "ops")[0]["address"]
    coin = coins.pop()
    spk = bytes.fromhex(rpc.validateaddress(address)["scriptPubKey"])
    rpc.sendrawtransaction(wallet.sign([coin], [(spk, 90_000_000), (wallet.wpkh, coin.value - 90_002_000)]))
    rpc.generatetoaddress(1, other_address)
    custody(node, db, "sync")
    payee = payee_address()
    spend = custody(node, db, "spend", "request", "ops", "--to", f"{payee}=0.25", "--requester", "ray",
                    "--fee-rate", "2", "--memo", "invoice 7")
    assert spend["state"] == "requested" and spend["amount"] == 25_000_000
    # the officers: accounts, and approval keys they hold (olga makes hers; the coordinator gets public keys)
    olga_key, omar_key = tmp_path / "olga.pem", officers.key_file(tmp_path, "omar")
    for name in ("olga", "omar"):
        custody(node, db, "user", "add", name, "--role", "officer")
    made = custody(node, db, "approver", "keygen", str(olga_key))
    again = custody(node, db, "approver", "keygen", str(olga_key), check=False)
    assert again.returncode == 1 and "never overwritten" in again.stderr
    custody(node, db, "approver", "enroll", made["public_key"], "--officer", "olga")
    custody(node, db, "approver", "enroll", officers.public_hex("omar"), "--officer", "omar")
    listed = custody(node, db, "approver", "list")["approvers"]
    assert {n: e["key"] for n, e in listed.items()} == {"olga": made["public_key"], "omar": officers.public_hex("omar")}

    def approve(officer, key):
        return custody(node, db, "spend", "approve", str(spend["id"]), "--officer", officer, "--key", str(key),
                       check=False)
    refused = approve("ray", olga_key)
    assert refused.returncode == 1 and "requester cannot approve" in refused.stderr
    refused = approve("omar", olga_key)                       # another officer's key is not omar's approval
    assert refused.returncode == 1 and "not one of omar's enrolled approval keys" in refused.stderr
    refused = approve("omar", tmp_path / "nosuch.pem")
    assert refused.returncode == 1 and "cannot read the approval key" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert custody(node, db, "spend", "show", str(spend["id"]))["approvals"] == []
    assert approve("olga", olga_key).returncode == 0
    done = approve("omar", omar_key)
    assert done.returncode == 0 and json.loads(done.stdout)["state"] == "signing"
    psbt_file = tmp_path / "spend.psbt"
    custody(node, db, "spend", "psbt", str(spend["id"]), "--out", str(psbt_file))
    for n in (seed, seed + 1):
        signed = PSBT.parse(psbt_file.read_bytes())
        signed.sign_with(bip32.HDKey.from_seed(hashlib.sha256(f"test device {n}".encode()).digest(),
                                               version=NETWORKS["regtest"]["xprv"]))
        upload = tmp_path / f"signed-{n}.psbt"
        upload.write_text(signed.to_string())
        custody(node, db, "spend", "sign", str(spend["id"]), str(upload))
    broadcast = custody(node, db, "spend", "broadcast", str(spend["id"]))
    assert broadcast["state"] == "broadcast" and broadcast["txid"] in rpc.getrawmempool()
    rpc.generatetoaddress(1, other_address)
    assert custody(node, db, "spend", "track", str(spend["id"]))["state"] == "confirmed"
    assert custody(node, db, "spend", "list")[0]["state"] == "confirmed"


def payee_address() -> str:
    from regtest.testwallet import TestWallet
    return TestWallet("cli payee").address()


def test_event_log_verifies_and_names_a_tampered_entry(node, tmp_path):
    import sqlite3
    db_file = tmp_path / "log.db"
    db = f"sqlite:///{db_file}"
    keys = hd_keys(3, seed_base=370)
    custody(node, db, "--actor", "alice", "policy", "create", "logged", "--threshold", "2",
            *sum((["--key", k] for k in keys), []))
    custody(node, db, "--actor", "bob", "policy", "status", "logged", "active")
    custody(node, db, "approval-rule", "set", "logged", "--approvals", "2")
    result = custody(node, db, "log", "verify")
    assert result["ok"] is True and result["entries"] == 3
    exported = tmp_path / "log.jsonl"
    custody(node, db, "log", "export", str(exported))
    assert custody(node, db, "log", "verify", "--file", str(exported))["entries"] == 3
    lines = exported.read_text().splitlines()
    assert json.loads(lines[0])["actor"] == "alice" and json.loads(lines[1])["kind"] == "policy.status"
    with sqlite3.connect(db_file) as conn:      # someone edits history behind the coordinator's back
        conn.execute("UPDATE event_log SET actor = 'mallory' WHERE seq = 2")
    bad = custody(node, db, "log", "verify", check=False)
    assert bad.returncode == 1 and "entry 2" in bad.stderr and "edited" in bad.stderr
    exported.write_text("\n".join([lines[0], lines[2]]) + "\n")              # a deleted line
    bad = custody(node, db, "log", "verify", "--file", str(exported), check=False)
    assert bad.returncode == 1 and "entry 2" in bad.stderr
