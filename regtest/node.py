"""The regtest node: the kernel-backed chain, the mempool, and mining, kept consistent under one lock."""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from . import durable, mempool_persist
from .chainstate import ChainState
from .clock import Clock, Scheduler
from .mempool import Mempool, Policy, Rejected
from .mining import VersionBits, assemble, select_transactions
from .serialize import Block, DecodeError, Tx

log = logging.getLogger("regtest.node")


FEE_FLUSH_INTERVAL = 3600            # Core flushes its fee estimates hourly
MAX_FEE_ESTIMATES_AGE = 60 * 3600    # and ignores a file older than 60 hours on start
# Core writes mempool.dat only on shutdown and on `savemempool`; this node also writes it every second
# in which the mempool changed, so a kill loses at most the last second's transactions.
MEMPOOL_SAVE_INTERVAL = 1
# The UTXO map and transaction index are snapshotted once a minute when the tip moved, so that a
# start after a kill rolls a recent snapshot forward instead of rebuilding from every block.
INDEX_SAVE_INTERVAL = 60


@dataclass(frozen=True)
class Options:
    """What the start-up options decide (see regtest/options.py)."""
    policy: Policy = field(default_factory=Policy)
    mocktime: int = 0
    txindex: bool = True
    persist_mempool: bool = True
    reindex: bool = False
    reindex_chainstate: bool = False


