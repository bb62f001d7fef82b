"""Verifying a proof of reserves over 100,000 coins, against libsecp256k1's raw verification speed.

The chain is made on the embedded node: a 2-of-3 wsh(sortedmulti) policy with 1,000 receive
addresses, paid 100,000 coins by 50 transactions of 2,000 outputs. The proof (one transaction,
100,001 inputs, 200,000 signatures) is signed with the test keys and packaged as `custody reserves`
would; then `audit.verify.verify` checks it as an auditor's `custody-audit verify` does, every input
through libbitcoinkernel on both cores. In the same run, libsecp256k1 (through coincurve) verifies the
same signatures one by one on one core: the physical limit. Printed: the verifier's stages, time per
signature, and the ratio of the verifier's time to that limit on one core and on every core.

    python bench/reserves.py [--coins 100000] [--addresses 1000]
"""
from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import coincurve  # noqa: E402
from embit import bip32  # noqa: E402
from embit.networks import NETWORKS  # noqa: E402
from embit.script import Witness  # noqa: E402
from embit.transaction import SIGHASH  # noqa: E402

from audit import proof_format, verify  # noqa: E402
from custody.bitcoin.derive import derive_scripts  # noqa: E402
from custody.bitcoin.policies import build_policy  # noqa: E402
from custody.chain.node_client import NodeClient, btc_to_sats  # noqa: E402
from regtest.launcher import start_node  # noqa: E402
from regtest.testwallet import TestWallet, Utxo  # noqa: E402
from tests.conftest import hd_keys  # noqa: E402

SEED_BASE = 900
OUTPUTS_PER_TX = 2_000
NONCE = "bench-nonce-0001"
_SIGNING = None          # (unsigned tx, [(amount, witness script, [private keys in script order])]) for workers


def build_chain(rpc: NodeClient, spec, coins: int, addresses: int) -> list[tuple[str, int, int, int]]:
    """Pay the policy `coins` coins over `addresses` receive addresses; returns (txid, vout, amount, index)."""
    wallet, miner = TestWallet("bench funding"), TestWallet("bench miner").address()
    scripts = derive_scripts(spec, 0, 0, addresses - 1)
    batches = [list(range(start, min(start + OUTPUTS_PER_TX, coins))) for start in range(0, coins, OUTPUTS_PER_TX)]
    hashes = rpc.generatetoaddress(len(batches), wallet.address())
    rpc.generatetoaddress(100, miner)
    made = []
    for block_hash, batch in zip(hashes, batches):
        cb = rpc.getblock(block_hash, 2)["tx"][0]
        coin = Utxo(cb["txid"], 0, btc_to_sats(cb["vout"][0]["value"]), wallet.wpkh)
        outputs = [(scripts[n % addresses], 10_000 + n) for n in batch]
        change = coin.value - sum(v for _, v in outputs) - 200_000
        txid = rpc.sendrawtransaction(wallet.sign([coin], outputs + [(wallet.wpkh, change)]), 0)
        made += [(txid, vout, 10_000 + n, n % addresses) for vout, n in enumerate(batch)]
        if len(rpc.getrawmempool()) >= 10:
            rpc.generatetoaddress(1, miner)
    rpc.generatetoaddress(7, miner)
    return made


def _sign_range(bounds: tuple[int, int]) -> list[tuple[list[bytes], list[tuple[bytes, bytes, bytes]]]]:
    tx, inputs = _SIGNING
    out = []
    for i in range(*bounds):
        amount, ws, keys = inputs[i - 1]
        digest = tx.sighash_segwit(i, ws, amount, SIGHASH.ALL)
        sigs = [k.sign(digest, hasher=None) for k in keys]
        out.append(([b""] + [s + b"\x01" for s in sigs] + [ws.data],
                    [(s, digest, k.public_key.format()) for s, k in zip(sigs, keys)]))
    return out


