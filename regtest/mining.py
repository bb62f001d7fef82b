"""Block assembly: a coinbase, mempool transactions by ancestor fee rate, and proof of work.

Mirrors Bitcoin Core's BlockAssembler: packages (a transaction with its unconfirmed ancestors)
are taken best ancestor fee rate first, up to the block weight limit; the coinbase carries the
BIP34 height and the BIP141 witness commitment.
"""
from __future__ import annotations

import hashlib
import heapq
import time

from .chainstate import COINBASE_MATURITY, Coin
from .mempool import Mempool, Rejected, _check_transaction, _is_final, _verify_scripts
from .script import push_number
from .serialize import COIN, Block, BlockHeader, Tx, TxIn, TxOut, bits_to_target, merkle_root, sha256d

REGTEST_BITS = 0x207FFFFF
BLOCK_VERSION = 0x20000000
MAX_BLOCK_WEIGHT = 4_000_000
COINBASE_RESERVED_WEIGHT = 4_000
HALVING_INTERVAL = 150
WITNESS_COMMITMENT_HEADER = bytes.fromhex("aa21a9ed")


# Regtest's one version-bits deployment (Core's DEPLOYMENT_TESTDUMMY): bit 28, started from the
# first retarget period, never timing out; 108 of 144 signalling blocks lock it in.
TESTDUMMY_BIT, VB_PERIOD, VB_THRESHOLD = 28, 144, 108
VB_TOP_MASK, VB_TOP_BITS = 0xE0000000, 0x20000000


class VersionBits:
    """Core's versionbits state machine for testdummy, cached per period by the hash of the
    period's last block (so a reorganisation recomputes only what changed)."""

    def __init__(self, chain):
        self.chain = chain
        self._after: dict[bytes, str] = {}   # last block of a period -> state of the next period

    def state(self, next_height: int) -> str:
        """DEFINED, STARTED, LOCKED_IN or ACTIVE for a block at next_height on the active chain."""
        period = next_height // VB_PERIOD
        if period == 0:
            return "DEFINED"
        state, missing = "DEFINED", []          # walk back to the last period already known
        for k in range(period, 0, -1):
            end = bytes(self.chain.entry_at(k * VB_PERIOD - 1).block_hash)
            cached = self._after.get(end)
            if cached is not None:
                state = cached
                break
            missing.append((k, end))
        for k, end in reversed(missing):
            state = self._after[end] = self._next(state, k)
        return state

    def _next(self, state: str, period: int) -> str:
        """The state of `period`, given the state of the period before it."""
        if state == "DEFINED":
            return "STARTED"              # start time 0: the first period boundary starts it
        if state == "STARTED":
            first = (period - 1) * VB_PERIOD
            signalling = sum(1 for h in range(first, first + VB_PERIOD)
                             if _signals(self.chain.entry_at(h).block_header.version))
            return "LOCKED_IN" if signalling >= VB_THRESHOLD else "STARTED"
        return "ACTIVE"

    def block_version(self, next_height: int) -> int:
        """Core's ComputeBlockVersion: signal while started or locked in."""
        if self.state(next_height) in ("STARTED", "LOCKED_IN"):
            return BLOCK_VERSION | (1 << TESTDUMMY_BIT)
        return BLOCK_VERSION


def _signals(version: int) -> bool:
    return (version & VB_TOP_MASK) == VB_TOP_BITS and bool(version >> TESTDUMMY_BIT & 1)


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
             fees: int, *, now: int | None = None, max_tries: int = 1_000_000,
             version: int = BLOCK_VERSION) -> Block | None:
    coinbase = make_coinbase(height, block_subsidy(height) + fees, script_pubkey, txs)
    all_txs = [coinbase] + txs
    header = BlockHeader(version, prev_hash, merkle_root([t.txid_bytes for t in all_txs]),
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


def test_block_validity(mempool: Mempool, block: Block, now: int) -> str | None:
    """What Core's TestBlockValidity checks for a block proposal on the tip (proof of work not
    checked), without connecting it: the kernel can only connect. Returns Core's reject reason or
    None. Transactions are checked in order against the chain's coins and the block's own."""
    chain = mempool.chain
    tip, header = chain.tip, block.header
    height, mtp = tip.height + 1, chain.median_time_past(tip)
    if header.bits != REGTEST_BITS:
        return "bad-diffbits"
    if header.time <= mtp:
        return "time-too-old"
    if header.time > now + 2 * 3600:
        return "time-too-new"
    if header.version < 4:
        return f"bad-version(0x{header.version & 0xFFFFFFFF:08x})"
    if not block.txs or not block.txs[0].is_coinbase() or any(t.is_coinbase() for t in block.txs[1:]):
        return "bad-cb-missing" if not block.txs or not block.txs[0].is_coinbase() else "bad-cb-multiple"
    if merkle_root([t.txid_bytes for t in block.txs]) != header.merkle_root:
        return "bad-txnmrklroot"
    if block.weight > MAX_BLOCK_WEIGHT:
        return "bad-blk-weight"
    coinbase = block.txs[0]
    if not coinbase.vin[0].script_sig.startswith(push_number(height)):
        return "bad-cb-height"
    if any(t.has_witness() for t in block.txs[1:]) and not _commitment_ok(block):
        return "bad-witness-merkle-match"
    created: dict[tuple[bytes, int], object] = {}
    fees = 0
    for tx in block.txs[1:]:
        try:
            _check_transaction(tx)
        except Rejected as r:
            return r.reason
        if not _is_final(tx, height, mtp):
            return "bad-txns-nonfinal"
        coins = []
        for txin in tx.vin:
            coin = created.pop(txin.outpoint, None) or chain.utxos.get(txin.outpoint)
            if coin is None:
                return "bad-txns-inputs-missingorspent"
            if coin.coinbase and height - coin.height < COINBASE_MATURITY:
                return "bad-txns-premature-spend-of-coinbase"
            coins.append(coin)
        value_in = sum(c.value for c in coins)
        if value_in < sum(o.value for o in tx.vout):
            return "bad-txns-in-belowout"
        if not mempool._sequence_locks_ok(tx, coins, height):
            return "bad-txns-nonfinal"
        try:
            _verify_scripts(tx, coins)
        except Rejected as r:
            return r.reason
        fees += value_in - sum(o.value for o in tx.vout)
        for n, out in enumerate(tx.vout):
            created[(tx.txid_bytes, n)] = Coin(out.value, out.script_pubkey, height, False)
    if sum(o.value for o in coinbase.vout) > block_subsidy(height) + fees:
        return "bad-cb-amount"
    return None


def _commitment_ok(block: Block) -> bool:
    wtxids = [b"\x00" * 32] + [tx.wtxid_bytes for tx in block.txs[1:]]
    witness = block.txs[0].vin[0].witness
    if len(witness) != 1 or len(witness[0]) != 32:
        return False
    expected = b"\x6a\x24" + WITNESS_COMMITMENT_HEADER + sha256d(merkle_root(wtxids) + witness[0])
    commitments = [o.script_pubkey for o in block.txs[0].vout if o.script_pubkey[:6] == expected[:6]]
    return bool(commitments) and commitments[-1][:38] == expected
