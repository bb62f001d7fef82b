"""What the auditor's own node says about the proof's coins, read without changing anything on it.

For each coin: the transaction that created it, fetched from the block the package names (so it was
confirmed in that block, on the best chain, at that height), with its amount, script and whether it is
a coinbase output; whether it is in the node's UTXO set now; and, for a coin that is not, the block
after H that spent it. A coin created at or before H is unspent at H exactly when it is still unspent,
or was spent in a block after H. No `invalidateblock`, no rescans, no wallet: a handful of read-only
calls, sent in batches.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import txparse
from .rpc import Node, is_rpc_error

BATCH = 2000


@dataclass
class ChainCoin:
    outpoint: tuple[str, int]
    found: str | None = None              # why the coin could not be found, or None
    amount: int = 0
    script_pubkey: bytes = b""
    height: int = 0                       # of the block that created it
    coinbase: bool = False
    unspent_at_tip: bool = False
    spent_at: int | None = None           # height of the block that spent it (after H), if found


def _batched(client: Node, calls: list[tuple[str, list]]) -> list:
    out = []
    for start in range(0, len(calls), BATCH):
        out += client.batch(calls[start:start + BATCH])
    return out



def look_up(client: Node, claims: list[tuple[str, int, int]], height: int, tip: int,
            progress=None) -> list[ChainCoin]:
    """`claims` are (txid, vout, claimed creation height). Heights above `tip` are reported, not fetched."""
    coins = [ChainCoin((txid, vout)) for txid, vout, _ in claims]
    heights = sorted({h for _, _, h in claims if 0 <= h <= tip})
    hashes = dict(zip(heights, _batched(client, [("getblockhash", [h]) for h in heights])))
    wanted = {}
    for (txid, _, claimed), coin in zip(claims, coins):
        if claimed not in hashes:
            coin.found = f"the package says it was created at height {claimed}, which the node does not have"
            continue
        wanted.setdefault((txid, claimed), []).append(coin)
    keys = list(wanted)
    replies = _batched(client, [("getrawtransaction", [txid, 0, hashes[h]]) for txid, h in keys])
    for (txid, claimed), reply in zip(keys, replies):
        if is_rpc_error(reply):
            for coin in wanted[(txid, claimed)]:
                coin.found = f"transaction {txid} is not in the best chain's block at height {claimed}"
            continue
        tx = txparse.parse(bytes.fromhex(reply))
        coinbase = len(tx.inputs) == 1 and tx.inputs[0].txid == "00" * 32 and tx.inputs[0].vout == 0xFFFFFFFF
        for coin in wanted[(txid, claimed)]:
            vout = coin.outpoint[1]
            if tx.txid != txid or vout >= len(tx.outputs):
                coin.found = f"transaction {txid} has no output {vout}"
                continue
            coin.amount, coin.script_pubkey = tx.outputs[vout]
            coin.height, coin.coinbase = claimed, coinbase
    if progress:
        progress(len(coins) // 2)
    located = [c for c in coins if c.found is None]
    replies = _batched(client, [("gettxout", [c.outpoint[0], c.outpoint[1], False]) for c in located])
    for coin, reply in zip(located, replies):
        if is_rpc_error(reply):
            raise reply
        coin.unspent_at_tip = reply is not None
    missing = {c.outpoint: c for c in located if not c.unspent_at_tip}
    if missing:
        _find_spends(client, missing, height, tip)
    if progress:
        progress(len(coins))
    return coins


def _find_spends(client: Node, missing: dict, height: int, tip: int) -> None:
    """Scan the blocks after H for the transactions that spent the missing coins (up to the node's tip
    now: a block that arrived since `tip` may be the one that spent a coin)."""
    for h in range(height + 1, max(tip, client.getblockcount()) + 1):
        block = client.getblock(client.getblockhash(h), 2)
        for tx in block["tx"]:
            for vin in tx["vin"]:
                coin = missing.get((vin.get("txid"), vin.get("vout")))
                if coin is not None:
                    coin.spent_at = h
