"""A 1,000-input consolidation of a 2-of-3 wsh(sortedmulti) policy, timed per stage: build the PSBT,
two signers sign (embit, standing in for devices), the coordinator verifies each upload, finalize.

A 2-of-3 P2WSH input weighs ~417 WU (104 vB): 1,000 of them in one transaction (~417,000 WU) are
over the 400,000 WU standard limit, which Bitcoin Core's wallet enforces ("Transaction too large"),
so the 1,000 coins are consolidated in transactions of PER_TX = 500 inputs (~208,000 WU each), and
the node is asked to accept each one.

With BITCOIND set, Bitcoin Core's wallet does the same on its own chain in the same run: for each
500-coin part a watch-only descriptor wallet runs walletcreatefundedpsbt with those inputs
(add_inputs false, the fee subtracted from the one output, 1 sat/vB), two signer wallets each run
walletprocesspsbt, then finalizepsbt; the ratio of the totals is printed. (No bitcoind reaches the
machines this was written on, so that path has not been run yet.)

    python bench/consolidate.py            # BENCH_INPUTS=200 for a smaller run
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
from embit.transaction import Transaction  # noqa: E402

from custody.bitcoin.derive import derive_addresses, derive_scripts  # noqa: E402
from custody.bitcoin.policies import build_policy  # noqa: E402
from custody.bitcoin.psbt_builder import Coin, build_spend  # noqa: E402
from custody.bitcoin.signatures import decode_psbt, finalize, is_complete, merge_upload  # noqa: E402
from custody.chain.node_client import NodeClient, btc_to_sats, sats_to_btc  # noqa: E402
from regtest.launcher import start_node  # noqa: E402
from regtest.testwallet import TestWallet, Utxo  # noqa: E402
from tests.conftest import hd_keys  # noqa: E402

INPUTS = int(os.environ.get("BENCH_INPUTS", "1000"))
PER_TX = 500            # inputs per transaction: 500 x ~417 WU stays under the 400,000 WU standard limit
COIN_VALUE = 100_000    # sat per consolidated coin
SEED = 950


def device(n: int) -> bip32.HDKey:
    return bip32.HDKey.from_seed(hashlib.sha256(f"test device {n}".encode()).digest(),
                                 version=NETWORKS["regtest"]["xprv"])


def timed(label: str, fn, results: dict):
    """fn(), its time added to results[label] (each stage is summed over the transactions)."""
    start = time.perf_counter()
    value = fn()
    results[label] = results.get(label, 0.0) + time.perf_counter() - start
    return value


def weight(raw: bytes) -> int:
    """BIP-141 weight of a segwit transaction: 3 x its size without witness data + its full size."""
    witness = sum(len(i.witness.serialize()) for i in Transaction.parse(raw).vin)
    return 3 * (len(raw) - witness - 2) + len(raw)     # 2: the segwit marker and flag


def parts(items: list) -> list[list]:
    return [items[i:i + PER_TX] for i in range(0, len(items), PER_TX)]


def fund(rpc: NodeClient, scripts: list[bytes]) -> str:
    """One coinbase, matured, split into a COIN_VALUE coin on each script; returns the funding txid."""
    wallet = TestWallet("consolidation funding")
    block = rpc.generatetoaddress(1, wallet.address())[0]
    rpc.generatetoaddress(100, TestWallet("miner").address())
    cb = rpc.getblock(block, 2)["tx"][0]
    coin = Utxo(cb["txid"], 0, btc_to_sats(cb["vout"][0]["value"]), wallet.wpkh)
    outputs = [(spk, COIN_VALUE) for spk in scripts]
    funding = rpc.sendrawtransaction(wallet.sign([coin], outputs + [(wallet.wpkh, coin.value - COIN_VALUE * len(scripts)
                                                                     - 100_000)]), 0)
    rpc.generatetoaddress(1, TestWallet("miner").address())
    return funding


def core_consolidation(bitcoind: str, spec, tmp: str) -> tuple[dict[str, float], list[str]]:
    """The same consolidation by Bitcoin Core's wallet: a watch-only wallet makes each part's PSBT from
    its coins, two signer wallets sign it, finalizepsbt; returns the times and Core's verdicts."""
    node = start_node(Path(tmp) / "core", bitcoind=bitcoind)
    rpc = NodeClient(node.url, cookie_file=node.cookie_file, timeout=3600)
    results: dict[str, float] = {}
    verdicts = []
    try:
        public = [spec.descriptor(b) for b in (0, 1)]
        rpc.createwallet("watch", True, True, "", False, True)
        watch = NodeClient(node.url, cookie_file=node.cookie_file, wallet="watch", timeout=3600)
        imported = watch.importdescriptors([{"desc": d, "active": True, "internal": bool(b), "range": [0, INPUTS + 10],
                                             "timestamp": "now"} for b, d in enumerate(public)])
        assert all(r["success"] for r in imported), imported
        signers = {}
        for n in (SEED, SEED + 2):
            name = f"signer{n}"
            rpc.createwallet(name, False, True, "", False, True)
            wallet = NodeClient(node.url, cookie_file=node.cookie_file, wallet=name, timeout=3600)
            account = device(n).derive("m/48h/1h/0h/2h")
            key = spec.keys[n - SEED]
            private = [d.split("#")[0].replace(key.xpub, account.to_base58(NETWORKS["regtest"]["xprv"])) for d in public]
            imported = wallet.importdescriptors([{"desc": f"{d}#{rpc.getdescriptorinfo(d)['checksum']}", "active": True,
                                                  "internal": bool(b), "range": [0, INPUTS + 10], "timestamp": "now"}
                                                 for b, d in enumerate(private)])
            assert all(r["success"] for r in imported), imported
            signers[n - SEED + 1] = wallet
        funding = fund(rpc, derive_scripts(spec, 0, 0, INPUTS - 1))
        destination = derive_addresses(spec, 1, 0, 0)[0]     # the toolkit's destination: the policy's change /1/0
        for part in parts(list(range(INPUTS))):
            inputs = [{"txid": funding, "vout": i} for i in part]
            funded = timed("build PSBT (walletcreatefundedpsbt)", lambda: watch.walletcreatefundedpsbt(
                inputs, [{destination: sats_to_btc(COIN_VALUE * len(part))}], 0,
                {"add_inputs": False, "subtractFeeFromOutputs": [0], "fee_rate": 1}), results)
            psbt = funded["psbt"]
            for i, wallet in signers.items():
                psbt = timed(f"signer {i} (walletprocesspsbt)",
                             lambda: wallet.walletprocesspsbt(psbt, True, "ALL", True, False), results)["psbt"]
            final = timed("finalize (finalizepsbt)", lambda: rpc.finalizepsbt(psbt), results)
            assert final["complete"], "Core's signers did not complete the PSBT"
            verdict = rpc.testmempoolaccept([final["hex"]])[0]
            verdicts.append(f"{weight(bytes.fromhex(final['hex'])):,} WU "
                            + ("accepted" if verdict["allowed"] else verdict["reject-reason"]))
    finally:
        node.stop()
    return results, verdicts


