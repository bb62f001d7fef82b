"""Benchmark of the embedded regtest node, and of real bitcoind in the same run when BITCOIND is set.

Figures: start-up time (fresh and with 1,100 blocks), blocks per second for 1,000 generatetoaddress
blocks, transactions accepted per second for 1,000 independent and 1,000 chained P2WPKH spends.
Chained spends are sent in runs of 25 (Core's default ancestor limit) with a block mined between runs;
only sendrawtransaction time is counted. Then the node is killed (SIGKILL) and the start-up after the
kill is timed: the embedded node re-submits the ~1,140 blocks its kernel never flushed and must come
back at the same tip (checked); bitcoind comes back at its last flush. Goal: within 1.5x of bitcoind
on every figure.

    python bench/regtest_node.py            # embedded node only
    BITCOIND=/path/to/bitcoind python bench/regtest_node.py
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from custody.chain.node_client import NodeClient, btc_to_sats  # noqa: E402
from regtest.launcher import start_node  # noqa: E402
from regtest.testwallet import TestWallet, Utxo  # noqa: E402

N = int(os.environ.get("BENCH_N", "1000"))
CHAIN_RUN = 25


def measure(kind: str, bitcoind: str | None) -> dict[str, float]:
    wallet, sink = TestWallet("bench"), TestWallet("sink")
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        node = start_node(Path(tmp) / kind, bitcoind=bitcoind or "")
        figures["start-up, empty chain (s)"] = time.perf_counter() - t0
        rpc = NodeClient(node.url, cookie_file=node.cookie_file, timeout=600)
        try:
            t0 = time.perf_counter()
            hashes = rpc.generatetoaddress(N, wallet.address())
            figures[f"generatetoaddress {N} blocks (blocks/s)"] = N / (time.perf_counter() - t0)
            hashes += rpc.generatetoaddress(1, wallet.address())   # one more coin, for the chain
            rpc.generatetoaddress(100, sink.address())
            coins = []
            for h in hashes:
                cb = rpc.getblock(h, 2)["tx"][0]
                coins.append(Utxo(cb["txid"], 0, btc_to_sats(cb["vout"][0]["value"]), wallet.wpkh))

            independent = [wallet.sign([c], [(sink.wpkh, c.value - 1_000)]) for c in coins[:N]]
            t0 = time.perf_counter()
            for raw in independent:
                rpc.sendrawtransaction(raw)
            figures[f"{len(independent)} independent spends (tx/s)"] = len(independent) / (time.perf_counter() - t0)
            rpc.generatetoaddress(1, sink.address())

            chained, current = [], coins[N]
            for _ in range(N):
                raw = wallet.sign([current], [(wallet.wpkh, current.value - 200)])
                chained.append(raw)
                current = Utxo(_txid(raw), 0, current.value - 200, wallet.wpkh)
            spent = 0.0
            for start in range(0, len(chained), CHAIN_RUN):
                t0 = time.perf_counter()
                for raw in chained[start:start + CHAIN_RUN]:
                    rpc.sendrawtransaction(raw)
                spent += time.perf_counter() - t0
                rpc.generatetoaddress(1, sink.address())
            figures[f"{len(chained)} chained spends (tx/s)"] = len(chained) / spent
            tip = rpc.getbestblockhash()
        except BaseException:
            node.stop()
            raise
        node.kill()
        t0 = time.perf_counter()
        node = start_node(Path(tmp) / kind, bitcoind=bitcoind or "")
        figures["start-up after SIGKILL (s)"] = time.perf_counter() - t0
        after_kill = NodeClient(node.url, cookie_file=node.cookie_file).getbestblockhash()
        node.stop()
        if kind == "embedded" and after_kill != tip:
            raise SystemExit(f"the embedded node lost blocks to SIGKILL: tip {after_kill}, not {tip}")
        t0 = time.perf_counter()
        node = start_node(Path(tmp) / kind, bitcoind=bitcoind or "")
        figures["start-up, existing chain (s)"] = time.perf_counter() - t0
        node.stop()
    return figures


def _txid(raw_hex: str) -> str:
    from regtest.serialize import Tx
    return Tx.parse(bytes.fromhex(raw_hex)).txid


def main() -> None:
    bitcoind = os.environ.get("BITCOIND")
    ours = measure("embedded", None)
    theirs = measure("bitcoind", bitcoind) if bitcoind else None
    print(f"{'figure':45} {'embedded':>12} {'bitcoind':>12} {'ratio':>8}")
    for name, value in ours.items():
        if theirs is None:
            print(f"{name:45} {value:12.3f} {'-':>12} {'-':>8}")
            continue
        other = theirs[name]
        # ratio > 1 means the embedded node is slower by that factor
        ratio = value / other if name.endswith("(s)") else other / value
        print(f"{name:45} {value:12.3f} {other:12.3f} {ratio:7.2f}x")
    if theirs is None:
        print("(set BITCOIND=/path/to/bitcoind to measure the ratio to Bitcoin Core in the same run)")


if __name__ == "__main__":
    main()
