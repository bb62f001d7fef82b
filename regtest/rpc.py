"""Bitcoin Core 29's RPC methods, with its parameters, defaults, result shapes and errors."""
from __future__ import annotations

import functools
import re
import threading
import time
from decimal import Decimal

from . import coinstats
from . import script as S
from .errors import (RPC_DESERIALIZATION_ERROR, RPC_INVALID_ADDRESS_OR_KEY, RPC_INVALID_PARAMETER,
                     RPC_METHOD_NOT_FOUND, RPC_MISC_ERROR, RPC_TYPE_ERROR, RPC_VERIFY_ALREADY_IN_CHAIN, RPC_VERIFY_ERROR,
                     RPC_VERIFY_REJECTED, RPCError)
from .mempool import INCREMENTAL_RELAY_FEE, MIN_RELAY_FEE, Rejected
from .mining import (MAX_BLOCK_WEIGHT, REGTEST_BITS, TESTDUMMY_BIT, block_subsidy, make_coinbase,
                     select_transactions, test_block_validity)
from .node import Node
from .rpc_args import REQUIRED, amount_to_sats, bind, parse_hash, sats_to_amount, usage
from .serialize import DecodeError, Tx, bits_to_target, ser_compact_size

VERSION = 290200
SUBVERSION = "/Satoshi:29.2.0(custody-regtest)/"
DEFAULT_MAX_FEE_RATE = Decimal("0.10")
MAX_TIP_AGE = 24 * 3600
NOT_FOUND_TX = "No such mempool or blockchain transaction. Use gettransaction for wallet transactions."
NOT_FOUND_TX_WITHOUT_INDEX = ("No such mempool transaction. Use -txindex or provide a block hash to enable "
                              "blockchain transaction queries. Use gettransaction for wallet transactions.")

METHODS: dict[str, tuple] = {}


def method(name: str, *spec: tuple):
    def register(fn):
        METHODS[name] = (fn, list(spec), (fn.__doc__ or "").strip())
        return fn
    return register


def dispatch(node: Node, name: str, params):
    if name not in METHODS:
        raise RPCError(RPC_METHOD_NOT_FOUND, "Method not found")
    fn, spec, _ = METHODS[name]
    return fn(node, *bind(name, spec, params))


# -- shared JSON shapes ---------------------------------------------------------------------
def _hex(h: bytes) -> str:
    return h[::-1].hex()


def difficulty(bits: int) -> float:
    return bits_to_target(0x1D00FFFF) / bits_to_target(bits)


def script_json(spk: bytes, *, with_desc: bool = True) -> dict:
    """Core's scriptPubKey object. Cached per script: encoding the address dominates a batch of
    gettxout calls (an auditor's verifier sends 100,000 of them)."""
    return dict(_script_json(bytes(spk), with_desc))


@functools.lru_cache(maxsize=100_000)
def _script_json(spk: bytes, with_desc: bool) -> dict:
    from . import descriptors as D     # on first use: embit's descriptors cost start-up
    out = {"asm": S.asm(spk)}
    if with_desc:
        out["desc"] = D.infer_descriptor(spk)
    out["hex"] = spk.hex()
    address = S.address_of(spk)
    if address:
        out["address"] = address
    out["type"] = S.classify(spk)
    return out


def tx_json(tx: Tx, *, include_hex: bool = True, fee: int | None = None, prevouts=None) -> dict:
    vin = []
    for i, txin in enumerate(tx.vin):
        if tx.is_coinbase():
            item = {"coinbase": txin.script_sig.hex()}
        else:
            item = {"txid": _hex(txin.prev_txid), "vout": txin.prev_vout,
                    "scriptSig": {"asm": S.asm(txin.script_sig), "hex": txin.script_sig.hex()}}
        if txin.witness:
            item["txinwitness"] = [w.hex() for w in txin.witness]
        if prevouts is not None and not tx.is_coinbase():
            coin = prevouts[i]
            item["prevout"] = {"generated": coin.coinbase, "height": coin.height,
                               "value": sats_to_amount(coin.value), "scriptPubKey": script_json(coin.script_pubkey)}
        item["sequence"] = txin.sequence
        vin.append(item)
    result = {"txid": tx.txid, "hash": tx.wtxid, "version": tx.version, "size": tx.size, "vsize": tx.vsize,
              "weight": tx.weight, "locktime": tx.locktime, "vin": vin,
              "vout": [{"value": sats_to_amount(o.value), "n": n, "scriptPubKey": script_json(o.script_pubkey)}
                       for n, o in enumerate(tx.vout)]}
    if fee is not None:
        result["fee"] = sats_to_amount(fee)
    if include_hex:
        result["hex"] = tx.serialize().hex()
    return result


def _entry_or_error(node: Node, block_hash: bytes, message: str = "Block not found"):
    entry = node.chain.entry(block_hash)
    if entry is None:
        raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, message)
    return entry


def header_json(node: Node, entry) -> dict:
    chain = node.chain
    header = entry.block_header
    raw = bytes(header)
    block_hash = bytes(entry.block_hash)
    block = chain.block(block_hash)
    active = chain.in_active_chain(block_hash)
    tip_height = chain.height
    result = {"hash": _hex(block_hash), "confirmations": tip_height - entry.height + 1 if active else -1,
              "height": entry.height, "version": header.version, "versionHex": f"{header.version & 0xFFFFFFFF:08x}",
              "merkleroot": _hex(raw[36:68]), "time": int(header.timestamp.timestamp()),
              "mediantime": chain.median_time_past(entry), "nonce": header.nonce, "bits": f"{header.bits:08x}",
              "target": f"{bits_to_target(header.bits):064x}", "difficulty": difficulty(header.bits),
              "chainwork": f"{chain.chainwork(entry):064x}", "nTx": len(block.txs) if block else 0}
    if entry.height > 0:
        result["previousblockhash"] = _hex(bytes(entry.previous.block_hash))
    if active and entry.height < tip_height:
        result["nextblockhash"] = _hex(bytes(chain.entry_at(entry.height + 1).block_hash))
    return result


