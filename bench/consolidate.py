"""A 1,000-input consolidation of a 2-of-3 wsh(sortedmulti) policy, timed per stage: build the PSBT,
two signers sign (embit, standing in for devices), the coordinator verifies each upload, finalize.

With BITCOIND set, the ratio to Bitcoin Core's wallet doing the same (walletcreatefundedpsbt,
walletprocesspsbt twice, finalizepsbt) would be printed from the same run; that comparison is not
wired yet (no bitcoind reaches these machines). Note: 1,000 such inputs weigh ~418,000 WU, over the
400,000 standardness limit, so the result is finalized but not broadcast (Core's would be the same).

    python bench/consolidate.py
"""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embit import bip32  # noqa: E402
from embit.networks import NETWORKS  # noqa: E402
from embit.psbt import PSBT  # noqa: E402

from custody.derive import derive_scripts  # noqa: E402
from custody.node_client import NodeClient  # noqa: E402
from custody.policies import build_policy  # noqa: E402
from custody.psbt_builder import Coin, build_spend  # noqa: E402
from custody.signatures import decode_psbt, finalize, is_complete, merge_upload  # noqa: E402
from regtest.launcher import start_node  # noqa: E402
from regtest.testwallet import TestWallet, Utxo  # noqa: E402
from tests.conftest import hd_keys  # noqa: E402

INPUTS = int(os.environ.get("BENCH_INPUTS", "1000"))
SEED = 950


def device(n: int) -> bip32.HDKey:
    return bip32.HDKey.from_seed(hashlib.sha256(f"test device {n}".encode()).digest(),
                                 version=NETWORKS["regtest"]["xprv"])


def timed(label: str, fn, results: dict):
    start = time.perf_counter()
    value = fn()
    results[label] = time.perf_counter() - start
    return value


def main() -> None:
    spec = build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=SEED))
    wallet = TestWallet("consolidation funding")
    with tempfile.TemporaryDirectory() as tmp:
        node = start_node(Path(tmp) / "node", bitcoind="")
        rpc = NodeClient(node.url, cookie_file=node.cookie_file, timeout=600)
        try:
            scripts = derive_scripts(spec, 0, 0, INPUTS - 1)
            block = rpc.generatetoaddress(1, wallet.address())[0]
            rpc.generatetoaddress(100, TestWallet("miner").address())
            cb = rpc.getblock(block, 2)["tx"][0]
            coin = Utxo(cb["txid"], 0, int(cb["vout"][0]["value"] * 100_000_000), wallet.wpkh)
            outputs = [(spk, 100_000) for spk in scripts]
            funding = rpc.sendrawtransaction(wallet.sign([coin], outputs + [(wallet.wpkh, coin.value - 100_000 * INPUTS - 100_000)]), 0)
            rpc.generatetoaddress(1, TestWallet("miner").address())
            raw = bytes.fromhex(rpc.getrawtransaction(funding))
            coins = [Coin(funding, i, 100_000, 0, i, spk) for i, spk in enumerate(scripts)]
            change = (0, spec.embit(1).derive(0).script_pubkey().data)
            results: dict[str, float] = {}
            built = timed("build PSBT", lambda: build_spend(spec, coins, [(change[1], 1)], fee_rate=1, change=None,
                                                            previous_txs={funding: raw}, locktime=rpc.getblockcount(),
                                                            select=False, sweep=True), results)
            stored = built.psbt
            uploads = []
            for n in (SEED, SEED + 2):
                copy = PSBT.parse(stored.serialize())
                timed(f"signer {n - SEED + 1} signs (embit)", lambda: copy.sign_with(device(n)), results)
                uploads.append(copy.serialize())
            merged = stored
            for i, upload in enumerate(uploads, 1):
                merged = timed(f"verify upload {i} ({INPUTS} signatures)",
                               lambda: merge_upload(merged, decode_psbt(upload)).psbt, results)
            assert is_complete(merged, 2)
            tx = timed("finalize", lambda: finalize(merged, 2), results)
            verdict = rpc.testmempoolaccept([tx.hex()])[0]
        finally:
            node.stop()
    coordinator = results["build PSBT"] + sum(v for k, v in results.items() if k.startswith("verify")) + results["finalize"]
    print(f"{INPUTS}-input 2-of-3 consolidation")
    for label, seconds in results.items():
        print(f"  {label:40} {seconds:8.3f} s")
    print(f"  {'coordinator total (build+verify+finalize)':40} {coordinator:8.3f} s "
          f"({coordinator / INPUTS * 1000:.2f} ms per input)")
    print(f"  node's verdict on the final transaction: {'accepted' if verdict['allowed'] else verdict['reject-reason']}")
    if not os.environ.get("BITCOIND"):
        print("(set BITCOIND=/path/to/bitcoind for the same-run ratio to Bitcoin Core's wallet; not wired yet)")


if __name__ == "__main__":
    main()