class Node:
    def __init__(self, datadir: Path, options: Options = Options()):
        self.datadir = Path(datadir)
        self.options = options
        self.clock = Clock(options.mocktime)
        self.started = self.clock.now()
        self.chain = ChainState(self.datadir, reindex=options.reindex, reindex_chainstate=options.reindex_chainstate)
        self.lock = self.chain.lock
        self.mempool = Mempool(self.chain, options.policy, self.clock.now)
        self.versionbits = VersionBits(self.chain)
        self.scheduler = Scheduler()
        self.scheduler.every(FEE_FLUSH_INTERVAL, self.save_fee_estimates)
        self.scheduler.every(INDEX_SAVE_INTERVAL, self.chain.save_indexes)
        if options.persist_mempool:
            self.scheduler.every(MEMPOOL_SAVE_INTERVAL, self.save_mempool_if_changed)
        self._disconnected: list[Tx] = []
        self.chain.on_connect.append(self._on_connect)
        self.chain.on_disconnect.append(self._on_disconnect)
        self.stopping = threading.Event()
        self.recent_feerates: list[tuple[int, list[float]]] = []  # (height, sat/vB of mined txs)
        self._mempool_save_lock = threading.Lock()
        self._mempool_saved = 0             # the mempool's change count when mempool.dat was last written
        self._load_fee_estimates()
        if options.persist_mempool:
            self._load_mempool()

    # -- chain events -> mempool -----------------------------------------------------------
    def _on_connect(self, block: Block, height: int) -> None:
        rates = []
        for tx in block.txs[1:]:
            entry = self.mempool.entries.get(tx.txid_bytes)
            if entry is not None:
                rates.append(entry.fee / entry.vsize)
        self.recent_feerates.append((height, rates))
        del self.recent_feerates[:-1008]
        self.mempool.remove_for_block(block)

    def _on_disconnect(self, block: Block, height: int) -> None:
        self.recent_feerates = [r for r in self.recent_feerates if r[0] < height]
        self._disconnected[:0] = block.txs[1:]

    def submit_block(self, raw: bytes) -> tuple[str, str | None]:
        with self.lock:
            self._disconnected = []
            outcome = self.chain.process_block(raw)
            if self._disconnected:
                confirmed = set(self.chain.txindex)
                resurrect = [tx for tx in self._disconnected if tx.txid_bytes not in confirmed]
                self._disconnected = []
                self.mempool.readd(resurrect)
            return outcome

    # -- transactions -------------------------------------------------------------------------
    def accept(self, tx: Tx, max_fee_rate: int | None = None):
        with self.lock:
            return self.mempool.accept(tx, max_fee_rate=max_fee_rate)

    # -- mining -------------------------------------------------------------------------------
    def mine(self, script_pubkey: bytes, txs: list[Tx] | None = None, *, submit: bool = True,
             max_tries: int = 1_000_000) -> tuple[Block | None, tuple[str, str | None] | None]:
        with self.lock:
            tip = self.chain.tip
            if txs is None:
                txs = select_transactions(self.mempool)
                fees = sum(self.mempool.entries[t.txid_bytes].fee for t in txs)
            else:
                fees = self._fees_of(txs)
            block = assemble(bytes(tip.block_hash), tip.height + 1, self.chain.median_time_past(tip),
                             script_pubkey, txs, fees, now=self.clock.now(), max_tries=max_tries,
                             version=self.versionbits.block_version(tip.height + 1))
            if block is None or not submit:
                return block, None
            return block, self.submit_block(block.serialize())

    def _fees_of(self, txs: list[Tx]) -> int:
        """Fees of explicitly chosen transactions, looking up inputs in the chain and in the list."""
        created = {}
        for tx in txs:
            for n, out in enumerate(tx.vout):
                created[(tx.txid_bytes, n)] = out.value
        total = 0
        for tx in txs:
            value_in = 0
            for txin in tx.vin:
                if txin.outpoint in created:
                    value_in += created[txin.outpoint]
                else:
                    coin = self.chain.utxos.get(txin.outpoint)
                    if coin is None:
                        entry = self.mempool.entries.get(txin.prev_txid)
                        if entry is None:
                            raise Rejected("bad-txns-inputs-missingorspent")
                        coin_value = entry.tx.vout[txin.prev_vout].value
                    else:
                        coin_value = coin.value
                    value_in += coin_value
            total += value_in - sum(o.value for o in tx.vout)
        return total

    # -- persistence ------------------------------------------------------------------------
    @property
    def mempool_path(self) -> Path:
        return self.datadir / "mempool.dat"

    def _load_mempool(self) -> None:
        """Core's LoadMempool: each transaction through acceptance again, with its entry time; one older
        than -mempoolexpiry is not tried. The file stays (it is rewritten, never deleted)."""
        try:
            data = self.mempool_path.read_bytes()
        except FileNotFoundError:
            return
        try:
            saved = mempool_persist.load(data)
        except (DecodeError, ValueError) as e:
            log.info("Failed to deserialize mempool data on file: %s. Continuing anyway.", e)
            return
        cutoff = self.clock.now() - self.options.policy.expiry
        counts = {"succeeded": 0, "failed": 0, "expired": 0}
        with self.lock:
            for tx, entry_time in saved:
                if entry_time <= cutoff:
                    counts["expired"] += 1
                    continue
                try:
                    entry = self.mempool.accept(tx)
                except (Rejected, ValueError):
                    counts["failed"] += 1
                    continue
                entry.time = entry_time       # Core keeps each entry's time
                counts["succeeded"] += 1
            self.mempool.expire()
            self._mempool_saved = self.mempool.changes
        log.info("Imported mempool transactions from file: %(succeeded)d succeeded, %(failed)d failed, "
                 "%(expired)d expired", counts)

    def save_mempool(self) -> Path:
        """Core's DumpMempool, atomically (mempool.dat.new, fsync, rename, fsync of the directory)."""
        with self._mempool_save_lock:
            with self.lock:
                changes = self.mempool.changes
                entries = [(e.tx.serialize(), e.time)
                           for e in sorted(self.mempool.entries.values(), key=lambda e: e.sequence)]
            durable.write_atomic(self.mempool_path, mempool_persist.dump(entries))
            self._mempool_saved = changes
        return self.mempool_path

    def save_mempool_if_changed(self) -> None:
        if self.mempool.changes != self._mempool_saved:
            self.save_mempool()

    @property
    def _fee_estimates_path(self) -> Path:
        return self.datadir / "fee_estimates.json"

    def save_fee_estimates(self) -> None:
        with self.lock:
            state = {"time": self.clock.now(), "tip": self.chain.height, "feerates": list(self.recent_feerates)}
        durable.write_atomic(self._fee_estimates_path, json.dumps(state).encode())

    def _load_fee_estimates(self) -> None:
        try:
            state = json.loads(self._fee_estimates_path.read_text())
        except (FileNotFoundError, ValueError):
            return
        if self.clock.now() - state.get("time", 0) > MAX_FEE_ESTIMATES_AGE:
            log.info("fee estimates are older than 60 hours: not read")
            return
        tip = self.chain.height
        self.recent_feerates = [(h, rates) for h, rates in state.get("feerates", []) if h <= tip]

    def close(self) -> None:
        self.scheduler.stop()
        self.save_fee_estimates()
        if self.options.persist_mempool:
            self.save_mempool()
        self.chain.close()