def _parse_tx(hexstring: str, message: str = "TX decode failed") -> Tx:
    try:
        raw = bytes.fromhex(hexstring)
    except ValueError:
        raise RPCError(RPC_DESERIALIZATION_ERROR, message) from None
    for allow_witness in (True, False):
        try:
            tx = Tx.parse(raw, allow_witness=allow_witness)
            if tx.vin or not allow_witness:
                return tx
        except DecodeError:
            continue
    raise RPCError(RPC_DESERIALIZATION_ERROR, message)


def _max_fee_rate(value) -> int:
    """sat/kvB from a BTC/kvB amount, as Core's ParseFeeRate."""
    return amount_to_sats(value)


# -- blockchain -----------------------------------------------------------------------------
@method("getblockcount")
def getblockcount(node):
    """Returns the height of the most-work fully-validated chain."""
    return node.chain.height


@method("getbestblockhash")
def getbestblockhash(node):
    """Returns the hash of the best (tip) block in the most-work fully-validated chain."""
    return _hex(bytes(node.chain.tip.block_hash))


@method("getblockhash", ("height", "int", REQUIRED))
def getblockhash(node, height):
    """Returns hash of block in best-block-chain at height provided."""
    entry = node.chain.entry_at(height)
    if entry is None:
        raise RPCError(RPC_INVALID_PARAMETER, "Block height out of range")
    return _hex(bytes(entry.block_hash))


@method("getblockchaininfo")
def getblockchaininfo(node):
    """Returns an object containing various state info regarding blockchain processing."""
    chain = node.chain
    with node.lock:
        tip = chain.tip
        header = tip.block_header
        tip_time = int(header.timestamp.timestamp())
        size = sum(f.stat().st_size for f in (node.datadir / "blocks").glob("*.dat"))
        return {"chain": "regtest", "blocks": tip.height, "headers": chain.kernel.best_entry.height,
                "bestblockhash": _hex(bytes(tip.block_hash)), "bits": f"{header.bits:08x}",
                "target": f"{bits_to_target(header.bits):064x}", "difficulty": difficulty(header.bits),
                "time": tip_time, "mediantime": chain.median_time_past(tip), "verificationprogress": 1,
                "initialblockdownload": tip_time < node.clock.now() - MAX_TIP_AGE,
                "chainwork": f"{chain.chainwork(tip):064x}", "size_on_disk": size, "pruned": False,
                "warnings": []}


@method("getblockheader", ("blockhash", "str", REQUIRED), ("verbose", "bool", True))
def getblockheader(node, blockhash, verbose):
    """If verbose is false, returns a string that is serialized, hex-encoded data for blockheader 'hash'.
If verbose is true, returns an Object with information about blockheader <hash>."""
    with node.lock:
        entry = _entry_or_error(node, parse_hash(blockhash, "hash"))
        if not verbose:
            return bytes(entry.block_header).hex()
        return header_json(node, entry)


@method("getblock", ("blockhash", "str", REQUIRED), ("verbosity", "int|bool", 1))
def getblock(node, blockhash, verbosity):
    """If verbosity is 0, returns hex-encoded block data; 1: an object with txids; 2: with transaction
details and fees; 3: also each input's prevout."""
    verbosity = int(verbosity)
    with node.lock:
        block_hash = parse_hash(blockhash, "blockhash")
        entry = _entry_or_error(node, block_hash)
        block = node.chain.block(block_hash)
        if block is None:
            raise RPCError(RPC_MISC_ERROR, "Block not available (not fully downloaded)")
        if verbosity <= 0:
            return block.serialize().hex()
        result = header_json(node, entry)
        stripped = 80 + len(ser_compact_size(len(block.txs))) + sum(len(t.serialize_no_witness()) for t in block.txs)
        result.update({"strippedsize": stripped, "size": len(block.serialize()), "weight": block.weight})
        if verbosity == 1:
            result["tx"] = [tx.txid for tx in block.txs]
            return result
        undo = node.chain.undo_coins(block_hash)
        txs = []
        for pos, tx in enumerate(block.txs):
            fee = prevouts = None
            if pos and undo is not None:
                prevouts = undo[pos - 1]
                fee = sum(c.value for c in prevouts) - sum(o.value for o in tx.vout)
            txs.append(tx_json(tx, fee=fee, prevouts=prevouts if verbosity >= 3 else None))
        result["tx"] = txs
        return result


@method("getblockstats", ("hash_or_height", "int|str", REQUIRED), ("stats", "array", None))
def getblockstats(node, hash_or_height, stats):
    """Compute per block statistics for a given window. All amounts are in satoshis."""
    with node.lock:
        if isinstance(hash_or_height, int):
            if hash_or_height < 0 or hash_or_height > node.chain.height:
                raise RPCError(RPC_INVALID_PARAMETER,
                               f"Target block height {hash_or_height} after current tip {node.chain.height}"
                               if hash_or_height > 0 else f"Target block height {hash_or_height} is negative")
            entry = node.chain.entry_at(hash_or_height)
        else:
            entry = _entry_or_error(node, parse_hash(hash_or_height, "hash_or_height"))
        block_hash = bytes(entry.block_hash)
        block = node.chain.block(block_hash)
        undo = node.chain.undo_coins(block_hash) or []
        result = _block_stats(node, entry, block, undo)
    if stats:
        unknown = [s for s in stats if s not in result]
        if unknown:
            raise RPCError(RPC_INVALID_PARAMETER, f"Invalid selected statistic '{unknown[0]}'")
        return {k: v for k, v in result.items() if k in stats}
    return result


def _utxo_size(spk: bytes) -> int:
    return 41 + 8 + len(ser_compact_size(len(spk))) + len(spk)  # PER_UTXO_OVERHEAD + serialized output