def sign_proof(tx, inputs, workers: int):
    """Two signatures per coin input (the last two keys in script order), on every core."""
    global _SIGNING
    _SIGNING = (tx, inputs)
    n = len(inputs)
    size = -(-n // workers)
    chunks = [(1 + s, 1 + min(s + size, n)) for s in range(0, n, size)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        parts = pool.map(_sign_range, chunks)
    triples = []
    for (start, _), part in zip(chunks, parts):
        for offset, (items, sigs) in enumerate(part):
            tx.vin[start + offset].witness = Witness(items)
            triples += sigs
    return triples


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--coins", type=int, default=int(os.environ.get("BENCH_RESERVE_COINS", "100000")))
    args.add_argument("--addresses", type=int, default=1000)
    args = args.parse_args()
    workers = os.cpu_count() or 1
    keys = hd_keys(3, seed_base=SEED_BASE)
    roots = [bip32.HDKey.from_seed(hashlib.sha256(f"test device {SEED_BASE + i}".encode()).digest(),
                                   version=NETWORKS["regtest"]["xprv"]) for i in range(3)]
    spec = build_policy("wsh-sortedmulti", 2, keys)
    with tempfile.TemporaryDirectory() as tmp:
        node = start_node(Path(tmp) / "node")
        try:
            rpc = NodeClient(node.url, cookie_file=node.cookie_file, timeout=600)
            t = time.perf_counter()
            made = build_chain(rpc, spec, args.coins, args.addresses)
            print(f"chain: {len(made):,} coins in {len({m[0] for m in made})} transactions, "
                  f"{time.perf_counter() - t:.1f} s")
            heights = {txid: rpc.getblockheader(rpc.getrawtransaction(txid, True)["blockhash"])["height"]
                       for txid in {m[0] for m in made}}
            height = rpc.getblockcount() - 6
            t = time.perf_counter()
            package, triples = make_package(rpc, spec, roots, made, heights, height, workers, args.addresses)
            print(f"proof: {len(made):,} inputs, {len(triples):,} signatures, {len(package['transaction']) // 2 / 1e6:.1f} MB, "
                  f"signed in {time.perf_counter() - t:.1f} s on {workers} cores")

            t = time.perf_counter()
            result = verify.verify(package, rpc, nonce=NONCE, audit="bench", workers=workers)
            ours = time.perf_counter() - t
            assert result.verdict == "valid", [(c.name, c.verdict, c.detail) for c in result.checks]

            t = time.perf_counter()
            for sig, digest, pub in triples:
                if not coincurve.PublicKey(pub).verify(sig, digest, hasher=None):
                    raise SystemExit("a signature did not verify")
            raw = time.perf_counter() - t
        finally:
            node.stop()
    per_sig_raw = raw / len(triples)
    limit_one, limit_all = raw, raw / workers
    print("verifier stages: " + ", ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in result.timings.items()))
    print(f"verifier: {ours:.2f} s for {len(triples):,} signatures = {ours / len(triples) * 1e6:.1f} us per signature "
          f"(verdict {result.verdict}, {result.total:,} sat)")
    print(f"libsecp256k1 raw verify (coincurve, one core): {raw:.2f} s = {per_sig_raw * 1e6:.1f} us per signature")
    print(f"ratio to the limit: {ours / limit_one:.2f}x of one core's raw verification, "
          f"{ours / limit_all:.2f}x of {workers} cores' (goal: within 2x)")


def make_package(rpc, spec, roots, made, heights, height, workers, addresses):
    message = proof_format.compose_message("Bench Custodian", "bench", NONCE, rpc.getbestblockhash(), height)
    tx = proof_format.unsigned_proof(message, "bip322", [(bytes.fromhex(t), v, a) for t, v, a, _ in made])
    per_index = {}
    for index in range(addresses):
        derived = spec.embit(0).derive(index)
        ws = derived.witness_script()
        by_pub = {}
        for root in roots:
            child = root.derive(f"m/48h/1h/0h/2h/0/{index}")
            by_pub[child.key.get_public_key().sec()] = coincurve.PrivateKey(child.key.secret)
        script_keys = sorted(by_pub)                   # sortedmulti: the script's key order
        # CHECKMULTISIG matches signatures against keys from the last key back: signed by the last two
        # keys, an input costs two signature checks; by the first two, three.
        per_index[index] = (ws, [by_pub[p] for p in script_keys[1:]])
    inputs = [(amount, per_index[index][0], per_index[index][1]) for _, _, amount, index in made]
    triples = sign_proof(tx, inputs, workers)
    package = {
        "format": proof_format.PACKAGE_FORMAT, "network": "regtest", "kind": "bip322",
        "custodian": "Bench Custodian", "audit": "bench", "nonce": NONCE, "message": message.decode(),
        "height": height, "block_hash": rpc.getblockhash(height),
        "descriptors": [{"policy": "bench", "descriptor": spec.descriptor(), "threshold": 2, "keys": 3,
                         "range": [0, addresses - 1]}],
        "coins": [{"outpoint": f"{t}:{v}", "amount": a, "descriptor": 0, "branch": 0, "index": i,
                   "height": heights[t], "coinbase": False} for t, v, a, i in made],
        "total": sum(a for _, _, a, _ in made), "txid": tx.txid().hex(), "transaction": tx.serialize().hex(),
    }
    return package, triples


if __name__ == "__main__":
    main()
