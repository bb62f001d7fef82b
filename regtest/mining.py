"""Block assembly: a coinbase, mempool transactions by ancestor fee rate, and proof of work.

Mirrors Bitcoin Core's BlockAssembler: packages (a transaction with its unconfirmed ancestors)
are taken best ancestor fee rate first, up to the block weight limit; the coinbase carries the
BIP34 height and the BIP141 witness commitment.
"""
from __future__ import annotations

import hashlib
import heapq
import time

from .mempool import Mempool
from .script import push_number
from .serialize import COIN, Block, BlockHeader, Tx, TxIn, TxOut, bits_to_target, merkle_root, sha256d

REGTEST_BITS = 0x207FFFFF
BLOCK_VERSION = 0x20000000
MAX_BLOCK_WEIGHT = 4_000_000
COINBASE_RESERVED_WEIGHT = 4_000
HALVING_INTERVAL = 150
WITNESS_COMMITMENT_HEADER = bytes.fromhex("aa21a9ed")


def block_subsidy(height: int) -> int:
    halvings = height // HALVING_INTERVAL
    return 0 if halvings >= 64 else (50 * COIN) >> halvings


def select_transactions(mempool: Mempool, max_weight: int = MAX_BLOCK_WEIGHT - COINBASE_RESERVED_WEIGHT) -> list[Tx]:
    """Greedy selection by ancestor package fee rate, as Core's addPackageTxs does."""
    entries = mempool.entries
    ancestors = {t: mempool.ancestors(t) for t in entries}
    chosen: set[bytes] = set()
    order: list[bytes] = []
    weight = 0

    def score(txid: bytes) -> tuple[int, int, set[bytes]]:
        package = {txid} | (ancestors[txid] - chosen)
        return sum(entries[t].fee for t in package), sum(entries[t].vsize for t in package), package

    heap = []
    for t in entries:
        fee, size, package = score(t)
        heapq.heappush(heap, (-fee / size, entries[t].sequence, t, len(package)))
    while heap:
        _, seq, t, n = heapq.heappop(heap)
        if t in chosen:
            continue
        fee, size, package = score(t)
        if len(package) != n:  # some ancestors went in already: re-score and try again later
            heapq.heappush(heap, (-fee / size, seq, t, len(package)))
            continue
        package_weight = sum(entries[p].weight for p in package)
        if weight + package_weight > max_weight:
            continue
        for p in sorted(package, key=lambda p: (len(ancestors[p]), entries[p].sequence)):
            chosen.add(p)
            order.append(p)
        weight += package_weight
    return [entries[t].tx for t in order]


def make_coinbase(height: int, value: int, script_pubkey: bytes, witness_txs: list[Tx]) -> Tx:
    """Coinbase with BIP34 height and, as Core always adds, the witness commitment."""
    wtxids = [b"\x00" * 32] + [tx.wtxid_bytes for tx in witness_txs]
    commitment = sha256d(merkle_root(wtxids) + b"\x00" * 32)
    outputs = [TxOut(value, script_pubkey),
               TxOut(0, b"\x6a\x24" + WITNESS_COMMITMENT_HEADER + commitment)]
    coinbase_in = TxIn(b"\x00" * 32, 0xFFFFFFFF, push_number(height) + b"\x00", 0xFFFFFFFF, [b"\x00" * 32])
    return Tx(2, [coinbase_in], outputs, 0)


def assemble(prev_hash: bytes, height: int, prev_mtp: int, script_pubkey: bytes, txs: list[Tx],
             fees: int, *, now: int | None = None, max_tries: int = 1_000_000) -> Block | None:
    coinbase = make_coinbase(height, block_subsidy(height) + fees, script_pubkey, txs)
    all_txs = [coinbase] + txs
    header = BlockHeader(BLOCK_VERSION, prev_hash, merkle_root([t.txid_bytes for t in all_txs]),
                         max(prev_mtp + 1, now or int(time.time())), REGTEST_BITS, 0)
    if not solve(header, max_tries):
        return None
    return Block(header, all_txs)


def solve(header: BlockHeader, max_tries: int) -> bool:
    """Grind the nonce; on regtest's minimum difficulty this takes a couple of hashes."""
    target = bits_to_target(header.bits)
    prefix = header.serialize()[:76]
    for nonce in range(max_tries):
        h = hashlib.sha256(hashlib.sha256(prefix + nonce.to_bytes(4, "little")).digest()).digest()
        if int.from_bytes(h, "little") <= target:
            header.nonce = nonce
            return True
    return False