def _block_stats(node, entry, block, undo) -> dict:
    fees, feerates, sizes = [], [], []
    ins = outs = total_out = sw_txs = sw_size = sw_weight = 0
    utxo_inc = utxo_size_inc = utxo_inc_actual = utxo_size_inc_actual = 0
    total_size = total_weight = 0
    for pos, tx in enumerate(block.txs):
        outs += len(tx.vout)
        for out in tx.vout:
            utxo_inc += 1
            utxo_size_inc += _utxo_size(out.script_pubkey)
            if not S.is_unspendable(out.script_pubkey):
                utxo_inc_actual += 1
                utxo_size_inc_actual += _utxo_size(out.script_pubkey)
        if pos == 0:
            continue
        total_out += sum(o.value for o in tx.vout)
        ins += len(tx.vin)
        size, weight = tx.size, tx.weight
        total_size += size
        total_weight += weight
        sizes.append(size)
        if tx.has_witness():
            sw_txs += 1
            sw_size += size
            sw_weight += weight
        coins = undo[pos - 1] if pos - 1 < len(undo) else []
        for coin in coins:
            utxo_inc -= 1
            utxo_size_inc -= _utxo_size(coin.script_pubkey)
            utxo_inc_actual -= 1
            utxo_size_inc_actual -= _utxo_size(coin.script_pubkey)
        fee = sum(c.value for c in coins) - sum(o.value for o in tx.vout)
        fees.append(fee)
        feerates.append((fee * 4 // weight if weight else 0, weight))  # sat/vB, weighted by weight
    n = len(fees)
    header = entry.block_header
    subsidy = block_subsidy(entry.height)
    return {
        "avgfee": sum(fees) // n if n else 0,
        "avgfeerate": sum(fees) * 4 // total_weight if total_weight else 0,
        "avgtxsize": total_size // n if n else 0,
        "blockhash": _hex(bytes(entry.block_hash)),
        "feerate_percentiles": _feerate_percentiles(feerates, total_weight),
        "height": entry.height,
        "ins": ins,
        "maxfee": max(fees, default=0),
        "maxfeerate": max((r for r, _ in feerates), default=0),
        "maxtxsize": max(sizes, default=0),
        "medianfee": _median(fees),
        "mediantime": node.chain.median_time_past(entry),
        "mediantxsize": _median(sizes),
        "minfee": min(fees, default=0),
        "minfeerate": min((r for r, _ in feerates), default=0),
        "mintxsize": min(sizes, default=0),
        "outs": outs,
        "subsidy": subsidy,
        "swtotal_size": sw_size,
        "swtotal_weight": sw_weight,
        "swtxs": sw_txs,
        "time": int(header.timestamp.timestamp()),
        "total_out": total_out,
        "total_size": total_size,
        "total_weight": total_weight,
        "totalfee": sum(fees),
        "txs": len(block.txs),
        "utxo_increase": utxo_inc,
        "utxo_increase_actual": utxo_inc_actual,
        "utxo_size_inc": utxo_size_inc,
        "utxo_size_inc_actual": utxo_size_inc_actual,
    }


def _median(values: list[int]) -> int:
    if not values:
        return 0
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) // 2


def _feerate_percentiles(rates: list[tuple[int, int]], total_weight: int) -> list[int]:
    """Core's CalculatePercentilesByWeight: the 10/25/50/75/90th percentiles weighted by weight."""
    if not rates:
        return [0, 0, 0, 0, 0]
    rates = sorted(rates)
    bounds = [total_weight / 10, total_weight / 4, total_weight / 2, total_weight * 3 / 4, total_weight * 9 / 10]
    result, cumulative, i = [0] * 5, 0, 0
    for rate, weight in rates:
        cumulative += weight
        while i < 5 and cumulative >= bounds[i]:
            result[i] = rate
            i += 1
    for j in range(i, 5):
        result[j] = rates[-1][0]
    return result


# -- transactions -------------------------------------------------------------------------------
@method("getrawtransaction", ("txid", "str", REQUIRED), ("verbosity", "int|bool", 0), ("blockhash", "str", None))
def getrawtransaction(node, txid, verbosity, blockhash):
    """Return the raw transaction data (hex), or with verbosity 1 an object, 2 with fee and prevouts."""
    verbosity = int(verbosity)
    txid_b = parse_hash(txid, "parameter 1")
    with node.lock:
        chain = node.chain
        found_block = None
        if blockhash is not None:
            bh = parse_hash(blockhash, "parameter 3")
            if chain.entry(bh) is None:
                raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, "Block hash not found")
            block = chain.block(bh)
            matches = [(pos, t) for pos, t in enumerate(block.txs) if t.txid_bytes == txid_b]
            if not matches:
                raise RPCError(RPC_INVALID_ADDRESS_OR_KEY,
                               "No such transaction found in the provided block. Use gettransaction for wallet transactions.")
            tx, found_block = matches[0][1], (bh, matches[0][0])
        else:
            entry = node.mempool.entries.get(txid_b)
            if entry is not None:
                tx = entry.tx
            else:
                if chain.height >= 0 and txid_b == chain.block(bytes(chain.entry_at(0).block_hash)).txs[0].txid_bytes:
                    raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, "The genesis block coinbase is not considered an "
                                   "ordinary transaction and cannot be retrieved")
                loc = chain.get_tx(txid_b) if node.options.txindex else None
                if loc is None:
                    raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, NOT_FOUND_TX if node.options.txindex
                                   else NOT_FOUND_TX_WITHOUT_INDEX)
                tx, bh, pos = loc
                found_block = (bh, pos)
        if verbosity <= 0:
            return tx.serialize().hex()
        fee = prevouts = None
        if verbosity >= 2 and found_block is not None and found_block[1] > 0:
            undo = chain.undo_coins(found_block[0])
            if undo is not None:
                prevouts = undo[found_block[1] - 1]
                fee = sum(c.value for c in prevouts) - sum(o.value for o in tx.vout)
        result = tx_json(tx, fee=fee, prevouts=prevouts)
        if found_block is not None:
            bh = found_block[0]
            result["blockhash"] = _hex(bh)
            entry = chain.entry(bh)
            if chain.in_active_chain(bh):
                result["confirmations"] = chain.height - entry.height + 1
                result["time"] = result["blocktime"] = int(entry.block_header.timestamp.timestamp())
            else:
                result["confirmations"] = 0
            result["in_active_chain"] = chain.in_active_chain(bh)
            if blockhash is None:
                del result["in_active_chain"]
        return result


@method("decoderawtransaction", ("hexstring", "str", REQUIRED), ("iswitness", "bool", None))
def decoderawtransaction(node, hexstring, iswitness):
    """Return a JSON object representing the serialized, hex-encoded transaction."""
    if iswitness is None:
        tx = _parse_tx(hexstring)
    else:
        try:
            tx = Tx.parse(bytes.fromhex(hexstring), allow_witness=iswitness)
        except (ValueError, DecodeError):
            raise RPCError(RPC_DESERIALIZATION_ERROR, "TX decode failed") from None
    return tx_json(tx, include_hex=False)