def main() -> None:
    spec = build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=SEED))
    results: dict[str, float] = {}
    verdicts = []
    with tempfile.TemporaryDirectory() as tmp:
        node = start_node(Path(tmp) / "node", bitcoind="")
        rpc = NodeClient(node.url, cookie_file=node.cookie_file, timeout=600)
        try:
            scripts = derive_scripts(spec, 0, 0, INPUTS - 1)
            funding = fund(rpc, scripts)
            raw = bytes.fromhex(rpc.getrawtransaction(funding))
            coins = [Coin(funding, i, COIN_VALUE, 0, i, spk) for i, spk in enumerate(scripts)]
            destination = spec.embit(1).derive(0).script_pubkey().data     # the policy's change /1/0
            for part in parts(coins):
                built = timed("build PSBT", lambda: build_spend(spec, part, [(destination, 1)], fee_rate=1, change=None,
                                                                previous_txs={funding: raw},
                                                                locktime=rpc.getblockcount(), select=False,
                                                                sweep=True), results)
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
                verdicts.append(f"{weight(tx):,} WU " + ("accepted" if verdict["allowed"] else verdict["reject-reason"]))
        finally:
            node.stop()
    coordinator = results["build PSBT"] + sum(v for k, v in results.items() if k.startswith("verify")) + results["finalize"]
    ours = coordinator + sum(v for k, v in results.items() if k.startswith("signer"))
    print(f"{INPUTS}-input 2-of-3 consolidation in {len(verdicts)} transaction(s) of at most {PER_TX} inputs")
    for label, seconds in results.items():
        print(f"  {label:40} {seconds:8.3f} s")
    print(f"  {'coordinator total (build+verify+finalize)':40} {coordinator:8.3f} s "
          f"({coordinator / INPUTS * 1000:.2f} ms per input)")
    print(f"  {'total with the embit signers':40} {ours:8.3f} s")
    print(f"  embedded node's verdicts: {'; '.join(verdicts)}")
    bitcoind = os.environ.get("BITCOIND")
    if not bitcoind:
        print("(set BITCOIND=/path/to/bitcoind for the same-run ratio to Bitcoin Core's wallet)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        core, core_verdicts = core_consolidation(bitcoind, spec, tmp)
    core_total = sum(core.values())
    print("Bitcoin Core wallet, same consolidation, same run:")
    for label, seconds in core.items():
        print(f"  {label:40} {seconds:8.3f} s")
    print(f"  {'total':40} {core_total:8.3f} s")
    print(f"  Core's verdicts: {'; '.join(core_verdicts)}")
    print(f"  ratio, toolkit (coordinator + embit signers) / Core wallet: {ours / core_total:.2f}x "
          f"(below 1: the toolkit is faster)")


if __name__ == "__main__":
    main()
