"""Fixtures: each test module gets its own regtest node (embedded, or bitcoind when BITCOIND is set)
on a free port in a temporary directory, and the toolkit's one chain client pointed at it."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import pytest

# The coordinator's signing key and anything else under CUSTODY_HOME stay inside the test run.
os.environ["CUSTODY_HOME"] = tempfile.mkdtemp(prefix="custody-home-")

from custody.chain.node_client import NodeClient
from regtest.testwallet import TestWallet, Utxo

from .support import start_node



@pytest.fixture(scope="module")
def node(tmp_path_factory):
    running = start_node(tmp_path_factory.mktemp("node"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def rpc(node):
    return NodeClient(node.url, cookie_file=node.cookie_file)


@pytest.fixture(scope="module")
def wallet():
    return TestWallet()


@pytest.fixture(scope="module")
def other_address():
    return TestWallet("someone else").address()


@contextlib.contextmanager
def signer_discovery(directory):
    """Simulated signers started inside announce themselves in `directory` (HWI finds them there)."""
    previous = os.environ.get("CUSTODY_SIGNER_DISCOVERY")
    os.environ["CUSTODY_SIGNER_DISCOVERY"] = str(directory)
    try:
        yield directory
    finally:
        if previous is None:
            os.environ.pop("CUSTODY_SIGNER_DISCOVERY", None)
        else:
            os.environ["CUSTODY_SIGNER_DISCOVERY"] = previous


def embedded_only(reason: str = "behaviour of the embedded node only"):
    """Skip a test under BITCOIND=...: it checks something only the embedded node has (its command line, its
    files, its own extensions); `reason` says what."""
    return pytest.mark.skipif(bool(os.environ.get("BITCOIND")), reason=f"embedded node only: {reason}")


def mine_coins(rpc, wallet: TestWallet, count: int, *, kind: str = "wpkh", mature: bool = True) -> list[Utxo]:
    """Mine `count` blocks paying the wallet, then 100 more so the coinbases can be spent."""
    hashes = rpc.generatetoaddress(count, wallet.address(kind))
    if mature:
        rpc.generatetoaddress(100, TestWallet("maturity").address())
    coins = []
    for h in hashes:
        cb = rpc.getblock(h, 2)["tx"][0]
        out = cb["vout"][0]
        coins.append(Utxo(cb["txid"], 0, int(out["value"] * 100_000_000), bytes.fromhex(out["scriptPubKey"]["hex"])))
    return coins


def fund_policy(rpc, wallet: TestWallet, coin: Utxo, spec, miner_address: str) -> None:
    """Pay 1, 2 and 3 BTC from a matured coin to the policy's first three receive addresses; mine it."""
    outputs = [(spec.embit(0).derive(i).script_pubkey().data, 100_000_000 * (i + 1)) for i in range(3)]
    rpc.sendrawtransaction(wallet.sign([coin], outputs + [(wallet.wpkh, coin.value - 600_002_000)]))
    rpc.generatetoaddress(1, miner_address)


def utxo_of(rpc, txid: str, vout: int) -> Utxo:
    out = rpc.getrawtransaction(txid, True)["vout"][vout]
    return Utxo(txid, vout, int(out["value"] * 100_000_000), bytes.fromhex(out["scriptPubKey"]["hex"]))


# -- databases: every ledger test runs on SQLite and on a real PostgreSQL server -----------------
def _postgres_bin():
    import glob
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A throwaway PostgreSQL cluster on a free loopback port, trust auth, as the postgres user."""
    import shutil
    import subprocess
    from regtest.launcher import free_port
    bindir = _postgres_bin()
    if bindir is None:
        if os.environ.get("CUSTODY_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL is required (make test installs it) but was not found")
        pytest.skip("PostgreSQL not installed")
    import tempfile
    base = Path(tempfile.mkdtemp(prefix="custody-pg-"))   # pytest's own temp root is private to root
    data = base / "data"
    run_as = []
    if os.geteuid() == 0:   # initdb refuses to run as root
        shutil.chown(data.parent, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run(run_as + [f"{bindir}/initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run(run_as + [f"{bindir}/pg_ctl", "-D", str(data), "-w", "-l", str(data.parent / "log"),
                             "-o", f"-p {port} -k {data.parent} -c listen_addresses=127.0.0.1 -c fsync=off "
                                          "-c max_connections=300", "start"],
                   check=True, capture_output=True)
    yield f"postgresql://postgres@127.0.0.1:{port}"
    subprocess.run(run_as + [f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


_db_counter = iter(range(1, 1_000_000))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/custody.db"
        return
    import psycopg
    server = request.getfixturevalue("postgres_server")
    name = f"custody_test_{next(_db_counter)}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield f"{server}/{name}"
    # the test's engines keep pooled connections until they are collected: end them on the server,
    # so that a long run never reaches max_connections
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


def hd_keys(count: int = 3, *, seed_base: int = 1) -> list[str]:
    """Account-level test keys "[fp/48h/1h/0h/2h]tpub…", each from its own seed (its own device)."""
    import hashlib
    from embit import bip32
    from embit.networks import NETWORKS
    keys = []
    for i in range(count):
        seed = hashlib.sha256(f"test device {seed_base + i}".encode()).digest()
        root = bip32.HDKey.from_seed(seed, version=NETWORKS["regtest"]["xprv"])
        account = root.derive("m/48h/1h/0h/2h").to_public()
        keys.append(f"[{root.my_fingerprint.hex()}/48h/1h/0h/2h]{account.to_base58()}")
    return keys


def sign_multisig_spend(seed_bases: list[int], inputs: list[tuple], outputs: list[tuple[bytes, int]]) -> str:
    """Spend wsh(sortedmulti(2, …)) coins made from hd_keys(seed_base=…) test devices, signing with the
    first two devices. inputs: (txid, vout, value, branch, index); outputs: (scriptPubKey, value)."""
    import hashlib
    from embit import bip32, script
    from embit.networks import NETWORKS
    from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput
    roots = [bip32.HDKey.from_seed(hashlib.sha256(f"test device {n}".encode()).digest(),
                                   version=NETWORKS["regtest"]["xprv"]) for n in seed_bases]
    tx = Transaction(version=2, vin=[TransactionInput(bytes.fromhex(t), v, sequence=0xFFFFFFFD) for t, v, *_ in inputs],
                     vout=[TransactionOutput(value, script.Script(spk)) for spk, value in outputs])
    for i, (_, _, value, branch, index) in enumerate(inputs):
        children = [r.derive(f"m/48h/1h/0h/2h/{branch}/{index}") for r in roots]
        pubs = sorted(c.key.get_public_key().sec() for c in children)
        witness_script = script.Script(bytes([0x52]) + b"".join(b"\x21" + p for p in pubs) + bytes([0x53, 0xAE]))
        digest = tx.sighash_segwit(i, witness_script, value)
        signers = sorted(children[:2], key=lambda c: c.key.get_public_key().sec())
        sigs = [c.key.sign(digest).serialize() + bytes([SIGHASH.ALL]) for c in signers]
        tx.vin[i].witness = script.Witness([b""] + sigs + [witness_script.data])
    return tx.serialize().hex()
