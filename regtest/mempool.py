"""The mempool and its acceptance policy, after Bitcoin Core 29's defaults.

Every input's script is verified by the kernel (libbitcoinkernel's interpreter, with all spent
outputs, as taproot needs); the standardness, fee and replacement rules are Core's policy, with
Core's reject reasons, so that a client sees the same answer it would get from `bitcoind`.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Callable

import pbk
from pbk.script import PrecomputedTransactionData

from . import script as S
from .chainstate import COINBASE_MATURITY, ChainState, Coin
from .serialize import COIN, Tx

MIN_RELAY_FEE = 100            # sat/kvB: Core 29.1+ default -minrelaytxfee
INCREMENTAL_RELAY_FEE = 100    # sat/kvB: Core 29.1+ default -incrementalrelayfee
MAX_STANDARD_TX_WEIGHT = 400_000
MIN_STANDARD_TX_NONWITNESS_SIZE = 65
MAX_ANCESTORS = MAX_DESCENDANTS = 25
MAX_ANCESTOR_VSIZE = MAX_DESCENDANT_VSIZE = 101_000
MAX_REPLACEMENT_CANDIDATES = 100
MAX_MONEY = 21_000_000 * COIN
LOCKTIME_THRESHOLD = 500_000_000
SEQUENCE_FINAL = 0xFFFFFFFF
SEQUENCE_DISABLE_FLAG = 1 << 31
SEQUENCE_TYPE_FLAG = 1 << 22
SEQUENCE_MASK = 0xFFFF
TRUC_VERSION = 3
TRUC_MAX_VSIZE = 10_000
TRUC_CHILD_MAX_VSIZE = 1_000
SCRIPT_FLAGS = pbk.ScriptVerificationFlags.ALL
DEFAULT_MEMPOOL_EXPIRY = 336 * 3600


class Rejected(Exception):
    """A transaction the mempool refuses, with Core's reason and optional debug detail."""

    def __init__(self, reason: str, details: str = "", *, missing_inputs: bool = False,
                 already_in_chain: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.details = details
        self.missing_inputs = missing_inputs
        self.already_in_chain = already_in_chain

    def __str__(self) -> str:  # Core's ValidationState::ToString()
        return f"{self.reason}, {self.details}" if self.details else self.reason


def format_money(sats: int) -> str:
    """Core's FormatMoney: at least two decimals, trailing zeros trimmed."""
    sign = "-" if sats < 0 else ""
    q, r = divmod(abs(sats), COIN)
    s = f"{q}.{r:08d}".rstrip("0")
    whole, frac = s.split(".")
    return f"{sign}{whole}.{frac.ljust(2, '0')}"


def format_feerate(fee: int, vsize: int) -> str:
    """Core's CFeeRate::ToString(): BTC/kvB with 8 decimals."""
    per_kvb = fee * 1000 // vsize if vsize else 0
    return f"{Decimal(per_kvb) / COIN:.8f} BTC/kvB"


def fee_for(feerate_per_kvb: int, vsize: int) -> int:
    """Core's CFeeRate::GetFee, which rounds up."""
    return -(-feerate_per_kvb * vsize // 1000)


@dataclass(frozen=True)
class Policy:
    """The start-up options of Core's that shape mempool policy, with Core 29.2's regtest defaults."""
    require_standard: bool = True            # -acceptnonstdtxn=0
    datacarrier_size: int | None = S.MAX_OP_RETURN_RELAY   # -datacarriersize; None: -datacarrier=0
    min_relay_fee: int = MIN_RELAY_FEE       # -minrelaytxfee, sat/kvB
    incremental_relay_fee: int = INCREMENTAL_RELAY_FEE   # -incrementalrelayfee, sat/kvB
    expiry: int = DEFAULT_MEMPOOL_EXPIRY     # -mempoolexpiry, in seconds


@dataclass(slots=True)
class Entry:
    tx: Tx
    fee: int
    vsize: int
    weight: int
    time: int
    height: int
    spent_coins: list[Coin]
    parents: set[bytes] = field(default_factory=set)
    children: set[bytes] = field(default_factory=set)
    sequence: int = 0


class Mempool:
    def __init__(self, chain: ChainState, policy: Policy = Policy(), clock: Callable[[], int] = lambda: int(time.time())):
        self.chain = chain
        self.policy = policy
        self.clock = clock
        self.entries: dict[bytes, Entry] = {}
        self.spenders: dict[tuple[bytes, int], bytes] = {}   # outpoint -> txid spending it
        self.by_wtxid: dict[bytes, bytes] = {}
        self._sequence = 0
        self.changes = 0        # bumped on every addition and removal: what a periodic mempool.dat save checks

    def copy(self) -> "Mempool":
        """A scratch mempool to try transactions in without touching this one."""
        other = Mempool(self.chain, self.policy, self.clock)
        other.entries = {t: replace(e, parents=set(e.parents), children=set(e.children))
                         for t, e in self.entries.items()}
        other.spenders, other.by_wtxid = dict(self.spenders), dict(self.by_wtxid)
        other._sequence = self._sequence
        return other

    # -- graph helpers ------------------------------------------------------------------
    def ancestors(self, txid: bytes) -> set[bytes]:
        return self._walk(txid, "parents")

    def descendants(self, txid: bytes) -> set[bytes]:
        return self._walk(txid, "children")

    def _walk(self, txid: bytes, direction: str) -> set[bytes]:
        seen, stack = set(), list(getattr(self.entries[txid], direction))
        while stack:
            t = stack.pop()
            if t not in seen:
                seen.add(t)
                stack.extend(getattr(self.entries[t], direction))
        return seen

    def _descendant_sets(self, txids: set[bytes]) -> dict[bytes, set[bytes]]:
        """Descendants of each of `txids`, sharing the work down a chain (one walk, not one each)."""
        memo: dict[bytes, set[bytes]] = {}

        def of(txid: bytes) -> set[bytes]:
            found = memo.get(txid)
            if found is None:
                found = set()
                for child in self.entries[txid].children:
                    found.add(child)
                    found |= of(child)
                memo[txid] = found
            return found
        return {t: of(t) for t in txids}

    def _ancestors_of_parents(self, parents: set[bytes]) -> set[bytes]:
        result = set(parents)
        for p in parents:
            result |= self.ancestors(p)
        return result

    # -- coins view: chain UTXOs plus mempool outputs ------------------------------------
    def coin(self, outpoint: tuple[bytes, int], next_height: int) -> Coin | None:
        entry = self.entries.get(outpoint[0])
        if entry is not None:
            if outpoint[1] < len(entry.tx.vout):
                out = entry.tx.vout[outpoint[1]]
                return Coin(out.value, out.script_pubkey, next_height, False)
            return None
        return self.chain.utxos.get(outpoint)

    # -- acceptance ---------------------------------------------------------------------
    def check(self, tx: Tx, *, max_fee_rate: int | None = None) -> dict:
        """Run every check and return what acceptance would add, without changing anything.
        Raises Rejected with Core's reason."""
        txid, wtxid = tx.txid_bytes, tx.wtxid_bytes
        _check_transaction(tx)
        if tx.is_coinbase():
            raise Rejected("coinbase")
        policy = self.policy
        if policy.require_standard:
            _check_standard(tx, policy.datacarrier_size)
        if len(tx.serialize_no_witness()) < MIN_STANDARD_TX_NONWITNESS_SIZE:
            raise Rejected("tx-size-small")
        tip = self.chain.tip
        next_height = tip.height + 1
        mtp = self.chain.median_time_past(tip)
        if not _is_final(tx, next_height, mtp):
            raise Rejected("non-final", "non-final")
        if wtxid in self.by_wtxid:
            raise Rejected("txn-already-in-mempool")
        if txid in self.entries:
            raise Rejected("txn-same-nonwitness-data-in-mempool")

        conflicts = {self.spenders[i.outpoint] for i in tx.vin if i.outpoint in self.spenders}
        coins: list[Coin] = []
        parents: set[bytes] = set()
        for txin in tx.vin:
            coin = self.coin(txin.outpoint, next_height)
            if coin is None:
                if any((txid, n) in self.chain.utxos for n in range(len(tx.vout))):
                    raise Rejected("txn-already-known", already_in_chain=True)
                raise Rejected("bad-txns-inputs-missingorspent", missing_inputs=True)
            if txin.prev_txid in self.entries:
                parents.add(txin.prev_txid)
            coins.append(coin)
        if parents & conflicts:
            raise Rejected("bad-txns-spends-conflicting-tx",
                           f"{tx.txid} spends conflicting transaction {next(iter(parents & conflicts))[::-1].hex()}")

        if not self._sequence_locks_ok(tx, coins, next_height):
            raise Rejected("non-BIP68-final")

        value_in = 0
        for coin in coins:
            if coin.coinbase and next_height - coin.height < COINBASE_MATURITY:
                raise Rejected("bad-txns-premature-spend-of-coinbase",
                               f"tried to spend coinbase at depth {next_height - coin.height}")
            value_in += coin.value
            if not 0 <= coin.value <= MAX_MONEY or not 0 <= value_in <= MAX_MONEY:
                raise Rejected("bad-txns-inputvalues-outofrange")
        value_out = sum(o.value for o in tx.vout)
        if value_in < value_out:
            raise Rejected("bad-txns-in-belowout",
                           f"value in ({format_money(value_in)}) < value out ({format_money(value_out)})")
        fee = value_in - value_out

        vsize, weight = tx.vsize, tx.weight
        if policy.require_standard:
            _check_inputs_standard(tx, coins)
            _check_ephemeral_dust(tx, fee)
        self._check_truc(tx, vsize, parents)

        min_fee = fee_for(policy.min_relay_fee, vsize)
        if fee < min_fee:
            raise Rejected("min relay fee not met", f"{fee} < {min_fee}")

        ancestors = self._ancestors_of_parents(parents)
        if len(ancestors) + 1 > MAX_ANCESTORS:
            raise Rejected("too-long-mempool-chain", f"too many unconfirmed ancestors [limit: {MAX_ANCESTORS}]")
        if sum(self.entries[a].vsize for a in ancestors) + vsize > MAX_ANCESTOR_VSIZE:
            raise Rejected("too-long-mempool-chain",
                           f"exceeds ancestor size limit [limit: {MAX_ANCESTOR_VSIZE}]")
        descendant_sets = self._descendant_sets(ancestors)
        for a in ancestors:
            if a in conflicts:
                continue
            desc = descendant_sets[a]
            if len(desc) + 2 > MAX_DESCENDANTS:
                raise Rejected("too-long-mempool-chain",
                               f"too many descendants for tx {a[::-1].hex()} [limit: {MAX_DESCENDANTS}]")

        evicted = self._check_replacement(tx, fee, vsize, conflicts, parents) if conflicts else set()

        if max_fee_rate is not None and max_fee_rate > 0 and fee > fee_for(max_fee_rate, vsize):
            raise Rejected("max-fee-exceeded", "max-fee-exceeded")

        _verify_scripts(tx, coins)
        return {"fee": fee, "vsize": vsize, "weight": weight, "coins": coins,
                "parents": parents, "evicted": evicted, "height": tip.height}

    def accept(self, tx: Tx, *, max_fee_rate: int | None = None) -> Entry:
        checked = self.check(tx, max_fee_rate=max_fee_rate)
        for txid in checked["evicted"]:
            self._remove(txid)
        entry = self._add(tx, checked)
        self.expire()
        return entry

    def expire(self) -> int:
        """Drop entries older than -mempoolexpiry, with their descendants (Core's Expire, run after
        every acceptance and reorg). Returns how many were removed."""
        cutoff = self.clock() - self.policy.expiry
        old = [t for t, e in self.entries.items() if e.time < cutoff]
        return sum(len(self._remove(t)) for t in old if t in self.entries)

    def _add(self, tx: Tx, checked: dict) -> Entry:
        txid = tx.txid_bytes
        self._sequence += 1
        self.changes += 1
        entry = Entry(tx, checked["fee"], checked["vsize"], checked["weight"], self.clock(),
                      checked["height"], checked["coins"], set(checked["parents"]), set(), self._sequence)
        self.entries[txid] = entry
        self.by_wtxid[tx.wtxid_bytes] = txid
        for txin in tx.vin:
            self.spenders[txin.outpoint] = txid
        for p in entry.parents:
            if p in self.entries:
                self.entries[p].children.add(txid)
        return entry

    def _remove(self, txid: bytes, *, with_descendants: bool = True) -> list[Entry]:
        doomed = [txid] + (sorted(self.descendants(txid)) if with_descendants else [])
        removed = []
        for t in doomed:
            entry = self.entries.pop(t, None)
            if entry is None:
                continue
            self.changes += 1
            removed.append(entry)
            self.by_wtxid.pop(entry.tx.wtxid_bytes, None)
            for txin in entry.tx.vin:
                if self.spenders.get(txin.outpoint) == t:
                    del self.spenders[txin.outpoint]
            for p in entry.parents:
                if p in self.entries:
                    self.entries[p].children.discard(t)
            for c in entry.children:
                if c in self.entries:
                    self.entries[c].parents.discard(t)
        return removed

    # -- policy pieces that need the mempool -------------------------------------------
    def _sequence_locks_ok(self, tx: Tx, coins: list[Coin], next_height: int) -> bool:
        if tx.version < 2:
            return True
        tip = self.chain.tip
        min_height, min_time = -1, -1
        for txin, coin in zip(tx.vin, coins):
            seq = txin.sequence
            if seq & SEQUENCE_DISABLE_FLAG:
                continue
            if seq & SEQUENCE_TYPE_FLAG:
                base_entry = self.chain.entry_at(max(coin.height - 1, 0)) if coin.height <= tip.height else tip
                base_time = self.chain.median_time_past(base_entry)
                min_time = max(min_time, base_time + ((seq & SEQUENCE_MASK) << 9) - 1)
            else:
                min_height = max(min_height, coin.height + (seq & SEQUENCE_MASK) - 1)
        return min_height < next_height and min_time < self.chain.median_time_past(tip)

    def _check_truc(self, tx: Tx, vsize: int, parents: set[bytes]) -> None:
        """TRUC (version 3) topology rules of Core 28+, for the single-transaction case."""
        parent_versions = {self.entries[p].tx.version for p in parents}
        if tx.version != TRUC_VERSION:
            if TRUC_VERSION in parent_versions:
                raise Rejected("TRUC-violation",
                               f"non-version=3 tx {tx.txid} cannot spend from version=3 tx")
            return
        if vsize > TRUC_MAX_VSIZE:
            raise Rejected("TRUC-violation", f"version=3 tx {tx.txid} is too big: {vsize} > {TRUC_MAX_VSIZE} virtual bytes")
        if parent_versions - {TRUC_VERSION}:
            raise Rejected("TRUC-violation", f"version=3 tx {tx.txid} cannot spend from non-version=3 tx")
        if len(parents) > 1 or (parents and self.entries[next(iter(parents))].parents):
            raise Rejected("TRUC-violation", f"tx {tx.txid} would have too many ancestors")
        if parents:
            if vsize > TRUC_CHILD_MAX_VSIZE:
                raise Rejected("TRUC-violation",
                               f"version=3 child tx {tx.txid} is too big: {vsize} > {TRUC_CHILD_MAX_VSIZE} virtual bytes")
            if self.entries[next(iter(parents))].children:
                raise Rejected("TRUC-violation", "tx would exceed descendant count limit")

    def _check_replacement(self, tx: Tx, fee: int, vsize: int, conflicts: set[bytes],
                           parents: set[bytes]) -> set[bytes]:
        """BIP-125 rules as Core applies them with full-RBF (every transaction replaceable)."""
        hexid = tx.txid
        for c in conflicts:
            old = self.entries[c]
            if fee * old.vsize <= old.fee * vsize:
                raise Rejected("insufficient fee",
                               f"rejecting replacement {hexid}; new feerate {format_feerate(fee, vsize)} "
                               f"<= old feerate {format_feerate(old.fee, old.vsize)}")
        evicted = set()
        for c in conflicts:
            evicted.add(c)
            evicted |= self.descendants(c)
        if len(evicted) > MAX_REPLACEMENT_CANDIDATES:
            raise Rejected("too many potential replacements",
                           f"rejecting replacement {hexid}; too many potential replacements "
                           f"({len(evicted)} > {MAX_REPLACEMENT_CANDIDATES})")
        conflict_parents = set()
        for c in conflicts:
            conflict_parents |= {i.prev_txid for i in self.entries[c].tx.vin}
        for txin in tx.vin:
            if txin.prev_txid in self.entries and txin.prev_txid not in conflict_parents:
                raise Rejected("replacement-adds-unconfirmed",
                               f"replacement {hexid} adds unconfirmed input, idx {tx.vin.index(txin)}")
        old_fees = sum(self.entries[t].fee for t in evicted)
        if fee < old_fees:
            raise Rejected("insufficient fee",
                           f"rejecting replacement {hexid}, less fees than conflicting txs; "
                           f"{format_money(fee)} < {format_money(old_fees)}")
        relay_fee = fee_for(self.policy.incremental_relay_fee, vsize)
        if fee - old_fees < relay_fee:
            raise Rejected("insufficient fee",
                           f"rejecting replacement {hexid}, not enough additional fees to relay; "
                           f"{format_money(fee - old_fees)} < {format_money(relay_fee)}")
        return evicted

    # -- following the chain --------------------------------------------------------------
    def remove_for_block(self, block) -> None:
        """Drop transactions the block confirmed and everything that conflicts with it."""
        for tx in block.txs[1:]:
            txid = tx.txid_bytes
            if txid in self.entries:
                self._remove(txid, with_descendants=False)
            for txin in tx.vin:
                other = self.spenders.get(txin.outpoint)
                if other is not None:
                    self._remove(other)
        for entry in self.entries.values():
            entry.parents &= self.entries.keys()

    def readd(self, txs: list[Tx]) -> None:
        """After a reorg: try the disconnected blocks' transactions first, then what was already
        here, each re-checked against the new tip; whatever is no longer valid is dropped."""
        previous = sorted(self.entries.values(), key=lambda e: e.sequence)
        self.changes += 1
        self.entries.clear()
        self.spenders.clear()
        self.by_wtxid.clear()
        kept_time = {e.tx.txid_bytes: e.time for e in previous}
        for tx in txs + [e.tx for e in previous]:
            try:
                entry = self.accept(tx)
            except Rejected:
                continue
            entry.time = kept_time.get(tx.txid_bytes, entry.time)
        self.expire()

    def info(self) -> dict:
        return {"size": len(self.entries), "bytes": sum(e.vsize for e in self.entries.values()),
                "usage": sum(len(e.tx.serialize()) * 3 for e in self.entries.values()),
                "total_fee": sum(e.fee for e in self.entries.values())}


# -- checks that need only the transaction ---------------------------------------------------
def _check_transaction(tx: Tx) -> None:
    """Core's consensus CheckTransaction."""
    if not tx.vin:
        raise Rejected("bad-txns-vin-empty")
    if not tx.vout:
        raise Rejected("bad-txns-vout-empty")
    if len(tx.serialize_no_witness()) * 4 > 4_000_000:
        raise Rejected("bad-txns-oversize")
    total = 0
    for out in tx.vout:
        if out.value < 0:
            raise Rejected("bad-txns-vout-negative")
        if out.value > MAX_MONEY:
            raise Rejected("bad-txns-vout-toolarge")
        total += out.value
        if total > MAX_MONEY:
            raise Rejected("bad-txns-txouttotal-toolarge")
    seen = set()
    for txin in tx.vin:
        if txin.outpoint in seen:
            raise Rejected("bad-txns-inputs-duplicate")
        seen.add(txin.outpoint)
    if tx.is_coinbase():
        if not 2 <= len(tx.vin[0].script_sig) <= 100:
            raise Rejected("bad-cb-length")
    elif any(txin.is_null() for txin in tx.vin):
        raise Rejected("bad-txns-prevout-null")


def _check_standard(tx: Tx, datacarrier_size: int | None) -> None:
    """Core's IsStandardTx."""
    if not 1 <= tx.version <= TRUC_VERSION:
        raise Rejected("version")
    if tx.weight > MAX_STANDARD_TX_WEIGHT:
        raise Rejected("tx-size")
    for txin in tx.vin:
        if len(txin.script_sig) > S.MAX_STANDARD_SCRIPTSIG_SIZE:
            raise Rejected("scriptsig-size")
        if not S.is_push_only(txin.script_sig):
            raise Rejected("scriptsig-not-pushonly")
    data_outputs = dust = 0
    for out in tx.vout:
        kind = S.classify(out.script_pubkey)
        if kind == "nonstandard":
            raise Rejected("scriptpubkey")
        if kind == "nulldata":
            if datacarrier_size is None or len(out.script_pubkey) > datacarrier_size:
                raise Rejected("scriptpubkey")
            data_outputs += 1
        elif kind == "multisig":
            m, n = S.multisig_counts(out.script_pubkey)
            if n > 3:
                raise Rejected("scriptpubkey")
        if kind != "nulldata" and out.value < S.dust_threshold(out.script_pubkey):
            dust += 1
    if data_outputs > 1:
        raise Rejected("multi-op-return")
    if dust > 1:
        raise Rejected("dust")


def _check_ephemeral_dust(tx: Tx, fee: int) -> None:
    """Core 29 allows one dust output only in a zero-fee transaction (ephemeral dust)."""
    has_dust = any(S.classify(o.script_pubkey) != "nulldata" and o.value < S.dust_threshold(o.script_pubkey)
                   for o in tx.vout)
    if has_dust and fee != 0:
        raise Rejected("dust", "tx with dust output must be 0-fee")


def _check_inputs_standard(tx: Tx, coins: list[Coin]) -> None:
    """Core's AreInputsStandard and IsWitnessStandard, for the cases that matter here."""
    for txin, coin in zip(tx.vin, coins):
        kind = S.classify(coin.script_pubkey)
        if kind in ("nonstandard", "witness_unknown"):
            raise Rejected("bad-txns-nonstandard-inputs", f"input {tx.vin.index(txin)}: script {kind}")
        if kind == "witness_v0_scripthash" and txin.witness:
            wscript = txin.witness[-1]
            if len(wscript) > S.MAX_STANDARD_P2WSH_SCRIPT_SIZE:
                raise Rejected("bad-witness-nonstandard")
            stack = txin.witness[:-1]
            if len(stack) > S.MAX_STANDARD_P2WSH_STACK_ITEMS or \
                    any(len(i) > S.MAX_STANDARD_P2WSH_STACK_ITEM_SIZE for i in stack):
                raise Rejected("bad-witness-nonstandard")
        if kind == "witness_v1_taproot" and txin.witness:
            w = txin.witness
            if len(w) >= 2 and w[-1][:1] == b"\x50":
                raise Rejected("bad-witness-nonstandard")  # annex
            if len(w) >= 2 and w[-1][0] & 0xFE == 0xC0:
                if any(len(i) > S.MAX_STANDARD_TAPSCRIPT_STACK_ITEM_SIZE for i in w[:-2]):
                    raise Rejected("bad-witness-nonstandard")


def _is_final(tx: Tx, height: int, block_time: int) -> bool:
    if tx.locktime == 0:
        return True
    limit = height if tx.locktime < LOCKTIME_THRESHOLD else block_time
    if tx.locktime < limit:
        return True
    return all(i.sequence == SEQUENCE_FINAL for i in tx.vin)


def _verify_scripts(tx: Tx, coins: list[Coin]) -> None:
    """Every input through the kernel's script interpreter, with all spent outputs supplied."""
    ktx = pbk.Transaction(tx.serialize())
    spent = [pbk.TransactionOutput(pbk.ScriptPubkey(c.script_pubkey), c.value) for c in coins]
    pre = PrecomputedTransactionData(ktx, spent)
    for i, coin in enumerate(coins):
        ok = pbk.ScriptPubkey(coin.script_pubkey).verify(coin.value, ktx, pre, i, SCRIPT_FLAGS)
        if not ok:
            txin = tx.vin[i]
            raise Rejected(f"mandatory-script-verify-flag-failed ({_explain_failure(tx, i, coin)})",
                           f"input {i} of {tx.txid} (wtxid {tx.wtxid}), "
                           f"spending {txin.prev_txid[::-1].hex()}:{txin.prev_vout}")


def _explain_failure(tx: Tx, index: int, coin: Coin) -> str:
    """The kernel reports only pass or fail; name the script error Core's interpreter would report
    for the common cases (Core re-runs with consensus flags only and quotes that error)."""
    txin = tx.vin[index]
    kind = S.classify(coin.script_pubkey)
    eval_false = "Script evaluated without error but finished with a false/empty top stack element"
    if kind in ("witness_v0_keyhash", "witness_v0_scripthash", "witness_v1_taproot") and not txin.witness:
        return "Witness program was passed an empty witness"
    if kind == "witness_v0_keyhash":
        if len(txin.witness) != 2:
            return "Witness program hash mismatch"
        if hash160(txin.witness[1]) != coin.script_pubkey[2:]:
            return "Script failed an OP_EQUALVERIFY operation"
        return eval_false
    if kind == "witness_v0_scripthash":
        if hashlib.sha256(txin.witness[-1]).digest() != coin.script_pubkey[2:]:
            return "Witness program hash mismatch"
        return eval_false
    if kind == "witness_v1_taproot":
        return "Invalid Schnorr signature" if len(txin.witness) == 1 else eval_false
    return eval_false


def hash160(data: bytes) -> bytes:
    return hashlib.new("ripemd160", hashlib.sha256(data).digest()).digest()