@method("sendrawtransaction", ("hexstring", "str", REQUIRED), ("maxfeerate", "amount", DEFAULT_MAX_FEE_RATE),
        ("maxburnamount", "amount", Decimal(0)))
def sendrawtransaction(node, hexstring, maxfeerate, maxburnamount):
    """Submit a raw transaction (serialized, hex-encoded) to the local node's mempool."""
    tx = _parse_tx(hexstring, "TX decode failed. Make sure the tx has at least one input.")
    max_burn = amount_to_sats(maxburnamount)
    for out in tx.vout:
        if (S.is_unspendable(out.script_pubkey)) and out.value > max_burn:
            raise RPCError(RPC_VERIFY_ERROR, "Unspendable output exceeds maximum configured by user (maxburnamount)")
    max_rate = _max_fee_rate(maxfeerate)
    with node.lock:
        if tx.wtxid_bytes in node.mempool.by_wtxid:
            return tx.txid
        if any((tx.txid_bytes, n) in node.chain.utxos for n in range(len(tx.vout))):
            raise RPCError(RPC_VERIFY_ALREADY_IN_CHAIN, "Transaction outputs already in utxo set")
        try:
            node.accept(tx, max_fee_rate=max_rate)
        except Rejected as r:
            if r.reason == "max-fee-exceeded":
                raise RPCError(RPC_VERIFY_ERROR,
                               "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)") from None
            if r.missing_inputs:
                raise RPCError(RPC_VERIFY_ERROR, "bad-txns-inputs-missingorspent") from None
            if r.already_in_chain:
                raise RPCError(RPC_VERIFY_ALREADY_IN_CHAIN, "Transaction outputs already in utxo set") from None
            raise RPCError(RPC_VERIFY_REJECTED, str(r)) from None
    return tx.txid


@method("testmempoolaccept", ("rawtxs", "array", REQUIRED), ("maxfeerate", "amount", DEFAULT_MAX_FEE_RATE))
def testmempoolaccept(node, rawtxs, maxfeerate):
    """Returns result of mempool acceptance tests indicating if raw transactions would be accepted."""
    if not 1 <= len(rawtxs) <= 25:
        raise RPCError(RPC_INVALID_PARAMETER, "Array must contain between 1 and 25 transactions.")
    txs = []
    for raw in rawtxs:
        if not isinstance(raw, str):
            raise RPCError(-3, "JSON value of type " + type(raw).__name__ + " is not of expected type string")
        txs.append(_parse_tx(raw, f"TX decode failed: {raw} Make sure the tx has at least one input."))
    max_rate = _max_fee_rate(maxfeerate)
    results = []
    with node.lock:
        if len(txs) > 1:
            return _test_package(node, txs, max_rate)
        tx = txs[0]
        item = {"txid": tx.txid, "wtxid": tx.wtxid}
        try:
            checked = node.mempool.check(tx, max_fee_rate=max_rate)
        except Rejected as r:
            item.update(_rejection(r))
        else:
            item.update({"allowed": True, "vsize": checked["vsize"],
                         "fees": {"base": sats_to_amount(checked["fee"]),
                                  "effective-feerate": sats_to_amount(checked["fee"] * 1000 // checked["vsize"]),
                                  "effective-includes": [tx.wtxid]}})
        results.append(item)
    return results


def _rejection(r: Rejected) -> dict:
    """Core's testmempoolaccept answer for a refusal: missing inputs get a reason and no details."""
    if r.missing_inputs:
        return {"allowed": False, "reject-reason": "missing-inputs"}
    return {"allowed": False, "reject-reason": r.reason, "reject-details": str(r)}


def _test_package(node, txs, max_rate):
    """Core tests a package as a unit; this node checks each in order against a scratch copy."""
    scratch = node.mempool.copy()
    results, failed = [], False
    for tx in txs:
        item = {"txid": tx.txid, "wtxid": tx.wtxid}
        if failed:
            item["package-error"] = "package-not-validated"
            results.append(item)
            continue
        try:
            entry = scratch.accept(tx, max_fee_rate=max_rate)
            item.update({"allowed": True, "vsize": entry.vsize,
                         "fees": {"base": sats_to_amount(entry.fee),
                                  "effective-feerate": sats_to_amount(entry.fee * 1000 // entry.vsize),
                                  "effective-includes": [tx.wtxid]}})
        except Rejected as r:
            failed = True
            item.update(_rejection(r))
        results.append(item)
    return results


# -- mempool -----------------------------------------------------------------------------------
def mempool_entry_json(node, txid: bytes) -> dict:
    mp = node.mempool
    e = mp.entries[txid]
    anc, desc = mp.ancestors(txid), mp.descendants(txid)
    return {"vsize": e.vsize, "weight": e.weight, "time": e.time, "height": e.height,
            "descendantcount": len(desc) + 1, "descendantsize": e.vsize + sum(mp.entries[d].vsize for d in desc),
            "ancestorcount": len(anc) + 1, "ancestorsize": e.vsize + sum(mp.entries[a].vsize for a in anc),
            "wtxid": e.tx.wtxid,
            "fees": {"base": sats_to_amount(e.fee), "modified": sats_to_amount(e.fee),
                     "ancestor": sats_to_amount(e.fee + sum(mp.entries[a].fee for a in anc)),
                     "descendant": sats_to_amount(e.fee + sum(mp.entries[d].fee for d in desc))},
            "depends": sorted(_hex(p) for p in e.parents),
            "spentby": sorted(_hex(c) for c in e.children),
            "bip125-replaceable": True, "unbroadcast": False}


@method("getrawmempool", ("verbose", "bool", False), ("mempool_sequence", "bool", False))
def getrawmempool(node, verbose, mempool_sequence):
    """Returns all transaction ids in memory pool as a json array of string transaction ids."""
    if verbose and mempool_sequence:
        raise RPCError(RPC_INVALID_PARAMETER,
                       "Verbose results cannot contain mempool sequence values. (Ignoring other parameters)")
    with node.lock:
        order = sorted(node.mempool.entries.values(), key=lambda e: e.sequence)
        if verbose:
            return {e.tx.txid: mempool_entry_json(node, e.tx.txid_bytes) for e in order}
        txids = [e.tx.txid for e in order]
        if mempool_sequence:
            return {"txids": txids, "mempool_sequence": node.mempool._sequence}
        return txids


@method("getmempoolentry", ("txid", "str", REQUIRED))
def getmempoolentry(node, txid):
    """Returns mempool data for given transaction."""
    t = parse_hash(txid, "txid")
    with node.lock:
        if t not in node.mempool.entries:
            raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, "Transaction not in mempool")
        return mempool_entry_json(node, t)


@method("getmempoolancestors", ("txid", "str", REQUIRED), ("verbose", "bool", False))
def getmempoolancestors(node, txid, verbose):
    """If txid is in the mempool, returns all in-mempool ancestors."""
    return _relatives(node, txid, verbose, node.mempool.ancestors)


@method("getmempooldescendants", ("txid", "str", REQUIRED), ("verbose", "bool", False))
def getmempooldescendants(node, txid, verbose):
    """If txid is in the mempool, returns all in-mempool descendants."""
    return _relatives(node, txid, verbose, node.mempool.descendants)


def _relatives(node, txid, verbose, relation):
    t = parse_hash(txid, "txid")
    with node.lock:
        if t not in node.mempool.entries:
            raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, "Transaction not in mempool")
        found = relation(t)
        if verbose:
            return {_hex(r): mempool_entry_json(node, r) for r in found}
        return [_hex(r) for r in found]


