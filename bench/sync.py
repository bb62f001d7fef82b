"""Ledger sync from scratch: a 2-of-3 policy with 5,000 used addresses holding 20,000 UTXOs.

The chain is made on the embedded node: 20 funding transactions of 1,000 outputs each, four coins
per address. Then a new database imports the policy and `custody sync` discovers and stores every
coin; the time is printed with its stages. With BITCOIND set, the same chain is built on bitcoind and
the ratio to Bitcoin Core's watch-only descriptor wallet (createwallet + importdescriptors with
rescan over the same range) is printed, measured in the same run. Goal: faster than Core's wallet.

    python bench/sync.py [--db postgresql://...]        # BENCH_ADDRESSES=500 for a smaller run
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from custody.bitcoin.derive import derive_scripts  # noqa: E402
from custody.bitcoin.policies import build_policy  # noqa: E402
from custody.chain.node_client import NodeClient, btc_to_sats  # noqa: E402
from custody.ledger import coins as ledger  # noqa: E402
from custody.ledger import registry
from custody.ledger.sync import Syncer  # noqa: E402
from custody.store.db import open_database  # noqa: E402
from regtest.launcher import start_node  # noqa: E402
from regtest.testwallet import TestWallet, Utxo  # noqa: E402
from tests.conftest import hd_keys  # noqa: E402

ADDRESSES = int(os.environ.get("BENCH_ADDRESSES", "5000"))
PER_ADDRESS = 4
OUTPUTS_PER_TX = 1_000


def build_chain(rpc: NodeClient, spec) -> None:
    wallet = TestWallet("bench funding")
    scripts = derive_scripts(spec, 0, 0, ADDRESSES - 1)
    targets = [spk for spk in scripts for _ in range(PER_ADDRESS)]
    batches = [targets[i:i + OUTPUTS_PER_TX] for i in range(0, len(targets), OUTPUTS_PER_TX)]
    hashes = rpc.generatetoaddress(len(batches), wallet.address())
    rpc.generatetoaddress(100, TestWallet("bench miner").address())
    for block_hash, batch in zip(hashes, batches):
        cb = rpc.getblock(block_hash, 2)["tx"][0]
        coin = Utxo(cb["txid"], 0, btc_to_sats(cb["vout"][0]["value"]), wallet.wpkh)
        outputs = [(spk, 10_000 + i) for i, spk in enumerate(batch)]
        change = coin.value - sum(v for _, v in outputs) - 100_000
        rpc.sendrawtransaction(wallet.sign([coin], outputs + [(wallet.wpkh, change)]), 0)
        if len(rpc.getrawmempool()) >= 8:
            rpc.generatetoaddress(1, TestWallet("bench miner").address())
    rpc.generatetoaddress(1, TestWallet("bench miner").address())


def ours(rpc: NodeClient, spec, db_url: str) -> tuple[float, int, int]:
    sessions = open_database(db_url)
    start = time.perf_counter()
    with sessions.begin() as s:
        registry.create_policy(s, "bench", spec)
    Syncer(sessions, rpc).sync_once()
    elapsed = time.perf_counter() - start
    with sessions() as s:
        balance = ledger.balances(s)[0].confirmed
        coins = len(ledger.list_utxos(s, registry.get_policy(s, "bench")))
    return elapsed, coins, balance


def core_wallet(rpc: NodeClient, spec) -> tuple[float, int, int]:
    """Core's watch-only descriptor wallet over the same policy: createwallet (no private keys, blank,
    descriptors) + importdescriptors from timestamp 0, which rescans the chain; timed to its return.
    Then (untimed) its coins and balance, to compare with the ledger's."""
    start = time.perf_counter()
    rpc.createwallet("bench", True, True, "", False, True)
    wallet = NodeClient(rpc.url, user=rpc._user, password=rpc._password, cookie_file=rpc._cookie_file,
                        wallet="bench", timeout=3600)
    requests = [{"desc": spec.descriptor(b), "active": True, "range": [0, ADDRESSES + 20], "timestamp": 0,
                 "internal": bool(b)} for b in (0, 1)]
    result = wallet.importdescriptors(requests)
    assert all(r["success"] for r in result), result
    elapsed = time.perf_counter() - start
    unspent = wallet.listunspent()
    return elapsed, len(unspent), sum(btc_to_sats(u["amount"]) for u in unspent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="database URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    spec = build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=900))
    with tempfile.TemporaryDirectory() as tmp:
        node = start_node(Path(tmp) / "embedded", bitcoind="")
        rpc = NodeClient(node.url, cookie_file=node.cookie_file, timeout=600)
        try:
            t0 = time.perf_counter()
            build_chain(rpc, spec)
            print(f"chain built in {time.perf_counter() - t0:.1f} s: {ADDRESSES:,} addresses x {PER_ADDRESS} coins")
            elapsed, coins, balance = ours(rpc, spec, args.db or f"sqlite:///{tmp}/bench.db")
        finally:
            node.stop()
        print(f"custody sync from scratch: {elapsed:.2f} s for {coins:,} UTXOs ({coins / elapsed:,.0f} UTXOs/s), "
              f"balance {balance:,} sat")
        bitcoind = os.environ.get("BITCOIND")
        if bitcoind:
            core = start_node(Path(tmp) / "bitcoind", bitcoind=bitcoind)
            crpc = NodeClient(core.url, cookie_file=core.cookie_file, timeout=3600)
            try:
                build_chain(crpc, spec)
                core_elapsed, core_coins, core_balance = core_wallet(crpc, spec)
            finally:
                core.stop()
            print(f"Bitcoin Core watch-only wallet (createwallet + importdescriptors with rescan), same run: "
                  f"{core_elapsed:.2f} s for {core_coins:,} UTXOs, balance {core_balance:,} sat"
                  + ("" if (core_coins, core_balance) == (coins, balance) else " (NOT the ledger's figures)"))
            print(f"custody is {core_elapsed / elapsed:.2f}x as fast as Core's wallet")
        else:
            print("(set BITCOIND=/path/to/bitcoind to measure Bitcoin Core's wallet on the same chain in this run)")


if __name__ == "__main__":
    main()
