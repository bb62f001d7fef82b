"""`custody psbt check`: is this a well-formed PSBT (BIP-174 v0 or BIP-370 v2), and what does it spend?

The PSBT's key-value maps are read here byte by byte, not by a library parser, so that every rule
the BIPs state (and their invalid test vectors exercise) is enforced: no duplicate keys, keys of the
right length, valid public keys, v0-only and v2-only fields in their place, an unsigned transaction
without signatures, a previous transaction that matches its outpoint, counts that match.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import struct

from coincurve import PublicKey
from embit.networks import NETWORKS
from embit.script import Script

MAGIC = b"psbt\xff"
LOCKTIME_THRESHOLD = 500_000_000


class PSBTError(ValueError):
    """One line naming what is wrong with the PSBT."""


def _sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


class _Reader:
    def __init__(self, data: bytes, pos: int = 0):
        self.data, self.pos = data, pos

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise PSBTError(f"truncated PSBT: {what} runs past the end")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def compact(self, what: str) -> int:
        first = self.take(1, what)[0]
        if first < 0xFD:
            return first
        size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
        return int.from_bytes(self.take(size, what), "little")


def _read_map(r: _Reader, where: str) -> dict[bytes, bytes]:
    entries: dict[bytes, bytes] = {}
    while True:
        key_len = r.compact(f"{where} key length")
        if key_len == 0:
            return entries
        key = r.take(key_len, f"{where} key")
        value = r.take(r.compact(f"{where} value length"), f"{where} value")
        if key in entries:
            raise PSBTError(f"{where}: duplicate key 0x{key.hex()}")
        entries[key] = value


def _parse_tx(raw: bytes, what: str, *, allow_witness: bool = True) -> dict:
    """Minimal transaction parser: inputs (txid, vout, scriptSig, sequence), outputs, witness flag."""
    r = _Reader(raw)
    version = struct.unpack("<i", r.take(4, what))[0]
    n_in = r.compact(what)
    witness = False
    if allow_witness and n_in == 0 and r.pos < len(raw) and raw[r.pos] == 1:
        r.take(1, what)
        witness = True
        n_in = r.compact(what)
    inputs = []
    for _ in range(n_in):
        txid, vout = r.take(32, what)[::-1].hex(), struct.unpack("<I", r.take(4, what))[0]
        script_sig = r.take(r.compact(what), what)
        inputs.append({"txid": txid, "vout": vout, "script_sig": script_sig,
                       "sequence": struct.unpack("<I", r.take(4, what))[0]})
    outputs = [{"value": struct.unpack("<q", r.take(8, what))[0], "script": r.take(r.compact(what), what)}
               for _ in range(r.compact(what))]
    if witness:
        for _ in inputs:
            for _ in range(r.compact(what)):
                r.take(r.compact(what), what)
    locktime = struct.unpack("<I", r.take(4, what))[0]
    if r.pos != len(raw):
        raise PSBTError(f"{what} has trailing bytes")
    nowit = raw if not witness else _strip_witness(version, inputs, outputs, locktime)
    return {"version": version, "inputs": inputs, "outputs": outputs, "locktime": locktime,
            "txid": _sha256d(nowit)[::-1].hex(), "witness": witness}


def _parse_unsigned(raw: bytes) -> dict:
    """The global unsigned transaction: plain serialization only (a witness-serialized one is named)."""
    try:
        return _parse_tx(raw, "unsigned transaction", allow_witness=False)
    except PSBTError:
        if raw[4:6] == b"\x00\x01":
            try:
                _parse_tx(raw, "unsigned transaction")
            except PSBTError:
                pass
            else:
                raise PSBTError("unsigned transaction is serialized with witness data") from None
        raise


def _ser_compact(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


def _strip_witness(version, inputs, outputs, locktime) -> bytes:
    parts = [struct.pack("<i", version), _ser_compact(len(inputs))]
    for i in inputs:
        parts += [bytes.fromhex(i["txid"])[::-1], struct.pack("<I", i["vout"]), _ser_compact(len(i["script_sig"])),
                  i["script_sig"], struct.pack("<I", i["sequence"])]
    parts.append(_ser_compact(len(outputs)))
    for o in outputs:
        parts += [struct.pack("<q", o["value"]), _ser_compact(len(o["script"])), o["script"]]
    parts.append(struct.pack("<I", locktime))
    return b"".join(parts)


def _pubkey(data: bytes, where: str) -> None:
    if len(data) not in (33, 65):
        raise PSBTError(f"{where}: public key of {len(data)} bytes")
    try:
        PublicKey(data)
    except Exception:
        raise PSBTError(f"{where}: not a valid public key") from None


def _u32(value: bytes, where: str) -> int:
    if len(value) != 4:
        raise PSBTError(f"{where}: value must be 4 bytes")
    return int.from_bytes(value, "little")


def _keypath(value: bytes, where: str) -> None:
    if len(value) < 4 or len(value) % 4:
        raise PSBTError(f"{where}: derivation path is not a fingerprint plus 4-byte steps")


def _single(key: bytes, where: str) -> None:
    if len(key) != 1:
        raise PSBTError(f"{where}: key 0x{key.hex()} must be one byte")


def decode(data: bytes | str) -> bytes:
    """PSBT bytes from base64, hex or binary input."""
    raw = data if isinstance(data, bytes) else data.encode()
    if raw.startswith(MAGIC):
        return raw
    text = raw.strip()
    try:
        raw = bytes.fromhex(text.decode())
    except (ValueError, UnicodeDecodeError):
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise PSBTError("not a PSBT: neither binary, hex nor base64") from None
    if not raw.startswith(MAGIC):
        raise PSBTError("not a PSBT: missing the magic bytes 'psbt\\xff'")
    return raw


def check_psbt(data: bytes | str, network: str = "regtest") -> dict:
    """A JSON-able summary of a well-formed PSBT; PSBTError naming the first problem otherwise."""
    raw = decode(data)
    r = _Reader(raw, len(MAGIC))
    glob = _read_map(r, "global map")
    version = _u32(glob[b"\xfb"], "PSBT_GLOBAL_VERSION") if b"\xfb" in glob else 0
    if version not in (0, 2):
        raise PSBTError(f"unsupported PSBT version {version}")
    v2_globals = {b"\x02": "TX_VERSION", b"\x03": "FALLBACK_LOCKTIME", b"\x04": "INPUT_COUNT",
                  b"\x05": "OUTPUT_COUNT", b"\x06": "TX_MODIFIABLE"}
    for key in glob:
        if key[:1] in (b"\x00", b"\x02", b"\x03", b"\x04", b"\x05", b"\x06", b"\xfb"):
            _single(key, "global map")
        elif key[:1] == b"\x01" and len(key) != 79:
            raise PSBTError("global xpub key must be 78 bytes of extended key")
        if key[:1] == b"\x01":
            _keypath(glob[key], "global xpub")
    if version == 0:
        if b"\x00" not in glob:
            raise PSBTError("PSBT v0 without PSBT_GLOBAL_UNSIGNED_TX")
        for key, name in v2_globals.items():
            if key in glob:
                raise PSBTError(f"PSBT v0 with the v2-only field PSBT_GLOBAL_{name}")
        tx = _parse_unsigned(glob[b"\x00"])
        if any(i["script_sig"] for i in tx["inputs"]):
            raise PSBTError("unsigned transaction has a scriptSig")
        n_in, n_out = len(tx["inputs"]), len(tx["outputs"])
    else:
        if b"\x00" in glob:
            raise PSBTError("PSBT v2 with PSBT_GLOBAL_UNSIGNED_TX")
        for key in (b"\x02", b"\x04", b"\x05"):
            if key not in glob:
                raise PSBTError(f"PSBT v2 without PSBT_GLOBAL_{v2_globals[key]}")
        tx_version = _u32(glob[b"\x02"], "PSBT_GLOBAL_TX_VERSION")
        if tx_version < 2:
            raise PSBTError("PSBT v2 requires transaction version 2 or more")
        if b"\x03" in glob:
            _u32(glob[b"\x03"], "PSBT_GLOBAL_FALLBACK_LOCKTIME")
        n_in, n_out = (_Reader(glob[k]).compact("count") for k in (b"\x04", b"\x05"))
        tx = {"version": tx_version, "inputs": [], "outputs": [], "locktime": None}
    in_summary = [_check_input(i, _read_map(r, f"input {i}"), tx, version) for i in range(n_in)]
    out_summary = [_check_output(i, _read_map(r, f"output {i}"), tx, version, network) for i in range(n_out)]
    if r.pos != len(raw):
        raise PSBTError("trailing data after the last output map (more maps than inputs and outputs?)")
    if version == 2:
        tx["locktime"] = _v2_locktime(glob, in_summary)
        tx["txid"] = _sha256d(_strip_witness(tx["version"], tx["inputs"], tx["outputs"], tx["locktime"]))[::-1].hex()
    values = [i["value"] for i in in_summary]
    fee = sum(values) - sum(o["value"] for o in out_summary) if values and None not in values else None
    for s in in_summary:
        s.pop("_locks", None)
    return {"version": version, "txid": tx["txid"], "locktime": tx["locktime"], "inputs": in_summary,
            "outputs": out_summary, "fee": fee, "global_xpubs": sum(1 for k in glob if k[:1] == b"\x01"),
            "complete": all(i["finalized"] for i in in_summary)}


def _check_input(i: int, m: dict[bytes, bytes], tx: dict, version: int) -> dict:
    where = f"input {i}"
    for key, value in m.items():
        t = key[0]
        if t in (0x00, 0x01, 0x03, 0x04, 0x05, 0x07, 0x08, 0x0E, 0x0F, 0x10, 0x11, 0x12, 0x13, 0x17, 0x18):
            _single(key, where)
        if t in (0x02, 0x06):
            _pubkey(key[1:], f"{where} {'partial signature' if t == 2 else 'BIP-32 derivation'} key")
        if t == 0x06:
            _keypath(value, f"{where} BIP-32 derivation")
        if t == 0x13 and len(value) not in (64, 65):
            raise PSBTError(f"{where}: taproot key path signature of {len(value)} bytes")
        if t == 0x14:
            if len(key) != 65:
                raise PSBTError(f"{where}: taproot script signature key must be x-only key plus leaf hash")
            if len(value) not in (64, 65):
                raise PSBTError(f"{where}: taproot script signature of {len(value)} bytes")
        if t == 0x15 and (len(key) - 1 < 33 or (len(key) - 1 - 33) % 32 or len(key) - 1 > 33 + 128 * 32):
            raise PSBTError(f"{where}: taproot control block of invalid length")
        if t == 0x16 and len(key) != 33:
            raise PSBTError(f"{where}: taproot BIP-32 derivation key must be a 32-byte x-only key")
        if t in (0x17, 0x18) and len(value) != 32:
            raise PSBTError(f"{where}: taproot {'internal key' if t == 0x17 else 'merkle root'} must be 32 bytes")
        if version == 0 and t in (0x0E, 0x0F, 0x10, 0x11, 0x12):
            raise PSBTError(f"{where}: PSBT v0 with a v2-only input field (0x{t:02x})")
    if version == 2:
        if b"\x0e" not in m or b"\x0f" not in m:
            raise PSBTError(f"{where}: PSBT v2 input without PSBT_IN_PREVIOUS_TXID and PSBT_IN_OUTPUT_INDEX")
        if len(m[b"\x0e"]) != 32:
            raise PSBTError(f"{where}: previous txid must be 32 bytes")
        prevout = {"txid": m[b"\x0e"][::-1].hex(), "vout": _u32(m[b"\x0f"], f"{where} output index"),
                   "script_sig": b"", "sequence": _u32(m[b"\x10"], f"{where} sequence") if b"\x10" in m else 0xFFFFFFFF}
        tx["inputs"].append(prevout)
        locks = {}
        if b"\x11" in m:
            locks["time"] = _u32(m[b"\x11"], f"{where} required time locktime")
            if locks["time"] < LOCKTIME_THRESHOLD:
                raise PSBTError(f"{where}: required time locktime below 500000000")
        if b"\x12" in m:
            locks["height"] = _u32(m[b"\x12"], f"{where} required height locktime")
            if not 0 < locks["height"] < LOCKTIME_THRESHOLD:
                raise PSBTError(f"{where}: required height locktime not a block height")
    else:
        prevout, locks = tx["inputs"][i], {}
    value = None
    if b"\x01" in m:
        wr = _Reader(m[b"\x01"])
        value = struct.unpack("<q", wr.take(8, f"{where} witness utxo"))[0]
        wr.take(wr.compact(f"{where} witness utxo"), f"{where} witness utxo")
        if wr.pos != len(m[b"\x01"]):
            raise PSBTError(f"{where}: witness utxo has trailing bytes")
    if b"\x00" in m:
        prev = _parse_tx(m[b"\x00"], f"{where} non-witness utxo")
        if prev["txid"] != prevout["txid"]:
            raise PSBTError(f"{where}: non-witness utxo is transaction {prev['txid']}, not the one spent")
        if prevout["vout"] >= len(prev["outputs"]):
            raise PSBTError(f"{where}: spends output {prevout['vout']} which the previous transaction lacks")
        value = prev["outputs"][prevout["vout"]]["value"] if value is None else value
    sighash = _u32(m[b"\x03"], f"{where} sighash type") if b"\x03" in m else None
    return {"outpoint": f"{prevout['txid']}:{prevout['vout']}", "value": value,
            "has_witness_utxo": b"\x01" in m, "has_non_witness_utxo": b"\x00" in m, "sighash": sighash,
            "partial_signatures": sum(1 for k in m if k[0] == 0x02) + sum(1 for k in m if k[0] == 0x14),
            "bip32_derivations": sum(1 for k in m if k[0] in (0x06, 0x16)),
            "finalized": b"\x07" in m or b"\x08" in m, "_locks": locks}


def _check_output(i: int, m: dict[bytes, bytes], tx: dict, version: int, network: str) -> dict:
    where = f"output {i}"
    for key, value in m.items():
        t = key[0]
        if t in (0x00, 0x01, 0x03, 0x04, 0x05, 0x06):
            _single(key, where)
        if t == 0x02:
            _pubkey(key[1:], f"{where} BIP-32 derivation key")
            _keypath(value, f"{where} BIP-32 derivation")
        if t == 0x05 and len(value) != 32:
            raise PSBTError(f"{where}: taproot internal key must be 32 bytes")
        if t == 0x06:
            _check_tap_tree(value, where)
        if t == 0x07 and len(key) != 33:
            raise PSBTError(f"{where}: taproot BIP-32 derivation key must be a 32-byte x-only key")
        if version == 0 and t in (0x03, 0x04):
            raise PSBTError(f"{where}: PSBT v0 with a v2-only output field (0x{t:02x})")
    if version == 2:
        if b"\x03" not in m or b"\x04" not in m:
            raise PSBTError(f"{where}: PSBT v2 output without PSBT_OUT_AMOUNT and PSBT_OUT_SCRIPT")
        if len(m[b"\x03"]) != 8:
            raise PSBTError(f"{where}: amount must be 8 bytes")
        out = {"value": struct.unpack("<q", m[b"\x03"])[0], "script": m[b"\x04"]}
        tx["outputs"].append(out)
    else:
        out = tx["outputs"][i]
    try:
        address = Script(out["script"]).address(NETWORKS[network])
    except Exception:
        address = None
    return {"value": out["value"], "script_pubkey": out["script"].hex(), "address": address}


def _check_tap_tree(value: bytes, where: str) -> None:
    r = _Reader(value)
    if not value:
        raise PSBTError(f"{where}: empty taproot tree")
    while r.pos < len(value):
        depth = r.take(1, f"{where} taproot tree")[0]
        leaf_version = r.take(1, f"{where} taproot tree")[0]
        if depth > 128 or leaf_version & 1:
            raise PSBTError(f"{where}: taproot tree leaf with invalid depth or leaf version")
        r.take(r.compact(f"{where} taproot tree"), f"{where} taproot tree")


def _v2_locktime(glob: dict, inputs: list[dict]) -> int:
    """BIP-370's locktime determination."""
    locks = [s["_locks"] for s in inputs]
    fallback = _u32(glob[b"\x03"], "fallback locktime") if b"\x03" in glob else 0
    if not any(locks):
        return fallback
    height_ok = all("height" in l or not l for l in locks)
    time_ok = all("time" in l or not l for l in locks)
    if height_ok and any("height" in l for l in locks):
        return max(l["height"] for l in locks if "height" in l)
    if time_ok and any("time" in l for l in locks):
        return max(l["time"] for l in locks if "time" in l)
    raise PSBTError("inputs require both a height and a time locktime: no locktime satisfies them")