@method("getmempoolinfo")
def getmempoolinfo(node):
    """Returns details on the active state of the TX memory pool."""
    with node.lock:
        info = node.mempool.info()
    return {"loaded": True, "size": info["size"], "bytes": info["bytes"], "usage": info["usage"],
            "total_fee": sats_to_amount(info["total_fee"]), "maxmempool": 300_000_000,
            "mempoolminfee": sats_to_amount(MIN_RELAY_FEE), "minrelaytxfee": sats_to_amount(MIN_RELAY_FEE),
            "incrementalrelayfee": sats_to_amount(INCREMENTAL_RELAY_FEE), "unbroadcastcount": 0, "fullrbf": True}


@method("savemempool")
def savemempool(node):
    """Dumps the mempool to disk. It will fail until the previous dump is fully loaded."""
    try:
        path = node.save_mempool()
    except OSError:
        raise RPCError(RPC_MISC_ERROR, "Unable to dump mempool to disk") from None
    return {"filename": str(path.absolute())}


@method("gettxoutsetinfo", ("hash_type", "str", "hash_serialized_3"), ("hash_or_height", "int|str", None),
        ("use_index", "bool", True))
def gettxoutsetinfo(node, hash_type, hash_or_height, use_index):
    """Returns statistics about the unspent transaction output set."""
    if hash_type not in coinstats.HASH_TYPES:
        raise RPCError(RPC_INVALID_PARAMETER, f"'{hash_type}' is not a valid hash_type")
    if hash_or_height is not None:      # only Core's -coinstatsindex keeps earlier blocks' statistics
        raise RPCError(RPC_INVALID_PARAMETER, "Querying specific block heights requires coinstatsindex")
    with node.lock:
        tip = node.chain.tip
        utxos = dict(node.chain.utxos)
    stats = coinstats.utxo_stats(utxos, hash_type)
    result = {"height": tip.height, "bestblock": _hex(bytes(tip.block_hash)), "txouts": stats["txouts"],
              "bogosize": stats["bogosize"]}
    if hash_type != "none":
        result[hash_type] = _hex(stats["hash"])
    chainstate_dir = node.datadir / "chainstate"
    result.update({"total_amount": sats_to_amount(stats["total_amount"]), "transactions": stats["transactions"],
                   "disk_size": sum(f.stat().st_size for f in chainstate_dir.glob("*") if f.is_file())})
    return result


@method("gettxout", ("txid", "str", REQUIRED), ("n", "int", REQUIRED), ("include_mempool", "bool", True))
def gettxout(node, txid, n, include_mempool):
    """Returns details about an unspent transaction output."""
    t = parse_hash(txid, "txid")
    outpoint = (t, n)
    with node.lock:
        chain, mp = node.chain, node.mempool
        if include_mempool:
            if outpoint in mp.spenders:
                return None
            entry = mp.entries.get(t)
            if entry is not None:
                if not 0 <= n < len(entry.tx.vout):
                    return None
                out = entry.tx.vout[n]
                return {"bestblock": _hex(bytes(chain.tip.block_hash)), "confirmations": 0,
                        "value": sats_to_amount(out.value), "scriptPubKey": script_json(out.script_pubkey),
                        "coinbase": False}
        coin = chain.utxos.get(outpoint)
        if coin is None:
            return None
        return {"bestblock": _hex(bytes(chain.tip.block_hash)), "confirmations": chain.height - coin.height + 1,
                "value": sats_to_amount(coin.value), "scriptPubKey": script_json(coin.script_pubkey),
                "coinbase": coin.coinbase}


# -- scantxoutset -----------------------------------------------------------------------------
class _Scan:
    lock = threading.Lock()
    progress: int | None = None
    abort = False


