"""A 1,000-input consolidation of a 2-of-3 wsh(sortedmulti) policy, timed per stage: build the PSBT,
two signers sign (embit, standing in for devices), the coordinator verifies each upload, finalize.

With BITCOIND set, Bitcoin Core's wallet does the same on its own chain in the same run — a
watch-only wallet runs walletcreatefundedpsbt over the same 1,000 coins, two signer wallets each run
walletprocesspsbt, then finalizepsbt — and the ratio is printed. (No bitcoind reaches the machines
this was written on, so that path has not been run yet.) Note: 1,000 such inputs weigh ~418,000 WU, over the
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
from custody.node_client import NodeClient, btc_to_sats  # noqa: E402
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


def core_consolidation(bitcoind: str, spec, tmp: str) -> dict[str, float]:
    """The same consolidation by Bitcoin Core's wallet: watch-only funded PSBT, two signer wallets."""
    node = start_node(Path(tmp) / "core", bitcoind=bitcoind)
    rpc = NodeClient(node.url, cookie_file=node.cookie_file, timeout=3600)
    results: dict[str, float] = {}
    try:
        public = [spec.descriptor(b) for b in (0, 1)]
        rpc.createwallet("watch", True, True, "", False, True)
        watch = NodeClient(node.url, cookie_file=node.cookie_file, wallet="watch", timeout=3600)
        watch.importdescriptors([{"desc": d, "active": True, "internal": bool(b), "range": [0, INPUTS + 10],
                                  "timestamp": "now"} for b, d in enumerate(public)])
        signers = []
        for n in (SEED, SEED + 2):
            name = f"signer{n}"
            rpc.createwallet(name, False, True, "", False, True)
            wallet = NodeClient(node.url, cookie_file=node.cookie_file, wallet=name, timeout=3600)
            account = device(n).derive("m/48h/1h/0h/2h")
            key = spec.keys[n - SEED]
            private = [d.split("#")[0].replace(key.xpub, account.to_base58(NETWORKS["regtest"]["xprv"])) for d in public]
            wallet.importdescriptors([{"desc": f"{d}#{rpc.getdescriptorinfo(d)['checksum']}", "active": True,
                                       "internal": bool(b), "range": [0, INPUTS + 10], "timestamp": "now"}
                                      for b, d in enumerate(private)])
            signers.append(wallet)
        miner = TestWallet("core funding")
        block = rpc.generatetoaddress(1, miner.address())[0]
        rpc.generatetoaddress(100, TestWallet("miner").address())
        cb = rpc.getblock(block, 2)["tx"][0]
        coin = Utxo(cb["txid"], 0, btc_to_sats(cb["vout"][0]["value"]), miner.wpkh)
        scripts = derive_scripts(spec, 0, 0, INPUTS - 1)
        rpc.sendrawtransaction(miner.sign([coin], [(spk, 100_000) for spk in scripts]
                                          + [(miner.wpkh, coin.value - 100_000 * INPUTS - 100_000)]), 0)
        rpc.generatetoaddress(1, TestWallet("miner").address())
        destination = watch.getnewaddress("", "bech32")
        total = sum(u["amount"] for u in watch.listunspent())
        start = time.perf_counter()
        funded = watch.walletcreatefundedpsbt([], [{destination: total}], 0,
                                              {"subtractFeeFromOutputs": [0], "add_inputs": True, "fee_rate": 1})
        results["build PSBT"] = time.perf_counter() - start
        psbt = funded["psbt"]
        for i, wallet in enumerate(signers, 1):
            start = time.perf_counter()
            psbt = wallet.walletprocesspsbt(psbt, True, "ALL", True, False)["psbt"]
            results[f"signer {i} (walletprocesspsbt)"] = time.perf_counter() - start
        start = time.perf_counter()
        rpc.finalizepsbt(psbt)
        results["finalize"] = time.perf_counter() - start
    finally:
        node.stop()
    return results


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
            coin = Utxo(cb["txid"], 0, btc_to_sats(cb["vout"][0]["value"]), wallet.wpkh)
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
    bitcoind = os.environ.get("BITCOIND")
    if not bitcoind:
        print("(set BITCOIND=/path/to/bitcoind for the same-run ratio to Bitcoin Core's wallet)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        core = core_consolidation(bitcoind, spec, tmp)
    core_total = sum(core.values())
    print("Bitcoin Core wallet, same consolidation:")
    for label, seconds in core.items():
        print(f"  {label:40} {seconds:8.3f} s")
    ours = coordinator + sum(v for k, v in results.items() if k.startswith("signer"))
    print(f"  ratio, toolkit (coordinator + embit signers) / Core: {ours / core_total:.2f}x")


if __name__ == "__main__":
    main()
