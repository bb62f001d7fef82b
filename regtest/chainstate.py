"""The chain as Bitcoin Core's kernel keeps it, plus the indexes a node's RPC needs.

libbitcoinkernel validates and connects every block and owns the block files and chainstate.
It does not expose coin lookups, so this module keeps a UTXO map and a transaction index of its own,
changed only by the kernel's block-connected and block-disconnected events.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import pbk

from .serialize import Block, Tx, bits_to_target, sha256d

log = logging.getLogger("regtest.chain")

COINBASE_MATURITY = 100
INDEX_FORMAT = 1


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

    def __init__(self, datadir: Path):
        global _kernel_log
        self.datadir = Path(datadir)
        self.datadir.mkdir(parents=True, exist_ok=True)
        if _kernel_log is None:
            _kernel_log = _KernelLog()
        self._klog = _kernel_log
        self._events: list[tuple[str, bytes, object]] = []
        self._checked: dict[bytes, tuple[object, object]] = {}
        callbacks = pbk.ValidationInterfaceCallbacks(
            block_checked=self._on_checked,
            block_connected=lambda _u, block, entry: self._events.append(("connect", self._raw(block), entry)),
            block_disconnected=lambda _u, block, entry: self._events.append(("disconnect", self._raw(block), entry)),
        )
        self._submitted: tuple[bytes, bytes] | None = None    # (hash, raw) of the block being processed
        self._callbacks = callbacks
        self.kernel = pbk.load_chainman(self.datadir, pbk.ChainType.REGTEST, validation_callbacks=callbacks)
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
        self._load_or_rebuild_indexes()
        self._events.clear()

    # -- kernel events --------------------------------------------------------------------
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
                if out.script_pubkey[:1] != b"\x6a":
                    utxos[(txid, n)] = Coin(out.value, out.script_pubkey, height, coinbase)
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
        return block.txs[loc[1]], loc[0], loc[1]

    # -- persistence of the node's own indexes -------------------------------------------
    @property
    def _index_path(self) -> Path:
        return self.datadir / "indexes" / "utxo-txindex.pickle"

    def _load_or_rebuild_indexes(self) -> None:
        tip_hash = bytes(self.tip.block_hash)
        try:
            with open(self._index_path, "rb") as f:
                saved = pickle.load(f)
            if saved.get("format") == INDEX_FORMAT and saved.get("tip") == tip_hash:
                self.utxos, self.txindex = saved["utxos"], saved["txindex"]
                self.stale_txindex = saved.get("stale_txindex", {})
                self._index_path.unlink()  # a crash from here on must rebuild, not trust a stale file
                return
        except FileNotFoundError:
            pass
        except Exception as e:  # a damaged cache is rebuilt from the kernel's blocks
            log.warning("index cache unreadable (%s); rebuilding from blocks", e)
        self.rebuild_indexes()

    def rebuild_indexes(self) -> None:
        self.utxos, self.txindex = {}, {}
        chain = self.kernel.get_active_chain()
        for height in range(1, chain.height + 1):
            entry = chain._get_by_height(height)
            self._connect(Block.parse(bytes(self.kernel.blocks[entry])), height)

    def save_indexes(self) -> None:
        path = self._index_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            pickle.dump({"format": INDEX_FORMAT, "tip": bytes(self.tip.block_hash),
                         "utxos": self.utxos, "txindex": self.txindex,
                         "stale_txindex": self.stale_txindex}, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)

    def close(self) -> None:
        with self.lock:
            self.save_indexes()
            kernel, self.kernel = self.kernel, None
            del kernel
