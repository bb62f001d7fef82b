"""The sync leader (custody.ledger.leader) on a real PostgreSQL and a real chain: one holder per database at a
time; a leader whose database connection ends (what a restart does to it) notices before its next round
and takes the lock again unless another process has; a standby outlives a database restart; the leader,
whichever command runs it, also follows broadcast spends to confirmation; and `custody worker` stops on
SIGTERM or SIGINT with exit code 0 and one line."""
from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from embit import bip32
from embit.networks import NETWORKS
from embit.psbt import PSBT

from custody.bitcoin.policies import build_policy
from custody.chain.node_client import NodeClient
from custody.ledger import registry, service
from coordinator.worker import LeaderLoop
from custody.ledger.leader import LeaderLock, LOCK_ID
from custody.ledger.sync import Syncer
from custody.spending import spends
from custody.store.db import make_engine, open_database
from regtest.launcher import free_port
from regtest.testwallet import TestWallet

from . import officers
from .conftest import _postgres_bin, fund_policy, hd_keys, mine_coins
from .support import stop, STOP_TIMEOUT, wait_healthy, wait_until

_databases = iter(range(1, 1000))


class Postgres:
    """A fresh database on the test cluster, and what the server says about its advisory lock."""

    def __init__(self, server: str):
        self.server, self.name = server, f"custody_leader_{os.getpid()}_{next(_databases)}"
        with self.admin() as conn:
            conn.execute(f"CREATE DATABASE {self.name}")
        self.url = f"{server}/{self.name}"

    def admin(self):
        return psycopg.connect(f"{self.server}/postgres", autocommit=True)

    def holders(self) -> list[int]:
        """Backends holding the leader lock on this database."""
        with self.admin() as conn:
            return [pid for (pid,) in conn.execute(
                "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database WHERE d.datname = %s"
                " AND l.locktype = 'advisory' AND l.granted AND l.classid::bigint = %s AND l.objid::bigint = %s",
                (self.name, LOCK_ID >> 32, LOCK_ID & 0xFFFFFFFF))]

    def terminate(self, pid: int) -> None:
        """What a database restart does to a connection."""
        with self.admin() as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))

    def ledger_height(self) -> int | None:
        with psycopg.connect(self.url) as conn:
            return conn.execute("SELECT max(height) FROM blocks").fetchone()[0]

    def restart(self) -> None:
        """Restart the whole cluster (`pg_ctl restart` keeps its port and options)."""
        with self.admin() as conn:
            data = conn.execute("SHOW data_directory").fetchone()[0]
        run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(run_as + [f"{_postgres_bin()}/pg_ctl", "-D", data, "-w", "-m", "fast",
                                 "-l", os.path.join(os.path.dirname(data), "log"), "restart"],
                       check=True, capture_output=True, timeout=120)


@pytest.fixture
def pg(postgres_server):
    return Postgres(postgres_server)


@pytest.fixture(scope="module")
def coins(rpc, wallet):
    return mine_coins(rpc, wallet, 4)


