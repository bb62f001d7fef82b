"""Keep the ledger in step with the node, block by block.

A new or imported policy is discovered with `scantxoutset` at the tip; from then on every block is
read once, matched against every derived scriptPubKey, and applied in the same database transaction
as its cursor row, so a worker killed mid-sync resumes without counting anything twice. A reorg is
found by comparing block hashes: everything above the fork goes back to unconfirmed, the new branch
is applied, and what is neither re-confirmed nor in the mempool is dropped.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from custody.chain.node_client import btc_to_sats, NodeClient, RPCError

from custody.bitcoin.derive import derive_scripts
from custody.errors import CustodyError
from custody.ledger.leader import LeaderLock
from custody.ledger.models import Address, Block, ChainTransaction, Policy, PolicyTransaction, Utxo
from custody.ledger.registry import ensure_addresses, spec_of

log = logging.getLogger("custody.ledger.sync")
BLOCKS_PER_COMMIT = 25
DISCOVERY_WINDOW = 1_000       # addresses per branch per scantxoutset call when discovering a policy
ACTIVE_STATUSES = ("draft", "active", "retiring")


@dataclass
class SyncReport:
    blocks_applied: int = 0
    blocks_rolled_back: int = 0
    policies_discovered: int = 0
    transactions_seen: int = 0
    tip_height: int | None = None
    notes: list[str] = field(default_factory=list)


class _Index:
    """Every derived scriptPubKey and every unspent coin of the followed policies, in memory."""

    def __init__(self, session: Session):
        self.scripts: dict[bytes, Address] = {}
        self.coins: dict[tuple[str, int], Utxo] = {}
        self.policies = {p.id: p for p in session.scalars(select(Policy).where(Policy.status.in_(ACTIVE_STATUSES)))}
        ids = list(self.policies)
        if ids:
            for address in session.scalars(select(Address).where(Address.policy_id.in_(ids))):
                self.scripts[address.script_pubkey] = address
            for utxo in session.scalars(select(Utxo).where(Utxo.policy_id.in_(ids), Utxo.spent_height.is_(None))):
                self.coins[(utxo.txid, utxo.vout)] = utxo

    def mark_used(self, session: Session, address: Address) -> None:
        if address.used:
            return
        address.used = True
        session.flush()
        for new in ensure_addresses(session, self.policies[address.policy_id]):
            self.scripts[new.script_pubkey] = new


class Syncer:
    def __init__(self, sessions: sessionmaker, client: NodeClient, *, progress=None):
        self.sessions = sessions
        self.client = client
        self.progress = progress          # callable(done, total) for long runs
        self.lock = LeaderLock(sessions.kw["bind"])

    # -- entry points ------------------------------------------------------------------------
    def sync_once(self, *, lock_timeout: float = 30) -> SyncReport:
        """Sync now. While another process leads (coordinator.worker.LeaderLoop: `custody worker`, or the loop
        in `custody serve`) that one keeps the ledger: wait up to `lock_timeout` s for it to reach the
        node's tip instead of syncing beside it."""
        deadline = time.monotonic() + lock_timeout
        tip = None
        while not self.lock.try_acquire():
            tip = self.client.getblockcount() if tip is None else tip
            if self._caught_up(tip):
                return SyncReport(tip_height=tip, notes=["synced by the leading process"])
            if time.monotonic() >= deadline:
                raise CustodyError("another sync worker holds the ledger and has not reached the node's tip; "
                                   "try again")
            time.sleep(0.2)
        try:
            return self._run()
        finally:
            self.lock.release()

    def sync_as_leader(self) -> SyncReport:
        """One sync for the caller that holds the leader lock already (coordinator.worker.LeaderLoop)."""
        return self._run()

    def _caught_up(self, tip: int) -> bool:
        """Has the leader followed the node to `tip` and discovered every new policy?"""
        with self.sessions() as session:
            height = session.scalar(select(func.max(Block.height)))
            pending = session.scalar(select(func.count()).select_from(Policy).where(
                Policy.scanned_height.is_(None), Policy.status.in_(ACTIVE_STATUSES)))
        return height is not None and height >= tip and not pending

    def _run(self) -> SyncReport:
        report = SyncReport()
        for _ in range(10):   # the tip may move while policies are scanned: follow, then scan again
            self._follow_blocks(report)
            if self._discover(report):
                break
        self._sync_mempool(report)
        return report

    # -- blocks ------------------------------------------------------------------------------
    def _follow_blocks(self, report: SyncReport) -> None:
        with self.sessions() as session:
            cursor = session.scalar(select(Block).order_by(Block.height.desc()).limit(1))
            while cursor is not None and self._node_hash(cursor.height) != cursor.hash:
                self._rollback_above(session, cursor.height - 1)
                report.blocks_rolled_back += 1
                session.commit()
                cursor = session.scalar(select(Block).order_by(Block.height.desc()).limit(1))
            tip = self.client.getblockcount()
            report.tip_height = tip
            if cursor is None:
                # nothing to replay before the first policy is discovered at the tip
                header = self.client.getblockheader(self.client.getblockhash(tip))
                session.add(Block(height=tip, hash=header["hash"], time=header["time"]))
                session.commit()
                return
            if cursor.height >= tip:
                return
            index = _Index(session)
            prev_hash, start = cursor.hash, cursor.height + 1
            for height in range(start, tip + 1):
                block = self.client.getblock(self.client.getblockhash(height), 2)
                if block.get("previousblockhash") != prev_hash:
                    session.commit()   # a reorg under our feet: the next run rolls back
                    return
                self._apply_block(session, index, block)
                prev_hash = block["hash"]
                report.blocks_applied += 1
                if (height - start + 1) % BLOCKS_PER_COMMIT == 0:
                    session.commit()
                if self.progress:
                    self.progress(height - start + 1, tip - start + 1)
            session.commit()

    def _node_hash(self, height: int) -> str | None:
        try:
            return self.client.getblockhash(height)
        except RPCError as e:
            if e.code == -8:   # the node's chain is shorter now
                return None
            raise

    def _apply_block(self, session: Session, index: _Index, block: dict) -> None:
        height = block["height"]
        session.add(Block(height=height, hash=block["hash"], time=block["time"]))
        for position, tx in enumerate(block["tx"]):
            self._apply_tx(session, index, tx, height=height, block_hash=block["hash"], coinbase=position == 0)

    def _apply_tx(self, session: Session, index: _Index, tx: dict, *, height: int | None,
                  block_hash: str | None, coinbase: bool = False) -> bool:
        txid = tx["txid"]
        received: dict[int, int] = {}
        spent: dict[int, int] = {}
        spent_coins = []
        if not coinbase:
            for vin in tx["vin"]:
                coin = index.coins.get((vin["txid"], vin["vout"]))
                if coin is not None:
                    spent_coins.append(coin)
        created = []
        for out in tx["vout"]:
            address = index.scripts.get(bytes.fromhex(out["scriptPubKey"]["hex"]))
            if address is not None:
                created.append((out, address))
        if not spent_coins and not created:
            return False
        row = session.scalar(select(ChainTransaction).where(ChainTransaction.txid == txid))
        if row is None:
            row = ChainTransaction(txid=txid)
            session.add(row)
        row.block_height, row.block_hash = height, block_hash
        session.flush()
        for coin in spent_coins:
            coin.spent_txid, coin.spent_height = txid, height
            spent[coin.policy_id] = spent.get(coin.policy_id, 0) + coin.value
            if height is not None:
                index.coins.pop((coin.txid, coin.vout), None)
        for out, address in created:
            key = (txid, out["n"])
            utxo = index.coins.get(key)
            if utxo is None:
                utxo = Utxo(policy_id=address.policy_id, address_id=address.id, txid=txid, vout=out["n"],
                            value=btc_to_sats(out["value"]), coinbase=coinbase)
                session.add(utxo)
                index.coins[key] = utxo
            utxo.height = height
            received[address.policy_id] = received.get(address.policy_id, 0) + utxo.value
            index.mark_used(session, address)
        for policy_id in set(received) | set(spent):
            link = session.get(PolicyTransaction, (policy_id, row.id))
            if link is None:
                session.add(PolicyTransaction(policy_id=policy_id, transaction_id=row.id,
                                              received=received.get(policy_id, 0), spent=spent.get(policy_id, 0)))
        return True

    def _rollback_above(self, session: Session, fork_height: int) -> None:
        """Everything confirmed above the fork becomes unconfirmed again; the mempool pass decides."""
        session.execute(update(Utxo).where(Utxo.height > fork_height).values(height=None))
        session.execute(update(Utxo).where(Utxo.spent_height > fork_height).values(spent_height=None))
        session.execute(update(ChainTransaction).where(ChainTransaction.block_height > fork_height)
                        .values(block_height=None, block_hash=None))
        session.execute(delete(Block).where(Block.height > fork_height))

    # -- discovery ---------------------------------------------------------------------------
    def _discover(self, report: SyncReport) -> bool:
        """scantxoutset for policies never scanned; False if the tip moved under the scan."""
        with self.sessions() as session:
            cursor = session.scalar(select(Block).order_by(Block.height.desc()).limit(1))
            pending = list(session.scalars(select(Policy).where(Policy.scanned_height.is_(None),
                                                                Policy.status.in_(ACTIVE_STATUSES))))
            for policy in pending:
                found = self._scan_policy(policy, cursor.hash)
                if found is None:
                    session.rollback()
                    return False
                last_used = {b: max((i for (br, i) in found.values() if br == b), default=-1) for b in (0, 1)}
                ensure_addresses(session, policy, upto={b: last_used[b] + 1 for b in (0, 1)})
                self._store_scanned(session, list(found))
                policy.scanned_height = cursor.height
                report.policies_discovered += 1
            session.commit()
        return True

    def _scan_policy(self, policy: Policy, tip_hash: str) -> dict | None:
        """Scan the UTXO set in wide windows until a full gap past the last used address is clear.
        Returns {unspent (as a tuple of items): (branch, index)}, or None if the tip moved."""
        spec = spec_of(policy)
        next_start, last_used = {0: 0, 1: 0}, {0: -1, 1: -1}
        found: dict = {}
        while True:
            objects, positions = [], {}
            for branch in (0, 1):
                needed = last_used[branch] + policy.gap_limit
                if next_start[branch] > needed:
                    continue
                end = max(needed, next_start[branch] + DISCOVERY_WINDOW - 1)
                objects.append({"desc": spec.descriptor(branch), "range": [next_start[branch], end]})
                for offset, spk in enumerate(derive_scripts(spec, branch, next_start[branch], end)):
                    positions[spk.hex()] = (branch, next_start[branch] + offset)
                next_start[branch] = end + 1
            if not objects:
                return found
            result = self.client.scantxoutset("start", objects)
            if not result.get("success") or result["bestblock"] != tip_hash:
                return None
            for unspent in result["unspents"]:
                branch, index = positions[unspent["scriptPubKey"]]
                last_used[branch] = max(last_used[branch], index)
                found[tuple(sorted(unspent.items()))] = (branch, index)

    def _store_scanned(self, session: Session, found: list[tuple]) -> None:
        """Bulk-insert the coins a scan found, with their transactions and per-policy totals."""
        if not found:
            return
        unspents = [dict(items) for items in found]
        addresses = {a.script_pubkey.hex(): a for a in session.scalars(select(Address).where(
            Address.script_pubkey.in_([bytes.fromhex(u["scriptPubKey"]) for u in unspents])))}
        known = {(u.txid, u.vout) for u in session.scalars(select(Utxo).where(Utxo.txid.in_({u["txid"] for u in unspents})))}
        unspents = [u for u in unspents if (u["txid"], u["vout"]) not in known]
        if not unspents:
            return
        txids = {u["txid"]: u for u in unspents}
        existing = {t.txid: t for t in session.scalars(select(ChainTransaction).where(ChainTransaction.txid.in_(txids)))}
        new_rows = [{"txid": t, "block_height": u["height"], "block_hash": u.get("blockhash")}
                    for t, u in txids.items() if t not in existing]
        if new_rows:
            session.execute(insert(ChainTransaction), new_rows)
        tx_ids = {t.txid: t.id for t in session.scalars(select(ChainTransaction).where(ChainTransaction.txid.in_(txids)))}
        received: dict[tuple[int, int], int] = {}
        rows = []
        for u in unspents:
            address = addresses[u["scriptPubKey"]]
            value = btc_to_sats(u["amount"])
            rows.append({"policy_id": address.policy_id, "address_id": address.id, "txid": u["txid"], "vout": u["vout"],
                         "value": value, "height": u["height"], "coinbase": u["coinbase"], "frozen": False})
            key = (address.policy_id, tx_ids[u["txid"]])
            received[key] = received.get(key, 0) + value
            address.used = True
        session.execute(insert(Utxo), rows)
        for (policy_id, tx_id), value in received.items():
            link = session.get(PolicyTransaction, (policy_id, tx_id))
            if link is None:
                session.add(PolicyTransaction(policy_id=policy_id, transaction_id=tx_id, received=value, spent=0))
            else:
                link.received += value

    # -- mempool -----------------------------------------------------------------------------
    def _sync_mempool(self, report: SyncReport) -> None:
        with self.sessions() as session:
            mempool = set(self.client.getrawmempool())
            unconfirmed = list(session.scalars(select(ChainTransaction).where(ChainTransaction.block_height.is_(None))))
            for row in unconfirmed:
                if row.txid not in mempool:
                    self._drop_unconfirmed(session, row)
            session.flush()
            known = {row.txid for row in unconfirmed if row.txid in mempool}
            new = sorted(mempool - known)
            if new:
                index = _Index(session)
                txs = [t for t in self.client.batch([("getrawtransaction", [t, 1]) for t in new])
                       if isinstance(t, dict)]
                for tx in _parents_first(txs):
                    if self._apply_tx(session, index, tx, height=None, block_hash=None):
                        report.transactions_seen += 1
            session.commit()

    def _drop_unconfirmed(self, session: Session, row: ChainTransaction) -> None:
        """A transaction that left the mempool unconfirmed (replaced, conflicted, reorged out)."""
        session.execute(delete(Utxo).where(Utxo.txid == row.txid, Utxo.height.is_(None)))
        session.execute(update(Utxo).where(Utxo.spent_txid == row.txid, Utxo.spent_height.is_(None))
                        .values(spent_txid=None))
        session.execute(delete(PolicyTransaction).where(PolicyTransaction.transaction_id == row.id))
        session.delete(row)


def _parents_first(txs: list[dict]) -> list[dict]:
    """Order unconfirmed transactions so that each comes after the ones whose outputs it spends."""
    pending = {tx["txid"]: tx for tx in txs}
    ordered = []
    while pending:
        ready = [tx for tx in pending.values() if not any(v.get("txid") in pending for v in tx["vin"])]
        if not ready:               # cannot happen in a valid mempool; keep everything anyway
            ready = list(pending.values())
        for tx in ready:
            ordered.append(pending.pop(tx["txid"]))
    return ordered
