"""The regtest node: the kernel-backed chain, the mempool, and mining, kept consistent under one lock."""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from .chainstate import ChainState
from .mempool import Mempool, Rejected
from .mining import assemble, select_transactions
from .serialize import Block, DecodeError, Tx

log = logging.getLogger("regtest.node")


class Node:
    def __init__(self, datadir: Path):
        self.datadir = Path(datadir)
        self.started = time.time()
        self.chain = ChainState(self.datadir)
        self.lock = self.chain.lock
        self.mempool = Mempool(self.chain)
        self._disconnected: list[Tx] = []
        self.chain.on_connect.append(self._on_connect)
        self.chain.on_disconnect.append(self._on_disconnect)
        self.stopping = threading.Event()
        self.recent_feerates: list[tuple[int, list[float]]] = []  # (height, sat/vB of mined txs)
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
                             script_pubkey, txs, fees, max_tries=max_tries)
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
    def _mempool_path(self) -> Path:
        return self.datadir / "mempool.dat"

    def _load_mempool(self) -> None:
        try:
            lines = self._mempool_path.read_text().split()
        except FileNotFoundError:
            return
        for line in lines:
            try:
                self.mempool.accept(Tx.parse(bytes.fromhex(line)))
            except (Rejected, DecodeError, ValueError):
                pass
        self._mempool_path.unlink()

    def close(self) -> None:
        with self.lock:
            entries = sorted(self.mempool.entries.values(), key=lambda e: e.sequence)
            tmp = self._mempool_path.with_suffix(".tmp")
            tmp.write_text("".join(e.tx.serialize().hex() + "\n" for e in entries))
            os.replace(tmp, self._mempool_path)
            self.chain.close()