@method("scantxoutset", ("action", "str", REQUIRED), ("scanobjects", "array", None))
def scantxoutset(node, action, scanobjects):
    """Scans the unspent transaction output set for entries that match certain output descriptors."""
    from . import descriptors as D     # on first use: embit's descriptors cost start-up
    if action == "status":
        return None if _Scan.progress is None else {"progress": _Scan.progress}
    if action == "abort":
        if _Scan.progress is None:
            return False
        _Scan.abort = True
        return True
    if action != "start":
        raise RPCError(RPC_INVALID_PARAMETER, "Invalid action '%s'" % action)
    if scanobjects is None:
        raise RPCError(RPC_MISC_ERROR, "scanobjects argument is required for the start action")
    if not _Scan.lock.acquire(blocking=False):
        raise RPCError(RPC_INVALID_PARAMETER, 'Scan already in progress, use action "abort" or "status"')
    try:
        _Scan.progress, _Scan.abort = 0, False
        try:
            objects = D.parse_scan_objects(scanobjects)
            wanted: dict[bytes, str] = {}
            for obj in objects:
                wanted.update(D.expand(obj))
        except D.DescriptorError as e:
            raise RPCError(e.code, str(e)) from None
        with node.lock:
            chain = node.chain
            height, best = chain.height, bytes(chain.tip.block_hash)
            items = list(chain.utxos.items())
        unspents, total, described = [], 0, {}
        count = len(items)
        for i, (outpoint, coin) in enumerate(items):
            if i % 8192 == 0:
                _Scan.progress = i * 100 // max(count, 1)
                if _Scan.abort:
                    return {"success": False, "txouts": i, "height": height, "bestblock": _hex(best),
                            "unspents": [], "total_amount": sats_to_amount(0)}
            match = wanted.get(coin.script_pubkey)
            if match is None:
                continue
            desc = described.get(coin.script_pubkey)
            if desc is None:
                desc = described[coin.script_pubkey] = D.describe(match)
            total += coin.value
            with node.lock:
                block_hash = bytes(chain.entry_at(coin.height).block_hash)
            unspents.append({"txid": _hex(outpoint[0]), "vout": outpoint[1], "scriptPubKey": coin.script_pubkey.hex(),
                             "desc": desc, "amount": sats_to_amount(coin.value), "coinbase": coin.coinbase,
                             "height": coin.height, "blockhash": _hex(block_hash),
                             "confirmations": height - coin.height + 1})
        return {"success": True, "txouts": count, "height": height, "bestblock": _hex(best),
                "unspents": unspents, "total_amount": sats_to_amount(total)}
    finally:
        _Scan.progress = None
        _Scan.lock.release()


# -- fees ------------------------------------------------------------------------------------
@method("estimatesmartfee", ("conf_target", "int", REQUIRED), ("estimate_mode", "str", "economical"))
def estimatesmartfee(node, conf_target, estimate_mode):
    """Estimates the fee per kilobyte needed for a transaction to begin confirmation within conf_target blocks.

This node's estimator looks at the fee rates of transactions mined in recent blocks (window grows
with the target), and answers a high percentile for short targets and the median for long ones."""
    if estimate_mode.lower() not in ("unset", "economical", "conservative"):
        raise RPCError(RPC_INVALID_PARAMETER, "Invalid estimate_mode parameter, must be one of: \"unset\", \"economical\", \"conservative\"")
    if not 1 <= conf_target <= 1008:
        raise RPCError(RPC_INVALID_PARAMETER, "Invalid conf_target, must be between 1 and 1008")
    target = max(conf_target, 2)
    with node.lock:
        window = max(6, 2 * target)
        tip = node.chain.height
        rates = sorted(r for h, rs in node.recent_feerates if h > tip - window for r in rs)
    if not rates:
        return {"errors": ["Insufficient data or no feerate found"], "blocks": 0}
    quantile = 0.95 if target <= 2 else 0.85 if target <= 6 else 0.5
    if estimate_mode.lower() == "conservative":
        quantile = min(0.99, quantile + 0.05)
    sat_per_vb = max(rates[min(len(rates) - 1, int(quantile * len(rates)))], MIN_RELAY_FEE / 1000)
    return {"feerate": sats_to_amount(int(round(sat_per_vb * 1000))), "blocks": target}


# -- mining ----------------------------------------------------------------------------------
def _script_for_output(output: str) -> bytes:
    try:
        return S.address_to_script(output)
    except ValueError:
        pass
    try:
        return _script_for_descriptor(output)
    except RPCError:
        raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, "Error: Invalid address or descriptor") from None


def _script_for_descriptor(descriptor: str) -> bytes:
    from . import descriptors as D     # on first use: embit's descriptors cost start-up
    try:
        obj = D.parse_scan_objects([descriptor])[0]
        if obj.range is not None:
            raise RPCError(RPC_INVALID_PARAMETER, "Ranged descriptor not accepted. Maybe pass through deriveaddresses first?")
        scripts = list(D.expand(obj))
    except D.DescriptorError as e:
        raise RPCError(e.code, str(e)) from None
    if len(scripts) != 1:
        raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, "Cannot derive script without private keys")
    return scripts[0]


def _generate(node, count: int, script_pubkey: bytes, max_tries: int) -> list[str]:
    hashes = []
    for _ in range(count):
        if node.stopping.is_set():
            break
        block, outcome = node.mine(script_pubkey, max_tries=max_tries)
        if block is None:
            break
        if outcome[0] != "connected":
            raise RPCError(RPC_INTERNAL_ERROR_MINING, f"ProcessNewBlock, block not accepted: {outcome[1]}")
        hashes.append(block.hash)
    return hashes


RPC_INTERNAL_ERROR_MINING = -32603


@method("generatetoaddress", ("nblocks", "int", REQUIRED), ("address", "str", REQUIRED), ("maxtries", "int", 1_000_000))
def generatetoaddress(node, nblocks, address, maxtries):
    """Mine blocks immediately to a specified address (before the RPC call returns)."""
    try:
        spk = S.address_to_script(address)
    except ValueError:
        raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, "Error: Invalid address") from None
    return _generate(node, nblocks, spk, maxtries)


@method("generatetodescriptor", ("num_blocks", "int", REQUIRED), ("descriptor", "str", REQUIRED),
        ("maxtries", "int", 1_000_000))
def generatetodescriptor(node, num_blocks, descriptor, maxtries):
    """Mine to a specified descriptor and return the block hashes."""
    return _generate(node, num_blocks, _script_for_descriptor(descriptor), maxtries)


