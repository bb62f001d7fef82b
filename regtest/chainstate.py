"""The chain as Bitcoin Core's kernel keeps it, plus the indexes a node's RPC needs.

libbitcoinkernel validates and connects every block and owns the block files and chainstate.
It does not expose coin lookups, so this module keeps a UTXO map and a transaction index of its own,
changed only by the kernel's block-connected and block-disconnected events.

Surviving a kill. The kernel writes each block to its block files before `process_block` returns, but
writes its block index and chainstate only when it flushes (periodically, when its cache is full, and
when it is destroyed on a clean stop); its C API offers no flush of its own. So a clean stop leaves a
`clean-shutdown` marker after the kernel's flush, and a start without one re-submits, in file order,
every block the files hold and the index does not (`blockfiles.scan`): the kernel rewrites each at the
position it already had and connects it, and the node is back at the tip it acknowledged. `-reindex`
rebuilds the index and chainstate from the block files instead, as Core's does. The node's own UTXO map
and transaction index are snapshotted (atomically) periodically and on a clean stop, at a tip; at start
the snapshot is used if its tip is on the best chain, rolled forward from there, else rebuilt from blocks.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import pbk

from . import blockfiles, durable, faults
from .serialize import Block, Tx, bits_to_target, sha256d

log = logging.getLogger("regtest.chain")

COINBASE_MATURITY = 100
INDEX_FORMAT = 1
MAX_SCRIPT_SIZE = 10_000     # Core's coins view never holds a longer (unspendable) script


@dataclass(slots=True)
class Coin:
    value: int
    script_pubkey: bytes
    height: int
    coinbase: bool


def block_work(bits: int) -> int:
    target = bits_to_target(bits)
    return (1 << 256) // (target + 1)


class _KernelLog:
    """Collects the kernel's log lines so that a rejected block can be explained with Core's reason."""

    _REASONS = [
        re.compile(r"BlockChecked: block hash=\w+ state=([\w-]+)"),
        re.compile(r"ConnectBlock \w+ failed, ([\w-]+)"),
        re.compile(r"Block validation error: ([\w-]+)"),
        re.compile(r"(?:AcceptBlock|CheckBlock|AcceptBlockHeader) FAILED \(([\w-]+)"),
        re.compile(r"AcceptBlockHeader: ([\w-]+)"),
    ]

    def __init__(self):
        self.lines: list[str] = []
        self.capturing = False
        pbk.logging_set_options(pbk.LoggingOptions(log_timestamps=False))
        self.conn = pbk.LoggingConnection(cb=self._on_line)

    def _on_line(self, msg: str) -> None:
        if self.capturing:
            self.lines.append(msg)
        elif os.environ.get("REGTEST_KERNEL_LOG"):
            log.debug("kernel: %s", msg.rstrip())

    def reason(self) -> str | None:
        for pattern in self._REASONS:
            for line in self.lines:
                m = pattern.search(line)
                if m:
                    return m.group(1)
        return None


_kernel_log: _KernelLog | None = None


class ChainState:
    """Kernel-backed chain with UTXO set and transaction index kept in step by kernel events."""

    def __init__(self, datadir: Path, *, reindex: bool = False, reindex_chainstate: bool = False):
        global _kernel_log
        self.datadir = Path(datadir)
        self.datadir.mkdir(parents=True, exist_ok=True)
        if _kernel_log is None:
            _kernel_log = _KernelLog()
        self._klog = _kernel_log
        self._events: list[tuple[str, bytes, object]] = []
        self._recording = False    # kernel events are kept only while the node follows them
        self._checked: dict[bytes, tuple[object, object]] = {}
        callbacks = pbk.ValidationInterfaceCallbacks(
            block_checked=self._on_checked,
            block_connected=lambda _u, block, entry: self._record("connect", block, entry),
            block_disconnected=lambda _u, block, entry: self._record("disconnect", block, entry),
        )
        self._submitted: tuple[bytes, bytes] | None = None    # (hash, raw) of the block being processed
        self._callbacks = callbacks
        self.lock = threading.RLock()
        self.utxos: dict[tuple[bytes, int], Coin] = {}
        self.txindex: dict[bytes, tuple[bytes, int]] = {}   # txid -> (block hash, position)
        # Transactions of blocks that left the best chain: Core's -txindex keeps them (it is not
        # rewound on a reorg), so getrawtransaction still finds an orphaned coinbase.
        self.stale_txindex: dict[bytes, tuple[bytes, int]] = {}
        self._block_cache: OrderedDict[bytes, Block] = OrderedDict()
        self._mtp: dict[bytes, int] = {}
        self.on_connect = []     # callables(block: Block, height: int)
        self.on_disconnect = []  # callables(block: Block, height: int)
        self._saved_tip: bytes | None = None
        self._save_lock = threading.Lock()
        self.recovered_blocks = 0

        clean_tip = self._take_clean_marker()
        self.kernel = self._open_kernel(wipe_index=reindex, wipe_chainstate=reindex or reindex_chainstate)
        if reindex:
            durable.remove(self._index_path)     # Core's -reindex rebuilds the optional indexes too
            log.info("reindexing: rebuilding the block index and chainstate from the block files")
        # Core's import thread at every start: finishes a reindex (also one a kill interrupted),
        # otherwise only activates the best chain
        self.kernel.import_blocks([])
        replayed: dict[bytes, bytes] = {}
        stale: dict[bytes, tuple[bytes, int]] = {}
        if not reindex and clean_tip != bytes(self.tip.block_hash):
            self.recovered_blocks = self._recover_unindexed_blocks(replayed, stale)
        self._load_or_rebuild_indexes(replayed, stale)
        self._checked.clear()
        self._recording = True

    def _open_kernel(self, *, wipe_index: bool, wipe_chainstate: bool):
        """pbk.load_chainman, with Core's -reindex / -reindex-chainstate wipes when asked."""
        context = pbk.make_context(pbk.ChainType.REGTEST, validation_callbacks=self._callbacks)
        opts = pbk.ChainstateManagerOptions(context, str(self.datadir.absolute()),
                                            str((self.datadir / "blocks").absolute()))
        if wipe_index or wipe_chainstate:
            opts.set_wipe_dbs(wipe_index, wipe_chainstate)
        return pbk.ChainstateManager(opts)

    def _recover_unindexed_blocks(self, replayed: dict[bytes, bytes], stale: dict) -> int:
        """After a start without a clean-shutdown marker: hand the kernel again, in file order, every block
        its files hold and its index does not (it wrote them before acknowledging them, and was killed
        before flushing the index). Returns how many were found."""
        entries = self.kernel.block_tree_entries
        lost: list[tuple[bytes, bytes]] = []
        seen: set[bytes] = set()
        for block_hash, read in blockfiles.scan(self.datadir / "blocks"):
            if block_hash not in seen and pbk.BlockHash(block_hash) not in entries:
                seen.add(block_hash)
                lost.append((block_hash, read()))
        if not lost:
            return 0
        log.info("the node was not stopped cleanly: re-submitting %d blocks from the block files that the "
                 "kernel's index had not flushed (at height %d)", len(lost), self.height)
        self._recording = True
        for block_hash, raw in lost:
            self._submitted = (block_hash, raw)
            try:
                self.kernel.process_block(pbk.Block(raw))
            except Exception as e:      # a torn or invalid record: the kernel said no the first time too
                log.debug("re-submitted block %s refused: %s", block_hash[::-1].hex(), e)
            finally:
                self._submitted = None
            events, self._events = self._events, []
            for kind, raw_event, entry in events:
                if kind == "connect":
                    replayed[bytes(entry.block_hash)] = raw_event
                else:       # a reorg the replay repeats: the left branch's transactions stay findable
                    block = Block.parse(raw_event)
                    stale.update({tx.txid_bytes: (block.header.hash_bytes, pos) for pos, tx in enumerate(block.txs)})
            faults.point("replay:block")
        self._recording = False
        log.info("recovered: height %d, tip %s", self.height, bytes(self.tip.block_hash)[::-1].hex())
        return len(lost)

    # -- kernel events --------------------------------------------------------------------
    def _record(self, kind: str, block, entry) -> None:
        if self._recording:
            self._events.append((kind, self._raw(block), entry))

    def _raw(self, block) -> bytes:
        """The block's bytes: the submitted ones when it is that block (serialising a block back
        out of the kernel costs a callback per chunk)."""
        if self._submitted is not None and bytes(block.block_hash) == self._submitted[0]:
            return self._submitted[1]
        return bytes(block)

    def _on_checked(self, _u, block, state) -> None:
        self._checked[bytes(block.block_hash)] = (state.validation_mode, state.block_validation_result)

    def _apply_events(self) -> None:
        events, self._events = self._events, []
        for kind, raw, entry in events:
            block = Block.parse(raw)
            height = entry.height
            if kind == "connect":
                if height == 0:
                    continue
                self._connect(block, height)
                for fn in self.on_connect:
                    fn(block, height)
            else:
                self._disconnect(block, entry)
                for fn in self.on_disconnect:
                    fn(block, height)

    def _connect(self, block: Block, height: int) -> None:
        block_hash = block.header.hash_bytes
        utxos = self.utxos
        for pos, tx in enumerate(block.txs):
            txid = tx.txid_bytes
            if pos:
                for txin in tx.vin:
                    utxos.pop((txin.prev_txid, txin.prev_vout), None)
            coinbase = pos == 0
            for n, out in enumerate(tx.vout):
                spk = out.script_pubkey
                if spk[:1] != b"\x6a" and len(spk) <= MAX_SCRIPT_SIZE:     # Core's IsUnspendable
                    utxos[(txid, n)] = Coin(out.value, spk, height, coinbase)
            self.txindex[txid] = (block_hash, pos)
            self.stale_txindex.pop(txid, None)
        self._remember(block)

    def _disconnect(self, block: Block, entry) -> None:
        undo = self.kernel.block_spent_outputs[entry]
        for pos in range(len(block.txs) - 1, -1, -1):
            tx = block.txs[pos]
            txid = tx.txid_bytes
            for n in range(len(tx.vout)):
                self.utxos.pop((txid, n), None)
            if self.txindex.get(txid, (None,))[0] == block.header.hash_bytes:
                self.stale_txindex[txid] = self.txindex.pop(txid)
            if pos:
                coins = undo.transactions[pos - 1].coins
                for txin, coin in zip(tx.vin, coins):
                    out = coin.output
                    self.utxos[(txin.prev_txid, txin.prev_vout)] = Coin(
                        out.amount, bytes(out.script_pubkey), coin.confirmation_height, coin.is_coinbase)

    # -- block processing -----------------------------------------------------------------
    def process_block(self, raw: bytes) -> tuple[str, str | None]:
        """Hand a block to the kernel. Returns (outcome, reason): outcome is 'connected', 'stored'
        (valid but not on the best chain), 'duplicate', 'duplicate-invalid' or 'invalid'."""
        with self.lock:
            block_hash = sha256d(raw[:80])
            known = self.entry(block_hash)
            self._submitted = (block_hash, raw)
            self._checked.pop(block_hash, None)
            self._klog.lines = []
            self._klog.capturing = True
            try:
                self.kernel.process_block(pbk.Block(raw))
                error = None
            except pbk.ProcessBlockException as e:
                error = e
            finally:
                self._klog.capturing = False
                self._submitted = None
            faults.point("block:accepted")
            self._apply_events()
            reason = self._klog.reason()
            checked = self._checked.pop(block_hash, None)
            if known is not None:
                if checked is None or checked[0] == pbk.ValidationMode.VALID:
                    if error is None:
                        return "duplicate", None
                return "duplicate-invalid", reason
            if checked is not None and checked[0] != pbk.ValidationMode.VALID:
                return "invalid", reason or "rejected"
            if error is not None:
                return "invalid", reason or "rejected"
            if self.in_active_chain(block_hash):
                return "connected", None
            return "stored", None

    # -- lookups --------------------------------------------------------------------------
    @property
    def tip(self):
        return self.kernel.get_active_chain()._get_by_height(self.height)

    @property
    def height(self) -> int:
        return self.kernel.get_active_chain().height

    def entry_at(self, height: int):
        chain = self.kernel.get_active_chain()
        if not 0 <= height <= chain.height:
            return None
        return chain._get_by_height(height)

    def entry(self, block_hash: bytes):
        entries = self.kernel.block_tree_entries
        key = pbk.BlockHash(block_hash)
        return entries[key] if key in entries else None

    def in_active_chain(self, block_hash: bytes) -> bool:
        entry = self.entry(block_hash)
        return entry is not None and entry in self.kernel.get_active_chain().block_tree_entries

    def block(self, block_hash: bytes) -> Block | None:
        cached = self._block_cache.get(block_hash)
        if cached is not None:
            self._block_cache.move_to_end(block_hash)
            return cached
        entry = self.entry(block_hash)
        if entry is None or entry not in self.kernel.blocks:
            return None
        block = Block.parse(bytes(self.kernel.blocks[entry]))
        self._remember(block)
        return block

    def _remember(self, block: Block) -> None:
        self._block_cache[block.header.hash_bytes] = block
        if len(self._block_cache) > 256:
            self._block_cache.popitem(last=False)

    def undo_coins(self, block_hash: bytes) -> list[list[Coin]] | None:
        """Spent coins per non-coinbase transaction, from the kernel's undo data."""
        entry = self.entry(block_hash)
        if entry is None or entry.height == 0 or entry not in self.kernel.block_spent_outputs:
            return None
        undo = self.kernel.block_spent_outputs[entry]
        return [[Coin(c.output.amount, bytes(c.output.script_pubkey), c.confirmation_height, c.is_coinbase)
                 for c in txu.coins] for txu in undo.transactions]

    def median_time_past(self, entry) -> int:
        """Median of the last 11 block times, cached by block hash (mempool checks ask for the tip's
        on every transaction)."""
        key = bytes(entry.block_hash)
        mtp = self._mtp.get(key)
        if mtp is None:
            if len(self._mtp) > 100_000:
                self._mtp.clear()
            mtp = self._mtp[key] = self._median_time_past(entry)
        return mtp

    def _median_time_past(self, entry) -> int:
        times = []
        while entry is not None and len(times) < 11:
            times.append(int(entry.block_header.timestamp.timestamp()))
            entry = entry.previous if entry.height > 0 else None
        times.sort()
        return times[len(times) // 2]

    def chainwork(self, entry) -> int:
        return (entry.height + 1) * block_work(entry.block_header.bits)

    def get_tx(self, txid: bytes) -> tuple[Tx, bytes, int] | None:
        """(transaction, block hash, position) from the index, best chain first, then stale blocks."""
        loc = self.txindex.get(txid) or self.stale_txindex.get(txid)
        if loc is None:
            return None
        block = self.block(loc[0])
        if block is None:
            return None
        return block.txs[loc[1]], loc[0], loc[1]

    # -- persistence of the node's own indexes -------------------------------------------
    @property
    def _index_path(self) -> Path:
        return self.datadir / "indexes" / "utxo-txindex.pickle"

    @property
    def _clean_path(self) -> Path:
        return self.datadir / "clean-shutdown"

    def _take_clean_marker(self) -> bytes | None:
        """The tip the kernel flushed at the last clean stop, or None; the marker is deleted (durably)
        before anything can change, so a kill from now on is never taken for a clean stop."""
        try:
            tip = bytes.fromhex(json.loads(self._clean_path.read_text())["tip"])[::-1]
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            tip = None
        durable.remove(self._clean_path)
        return tip

    def _read_snapshot(self) -> dict | None:
        try:
            with open(self._index_path, "rb") as f:
                saved = pickle.load(f)
        except FileNotFoundError:
            return None
        except Exception as e:  # unreadable: rebuilt from the kernel's blocks
            log.warning("index snapshot unreadable (%s); rebuilding from blocks", e)
            return None
        if not isinstance(saved, dict) or saved.get("format") != INDEX_FORMAT or \
                not isinstance(saved.get("tip"), bytes) or \
                not all(isinstance(saved.get(k), dict) for k in ("utxos", "txindex", "stale_txindex")):
            return None
        return saved

    def _load_or_rebuild_indexes(self, replayed: dict[bytes, bytes] | None = None,
                                 stale: dict | None = None) -> None:
        """The UTXO map and transaction index at the kernel's tip: the snapshot's when it is at the tip,
        the snapshot rolled forward when its tip is an ancestor, else rebuilt from the blocks. Transactions
        of blocks no longer on the best chain stay findable (Core's txindex is never rewound)."""
        replayed = replayed or {}
        chain = self.kernel.get_active_chain()
        saved = self._read_snapshot()
        utxos, txindex, old_stale, start = {}, {}, {}, 1
        if saved is not None:
            old_stale = dict(saved["stale_txindex"])
            base = self.entry(saved["tip"])
            if base is not None and base in chain.block_tree_entries:
                utxos, txindex, start = saved["utxos"], saved["txindex"], base.height + 1
            else:
                off_chain = {loc[0] for loc in saved["txindex"].values()}
                off_chain = {h for h in off_chain if self._have_block(h) and not self.in_active_chain(h)}
                old_stale.update((t, loc) for t, loc in saved["txindex"].items() if loc[0] in off_chain)
        old_stale.update(stale or {})
        known = {h for h in {loc[0] for loc in old_stale.values()} if self._have_block(h)}
        old_stale = {t: loc for t, loc in old_stale.items() if loc[0] in known}
        self.utxos, self.txindex, self.stale_txindex = utxos, txindex, old_stale
        height = chain.height
        for h in range(start, height + 1):
            entry = chain._get_by_height(h)
            raw = replayed.get(bytes(entry.block_hash))
            self._connect(Block.parse(raw if raw is not None else bytes(self.kernel.blocks[entry])), h)
        if saved is not None and start == height + 1:
            self._saved_tip = saved["tip"]
        elif saved is not None and start > 1:
            log.info("indexes: snapshot at height %d rolled forward to %d", start - 1, height)
        elif height > 0:
            log.info("indexes: rebuilt from %d blocks", height)

    def _have_block(self, block_hash: bytes) -> bool:
        """The kernel knows the block (a lost one, after a power cut, is not kept in the indexes)."""
        return self.entry(block_hash) is not None

    def save_indexes(self, *, force: bool = False) -> bool:
        """Snapshot the UTXO map and transaction index, atomically, if the tip moved since the last one
        (or `force`). The dictionaries are copied under the chain lock and written outside it."""
        with self._save_lock:
            with self.lock:
                if self.kernel is None:
                    return False
                tip = bytes(self.tip.block_hash)
                if tip == self._saved_tip and not force:
                    return False
                state = {"format": INDEX_FORMAT, "tip": tip, "height": self.height, "utxos": dict(self.utxos),
                         "txindex": dict(self.txindex), "stale_txindex": dict(self.stale_txindex)}
            durable.write_atomic(self._index_path, pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
            self._saved_tip = tip
            return True

    def close(self) -> None:
        self.save_indexes()         # before taking the chain lock: a save takes its own lock, then this one
        with self.lock:
            tip, height = bytes(self.tip.block_hash), self.height
            kernel, self.kernel = self.kernel, None
            # btck_chainstate_manager_destroy: ForceFlushStateToDisk (block files, index, chainstate), then free
            kernel.__exit__(None, None, None)
            del kernel
            faults.point("shutdown:flushed")
            durable.write_atomic(self._clean_path, json.dumps({"tip": tip[::-1].hex(), "height": height}).encode())