def worker(node, db_url, log, interval="0.2"):
    env = {**os.environ, "CUSTODY_DB": db_url, "CUSTODY_NODE": node.url, "CUSTODY_NODE_COOKIE": str(node.cookie_file)}
    with open(log, "a") as out:
        return subprocess.Popen([sys.executable, "-m", "coordinator.cli.main", "worker", "--interval", interval], env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def said(log, fragment: str) -> int:
    """How many lines of a log file contain `fragment`."""
    return sum(fragment in line for line in open(log).read().splitlines()) if os.path.exists(log) else 0


def test_a_lock_lost_with_its_connection_is_noticed_and_held_by_one_at_a_time(pg):
    engine = make_engine(pg.url)
    first, second = LeaderLock(engine), LeaderLock(engine)
    assert first.try_acquire() and first.held()
    assert not second.try_acquire()
    [pid] = pg.holders()
    pg.terminate(pid)
    wait_until(second.try_acquire, what="the server releasing the lock of a terminated connection")
    assert not first.held()                       # the old leader notices before its next round
    assert not first.try_acquire()                # and cannot lead beside the new one
    assert len(pg.holders()) == 1 and second.held()
    second.release()
    assert first.try_acquire() and first.held()   # taken again once free
    first.release()
    assert pg.holders() == [] and not first.held()
    engine.dispose()


def test_the_loop_notices_a_lost_lead_and_one_loop_leads_again(pg, node, rpc, other_address, caplog):
    caplog.set_level(logging.INFO, logger="coordinator.worker")
    client = NodeClient(node.url, cookie_file=node.cookie_file)
    loops = [LeaderLoop(open_database(pg.url), lambda: client, interval=0.1) for _ in range(2)]
    stop_event = threading.Event()
    threads = [threading.Thread(target=loop.run, args=(stop_event,)) for loop in loops]
    most_holders = []
    def sample():
        while not stop_event.is_set():
            most_holders.append(len(pg.holders()))
            time.sleep(0.05)
    threads.append(threading.Thread(target=sample))
    for t in threads:
        t.start()
    try:
        wait_until(lambda: sorted(loop.role for loop in loops) == ["leader", "standby"], what="one leader, one standby")
        wait_until(lambda: pg.ledger_height() == rpc.getblockcount(), what="the leader syncing")
        [pid] = pg.holders()
        pg.terminate(pid)
        wait_until(lambda: any("lost the leader lock" in r.getMessage() for r in caplog.records),
                   what="the leader noticing that its lock went with its connection")
        rpc.generatetoaddress(1, other_address)
        wait_until(lambda: sorted(loop.role for loop in loops) == ["leader", "standby"] and len(pg.holders()) == 1,
                   what="one loop leading again")
        wait_until(lambda: pg.ledger_height() == rpc.getblockcount(), what="the new leader syncing")
    finally:
        stop_event.set()
        for t in threads:
            t.join(30)
    assert max(most_holders) == 1
    assert pg.holders() == []                     # both released on stopping


def test_workers_outlive_a_database_restart_and_stop_cleanly(pg, node, rpc, other_address, tmp_path):
    Syncer(open_database(pg.url), rpc).sync_once()
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    workers = [worker(node, pg.url, log) for log in logs]
    try:
        wait_until(lambda: sum(said(log, "leading:") for log in logs) == 1
                   and sum(said(log, "standing by") for log in logs) == 1, what="one worker leading, one standing by",
                   process=workers[0], logs=logs)
        pg.restart()
        rpc.generatetoaddress(1, other_address)
        tip = rpc.getblockcount()
        wait_until(lambda: pg.ledger_height() == tip, what="a worker leading again after the restart",
                   process=workers[1], logs=logs, retry_on=(psycopg.OperationalError,))
        assert [w.poll() for w in workers] == [None, None]
        assert sum(said(log, "lost the leader lock") for log in logs) >= 1     # the leader noticed
        assert sum(said(log, "leading:") for log in logs) >= 2 and len(pg.holders()) == 1   # and it was re-taken
        rpc.generatetoaddress(1, other_address)
        wait_until(lambda: pg.ledger_height() == tip + 1, what="the ledger following the chain", logs=logs)
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        codes = [w.wait(STOP_TIMEOUT) for w in workers]
    text = "".join(log.read_text() for log in logs)
    assert codes == [0, 0], text
    assert "Traceback" not in text and text.count("worker stopped (SIGTERM)") == 2
    assert pg.holders() == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_worker_stops_on_a_signal_with_exit_code_0_and_one_line(node, tmp_path, signum):
    log = tmp_path / "worker.log"
    process = worker(node, f"sqlite:///{tmp_path}/custody.db", log)
    try:
        wait_until(lambda: said(log, "leading:"), what="the worker leading", process=process, logs=[log])
        process.send_signal(signum)
        assert process.wait(STOP_TIMEOUT) == 0
    finally:
        stop(process)
    lines = log.read_text().splitlines()
    assert f"worker stopped ({signum.name})" in lines[-1] and "Traceback" not in log.read_text()


def _device(n: int) -> bip32.HDKey:
    return bip32.HDKey.from_seed(hashlib.sha256(f"test device {n}".encode()).digest(),
                                 version=NETWORKS["regtest"]["xprv"])


def _signed_spend(sessions, rpc, seed: int) -> int:
    """A 2-of-3 spend of 0.5 BTC, approved by two officers and signed by two devices."""
    with sessions.begin() as s:
        spend = spends.request_spend(s, registry.get_policy(s, "vault"), "ray",
                                     [(TestWallet("payee").address(), 50_000_000)], fee_rate=3.0, client=rpc)
        spend_id = spend.id
    for officer in ("olga", "omar"):
        with sessions.begin() as s:
            officers.approve(s, spends.get_spend(s, spend_id), officer)
    for n in (seed, seed + 1):
        with sessions() as s:
            psbt = PSBT.from_string(spends.get_spend(s, spend_id).psbt)
        psbt.sign_with(_device(n))
        with sessions.begin() as s:
            spends.add_signatures(s, spends.get_spend(s, spend_id), psbt.serialize())
    return spend_id


def test_a_worker_leading_beside_serve_tracks_a_broadcast_spend(node, rpc, wallet, coins, other_address, tmp_path):
    db = f"sqlite:///{tmp_path}/custody.db"
    seed = 1400
    sessions = open_database(db)
    spec = build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=seed))
    with sessions.begin() as s:
        policy = registry.create_policy(s, "vault", spec)
        registry.set_status(s, policy, "active")
        spends.set_approval_rule(s, policy, required_approvals=2)
    fund_policy(rpc, wallet, coins.pop(), spec, other_address)
    Syncer(sessions, rpc).sync_once()
    spend_id = _signed_spend(sessions, rpc, seed)

    logs = [tmp_path / "worker.log", tmp_path / "serve.out", tmp_path / "serve.err"]
    leader = worker(node, db, logs[0])
    server = None
    try:
        wait_until(lambda: said(logs[0], "leading:"), what="the worker leading", process=leader, logs=logs)
        port = free_port()
        env = {**os.environ, "CUSTODY_NODE_COOKIE": str(node.cookie_file)}
        with open(logs[1], "w") as out, open(logs[2], "w") as err:
            server = subprocess.Popen([sys.executable, "-m", "coordinator.cli.main", "serve", "--db", db, "--node", node.url,
                                       "--port", str(port), "--sync-interval", "0.2"], env=env, stdout=out, stderr=err)
        wait_healthy(f"http://127.0.0.1:{port}", server, logs)
        wait_until(lambda: said(logs[2], "standing by"), what="serve standing by", process=server, logs=logs)
        # a one-off sync beside the leader waits for it rather than failing after 30 s
        assert service.sync(sessions, rpc)["tip"] == rpc.getblockcount()

        txid = spends.broadcast(sessions, spend_id, rpc)
        rpc.generatetoaddress(1, other_address)

        def state():
            with sessions() as s:
                return spends.get_spend(s, spend_id).state
        wait_until(lambda: state() == "confirmed", what="the leading worker tracking the spend to confirmation",
                   process=leader, logs=logs)
        assert txid in rpc.getblock(rpc.getbestblockhash())["tx"]
        assert said(logs[2], "leading:") == 0          # serve never led: the worker tracked it
    finally:
        stop(server)
        leader.send_signal(signal.SIGTERM)
        assert leader.wait(STOP_TIMEOUT) == 0
    assert "Traceback" not in "".join(log.read_text() for log in logs if log.exists())