@method("generateblock", ("output", "str", REQUIRED), ("transactions", "array", REQUIRED), ("submit", "bool", True))
def generateblock(node, output, transactions, submit):
    """Mine a set of ordered transactions to a specified address or descriptor and return the block hash."""
    spk = _script_for_output(output)
    txs = []
    with node.lock:
        for item in transactions:
            if not isinstance(item, str):
                raise RPCError(-3, "JSON value is not a string as expected")
            entry = None
            if len(item) == 64:
                try:
                    entry = node.mempool.entries.get(bytes.fromhex(item)[::-1])
                except ValueError:
                    entry = None
                if entry is None:
                    raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, f"Transaction {item} not in mempool.")
                txs.append(entry.tx)
            else:
                try:
                    txs.append(Tx.parse(bytes.fromhex(item)))
                except (ValueError, DecodeError):
                    raise RPCError(RPC_DESERIALIZATION_ERROR, f"Transaction decode failed for {item}. "
                                   "Make sure the tx has at least one input.") from None
        try:
            block, outcome = node.mine(spk, txs, submit=submit)
        except Rejected as r:
            raise RPCError(RPC_VERIFY_ERROR, f"TestBlockValidity failed: {r.reason}") from None
        if outcome is not None and outcome[0] not in ("connected",):
            raise RPCError(RPC_VERIFY_ERROR, f"TestBlockValidity failed: {outcome[1]}")
    result = {"hash": block.hash}
    if not submit:
        result["hex"] = block.serialize().hex()
    return result


@method("getblocktemplate", ("template_request", "object", None))
def getblocktemplate(node, template_request):
    """If the request parameters include a 'mode' key, that is used to explicitly select between the default
'template' request or a 'proposal'. It returns data needed to construct a block to work on."""
    request = template_request or {}
    mode = request.get("mode")
    if mode is None:
        mode = "template"
    elif not isinstance(mode, str):
        raise RPCError(RPC_INVALID_PARAMETER, "Invalid mode")
    if mode == "proposal":
        return _proposal(node, request.get("data"))
    rules = request.get("rules")
    client_rules = set()
    if isinstance(rules, list):
        for rule in rules:
            if not isinstance(rule, str):
                raise RPCError(RPC_TYPE_ERROR, "JSON value is not a string as expected")
            client_rules.add(rule)
    if mode != "template":
        raise RPCError(RPC_INVALID_PARAMETER, "Invalid mode")
    longpollid = request.get("longpollid")
    if longpollid is not None:
        if not isinstance(longpollid, str):
            raise RPCError(RPC_TYPE_ERROR, "JSON value is not a string as expected")
        _wait_longpoll(node, longpollid)
    if "segwit" not in client_rules:
        raise RPCError(RPC_INVALID_PARAMETER, "getblocktemplate must be called with the segwit rule set "
                       "(call with {\"rules\": [\"segwit\"]})")
    with node.lock:
        return _template(node)


def _longpoll_id(node) -> str:
    return _hex(bytes(node.chain.tip.block_hash)) + str(node.mempool._sequence)


def _wait_longpoll(node, longpollid: str) -> None:
    """Core's long poll: wait for a new tip; after a minute, also return when the mempool changed."""
    watched, since = longpollid[:64], longpollid[64:]
    started = time.monotonic()
    while not node.stopping.is_set():
        with node.lock:
            tip = _hex(bytes(node.chain.tip.block_hash))
            updated = str(node.mempool._sequence)
        if tip != watched or (time.monotonic() - started >= 60 and updated != since):
            return
        time.sleep(0.1)


def _template(node) -> dict:
    chain, mempool = node.chain, node.mempool
    tip = chain.tip
    height = tip.height + 1
    txs = select_transactions(mempool)
    position = {tx.txid_bytes: n for n, tx in enumerate(txs, 1)}
    entries, fees = [], 0
    for tx in txs:
        entry = mempool.entries[tx.txid_bytes]
        fees += entry.fee
        depends = sorted({position[i.prev_txid] for i in tx.vin if i.prev_txid in position})
        entries.append({"data": tx.serialize().hex(), "txid": tx.txid, "hash": tx.wtxid, "depends": depends,
                        "fee": entry.fee, "weight": entry.weight,
                        "sigops": S.sigop_cost(tx, [c.script_pubkey for c in entry.spent_coins])})
    mtp = chain.median_time_past(tip)
    state = node.versionbits.state(height)
    commitment = make_coinbase(height, 0, b"", txs).vout[1].script_pubkey
    return {"capabilities": ["proposal"], "version": node.versionbits.block_version(height),
            "rules": ["csv", "!segwit", "taproot"],
            "vbavailable": {"testdummy": TESTDUMMY_BIT} if state in ("STARTED", "LOCKED_IN") else {},
            "vbrequired": 0, "previousblockhash": _hex(bytes(tip.block_hash)), "transactions": entries,
            "coinbaseaux": {}, "coinbasevalue": block_subsidy(height) + fees, "longpollid": _longpoll_id(node),
            "target": f"{bits_to_target(REGTEST_BITS):064x}", "mintime": mtp + 1,
            "mutable": ["time", "transactions", "prevblock"], "noncerange": "00000000ffffffff",
            "sigoplimit": 80_000, "sizelimit": 4_000_000, "weightlimit": MAX_BLOCK_WEIGHT,
            "curtime": max(mtp + 1, node.clock.now()), "bits": f"{REGTEST_BITS:08x}", "height": height,
            "default_witness_commitment": commitment.hex()}


def _proposal(node, data):
    """BIP 23 block proposal, answered as Core's BIP22ValidationResult."""
    from .serialize import Block
    if not isinstance(data, str):
        raise RPCError(RPC_TYPE_ERROR, "Missing data String key for proposal")
    try:
        block = Block.parse(bytes.fromhex(data))
    except (ValueError, DecodeError):
        raise RPCError(RPC_DESERIALIZATION_ERROR, "Block decode failed") from None
    with node.lock:
        chain = node.chain
        block_hash = block.header.hash_bytes
        if chain.entry(block_hash) is not None:
            return "duplicate" if chain.block(block_hash) is not None else "duplicate-inconclusive"
        if block.header.prev_hash != bytes(chain.tip.block_hash):
            return "inconclusive-not-best-prevblk"
        return test_block_validity(node.mempool, block, node.clock.now())


@method("submitblock", ("hexdata", "str", REQUIRED), ("dummy", "any", None))
def submitblock(node, hexdata, dummy):
    """Attempts to submit new block to network. Returns null when accepted, else a BIP22 reason."""
    from .serialize import Block
    try:
        block = Block.parse(bytes.fromhex(hexdata))
    except (ValueError, DecodeError):
        raise RPCError(RPC_DESERIALIZATION_ERROR, "Block decode failed") from None
    if not block.txs or not block.txs[0].is_coinbase():
        raise RPCError(RPC_DESERIALIZATION_ERROR, "Block does not start with a coinbase")
    outcome, reason = node.submit_block(bytes.fromhex(hexdata))
    if outcome == "connected":
        return None
    if outcome == "stored":
        return "inconclusive"
    if outcome == "duplicate":
        return "duplicate"
    if outcome == "duplicate-invalid":
        return "duplicate-invalid"
    return reason or "rejected"


# -- descriptors and addresses -----------------------------------------------------------------
@method("getdescriptorinfo", ("descriptor", "str", REQUIRED))
def getdescriptorinfo(node, descriptor):
    """Analyses a descriptor."""
    from . import descriptors as D     # on first use: embit's descriptors cost start-up
    try:
        body = D.check_and_strip_checksum(descriptor)
        obj = D.parse_scan_objects([body])[0]
    except D.DescriptorError as e:
        raise RPCError(e.code, str(e)) from None
    result = {"descriptor": D.add_checksum(body), "checksum": D.descriptor_checksum(body),
              "isrange": obj.range is not None, "issolvable": not body.startswith(("addr(", "raw(")),
              "hasprivatekeys": False}
    paths = re.search(r"<(\d+(?:;\d+)+)>", body)
    if paths:   # Core 29: the first path is "descriptor", each path listed in "multipath_expansion"
        expansion = [D.add_checksum(body.replace(paths.group(0), p)) for p in paths.group(1).split(";")]
        result["descriptor"], result["multipath_expansion"] = expansion[0], expansion
    return result


@method("deriveaddresses", ("descriptor", "str", REQUIRED), ("range", "int|array", None))
def deriveaddresses(node, descriptor, range_):
    """Derives one or more addresses corresponding to an output descriptor (one array per path of a
multipath descriptor)."""
    from . import descriptors as D     # on first use: embit's descriptors cost start-up
    try:
        body = D.check_and_strip_checksum(descriptor, require=True)
        spec = body if range_ is None else {"desc": body, "range": range_}
        obj = D.parse_scan_objects([spec])[0]
        if range_ is None and obj.range is not None:
            raise RPCError(RPC_INVALID_PARAMETER, "Range must be specified for a ranged descriptor")
        paths = D.expand_paths(obj)
    except D.DescriptorError as e:
        raise RPCError(e.code, str(e)) from None
    result = []
    for scripts in paths:
        addresses = []
        for spk in scripts:
            address = S.address_of(spk)
            if address is None:
                raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, "Descriptor does not have a corresponding address")
            addresses.append(address)
        result.append(addresses)
    return result if len(result) > 1 else result[0]   # Core 29: one array per path of a multipath descriptor


@method("validateaddress", ("address", "str", REQUIRED))
def validateaddress(node, address):
    """Return information about the given bitcoin address."""
    try:
        spk = S.address_to_script(address)
    except ValueError as e:
        return {"isvalid": False, "address": address, "error": str(e)}
    prog = S.witness_program(spk)
    result = {"isvalid": True, "address": address, "scriptPubKey": spk.hex(), "isscript": S.classify(spk) in
              ("scripthash", "witness_v0_scripthash", "witness_v1_taproot"), "iswitness": prog is not None}
    if prog:
        result["witness_version"], result["witness_program"] = prog[0], prog[1].hex()
    return result


# -- control and network ---------------------------------------------------------------------
@method("getnetworkinfo")
def getnetworkinfo(node):
    """Returns an object containing various state info regarding P2P networking (none: this node is offline)."""
    return {"version": VERSION, "subversion": SUBVERSION, "protocolversion": 70016,
            "localservices": "0000000000000c08", "localservicesnames": ["WITNESS", "NETWORK_LIMITED", "P2P_V2"],
            "localrelay": True, "timeoffset": 0, "networkactive": False, "connections": 0, "connections_in": 0,
            "connections_out": 0, "networks": _networks(), "relayfee": sats_to_amount(MIN_RELAY_FEE),
            "incrementalfee": sats_to_amount(INCREMENTAL_RELAY_FEE), "localaddresses": [], "warnings": []}


def _networks() -> list[dict]:
    """Core's GetNetworksInfo with no proxy and no -onion, -i2psam or -cjdnsreachable: only IPv4 and
    IPv6 are reachable."""
    return [{"name": name, "limited": name not in ("ipv4", "ipv6"), "reachable": name in ("ipv4", "ipv6"),
             "proxy": "", "proxy_randomize_credentials": False}
            for name in ("ipv4", "ipv6", "onion", "i2p", "cjdns")]


@method("setmocktime", ("timestamp", "int", REQUIRED))
def setmocktime(node, timestamp):
    """Set the local time to given timestamp (-regtest only). Pass 0 to go back to using the system time."""
    if timestamp < 0:
        raise RPCError(RPC_INVALID_PARAMETER, f"Mocktime cannot be negative: {timestamp}.")
    with node.lock:
        node.clock.set_mocktime(timestamp)


@method("mockscheduler", ("delta_time", "int", REQUIRED))
def mockscheduler(node, delta_time):
    """Bump the scheduler into the future (-regtest only)."""
    if not 1 <= delta_time <= 3600:
        raise RPCError(RPC_MISC_ERROR, "delta_time must be between 1 and 3600 seconds (1 hr)")
    node.scheduler.mock_forward(delta_time)


@method("syncwithvalidationinterfacequeue")
def syncwithvalidationinterfacequeue(node):
    """Waits for the validation interface queue to catch up on everything that was there when we entered
this function. This node delivers every validation event before the call that caused it returns."""
    with node.lock:
        return None


@method("uptime")
def uptime(node):
    """Returns the total uptime of the server in seconds."""
    return node.clock.now() - node.started


@method("help", ("command", "str", None))
def help_(node, command):
    """List all commands, or get help for a specified command."""
    if command is None:
        return "\n".join(usage(name, METHODS[name][1]) for name in sorted(METHODS))
    if command not in METHODS:
        return f"help: unknown command: {command}"
    _, spec, doc = METHODS[command]
    return f"{usage(command, spec)}\n\n{doc}"


@method("stop", ("wait", "int", None))
def stop(node, wait):
    """Request a graceful shutdown of the node."""
    node.stopping.set()
    return "Bitcoin Core stopping"
