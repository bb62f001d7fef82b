"""`custody psbt check`: is this a well-formed PSBT (BIP-174 v0 or BIP-370 v2), and what does it spend?

The PSBT's key-value maps are read here byte by byte, not by a library parser, so that every rule the
BIPs state for the format (and their invalid test vectors exercise) is enforced and named in one
line: the magic, canonical compact sizes, no duplicate keys, key data of the right length for every
known type, valid public keys, values of the stated shape, v0-only and v2-only fields in their place,
an unsigned transaction without scriptSigs or witnesses, a previous transaction that is the one the
input spends, as many input and output maps as the transaction has, nothing after the last map, and
in v2 required locktimes that are valid and can all be met.

Values the BIPs leave to signers (whether a redeemScript matches its UTXO, whether a signature
verifies) are not judged here; a witness UTXO contradicting the verified previous transaction is
reported under "warnings", because the fee then depends on whom one believes.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct

from coincurve import PublicKey
from embit import bech32
from embit.hashes import hash160, ripemd160
from embit.networks import NETWORKS
from embit.script import Script

MAGIC = b"psbt\xff"
LOCKTIME_THRESHOLD = 500_000_000
TAPROOT_MAX_DEPTH = 128


class PSBTError(ValueError):
    """One line naming what is wrong with the PSBT."""


# -- bytes ------------------------------------------------------------------------------------
def _sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


class _Reader:
    """Reads from `data`, raising PSBTError naming `what` was being read when it runs out."""

    def __init__(self, data: bytes, pos: int = 0):
        self.data, self.pos = data, pos

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise PSBTError(f"truncated PSBT: {what} runs past the end of its data")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def compact(self, what: str) -> int:
        first = self.take(1, what)[0]
        if first < 0xFD:
            return first
        size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
        n = int.from_bytes(self.take(size, what), "little")
        if n < {2: 0xFD, 4: 0x10000, 8: 0x100000000}[size]:
            raise PSBTError(f"{what} is a compact size that is not minimally encoded")
        return n

    def blob(self, what: str) -> bytes:
        """A compact-size length followed by that many bytes."""
        return self.take(self.compact(what), what)

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def finish(self, what: str) -> None:
        if not self.at_end():
            raise PSBTError(f"{what} has {len(self.data) - self.pos} bytes more than its contents")


def _ser_compact(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


# -- input encodings --------------------------------------------------------------------------
def decode(data: bytes | str) -> bytes:
    """PSBT bytes from base64, hex or binary input (whitespace around text, or within base64
    wrapped over several lines, is ignored)."""
    raw = data if isinstance(data, bytes) else data.encode()
    if raw.startswith(MAGIC):
        return raw
    if raw.startswith(b"psbt"):
        raise PSBTError("bad magic: the byte after 'psbt' must be the separator 0xff")
    text = re.sub(rb"\s+", b"", raw)
    if not text:
        raise PSBTError("not a PSBT: the input is empty")
    if not text.isascii():
        raise PSBTError("not a PSBT: binary data that does not start with the magic bytes 'psbt\\xff'")
    try:
        raw = bytes.fromhex(text.decode())
    except ValueError:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise PSBTError("not a PSBT: neither binary (psbt\\xff...), hex nor base64 text") from None
    if not raw.startswith(MAGIC):
        what = "the separator 0xff" if raw.startswith(b"psbt") else "the magic bytes 'psbt\\xff'"
        raise PSBTError(f"not a PSBT: it does not start with {what}")
    return raw


# -- transactions -----------------------------------------------------------------------------
def _parse_tx(raw: bytes, what: str, *, allow_witness: bool) -> dict:
    """A network-serialized transaction: version, inputs, outputs, locktime, txid."""
    r = _Reader(raw)
    version = struct.unpack("<i", r.take(4, what))[0]
    n_in = r.compact(what)
    witness = False
    if allow_witness and n_in == 0 and not r.at_end() and raw[r.pos] != 0:
        flags = r.take(1, what)[0]
        if flags != 1:
            raise PSBTError(f"{what} has unknown optional data (flags 0x{flags:02x})")
        witness, n_in = True, r.compact(what)
    inputs = []
    for _ in range(n_in):
        txid, vout = r.take(32, what)[::-1].hex(), r.u32(what)
        inputs.append({"txid": txid, "vout": vout, "script_sig": r.blob(what), "sequence": r.u32(what)})
    outputs = [{"value": struct.unpack("<q", r.take(8, what))[0], "script": r.blob(what)}
               for _ in range(r.compact(what))]
    witnesses = [[r.blob(what) for _ in range(r.compact(what))] for _ in inputs] if witness else []
    locktime = r.u32(what)
    r.finish(what)
    return {"version": version, "inputs": inputs, "outputs": outputs, "locktime": locktime,
            "txid": _txid(version, inputs, outputs, locktime), "witness_flag": witness,
            "has_witness": any(witnesses)}


def _parse_unsigned_tx(raw: bytes) -> dict:
    """PSBT_GLOBAL_UNSIGNED_TX: the old serialization only, with empty scriptSigs."""
    what = "PSBT_GLOBAL_UNSIGNED_TX"
    try:
        tx = _parse_tx(raw, what, allow_witness=False)
    except PSBTError:
        if raw[4:6] == b"\x00\x01":
            try:
                _parse_tx(raw, what, allow_witness=True)
            except PSBTError:
                pass
            else:
                raise PSBTError(f"{what} is in the witness serialization; it must have no witnesses") from None
        raise
    for n, txin in enumerate(tx["inputs"]):
        if txin["script_sig"]:
            raise PSBTError(f"{what}: input {n} has a scriptSig; an unsigned transaction's must be empty")
    return tx


def _txid(version: int, inputs: list[dict], outputs: list[dict], locktime: int,
          sequence: int | None = None) -> str:
    """The txid of the transaction without witnesses (every sequence replaced by `sequence` if given)."""
    parts = [struct.pack("<i", version), _ser_compact(len(inputs))]
    for i in inputs:
        parts += [bytes.fromhex(i["txid"])[::-1], struct.pack("<I", i["vout"]),
                  _ser_compact(len(i["script_sig"])), i["script_sig"],
                  struct.pack("<I", i["sequence"] if sequence is None else sequence)]
    parts.append(_ser_compact(len(outputs)))
    for o in outputs:
        parts += [struct.pack("<q", o["value"]), _ser_compact(len(o["script"])), o["script"]]
    parts.append(struct.pack("<I", locktime))
    return _sha256d(b"".join(parts))[::-1].hex()


# -- checks of key data and values ------------------------------------------------------------
# Each checker takes (data, where) and raises PSBTError naming `where` when the data is malformed.
def _no_key_data(data: bytes, where: str) -> None:
    if data:
        raise PSBTError(f"{where}: key must be the type alone, but has {len(data)} bytes of key data")


def _pubkey(data: bytes, where: str) -> None:
    if len(data) not in (33, 65):
        raise PSBTError(f"{where}: public key of {len(data)} bytes (must be 33 or 65)")
    try:
        PublicKey(data)
    except Exception:
        raise PSBTError(f"{where}: not a valid public key") from None


def _compressed_pubkeys(data: bytes, where: str) -> None:
    if not data or len(data) % 33:
        raise PSBTError(f"{where}: not a list of 33-byte public keys")
    for k in range(0, len(data), 33):
        if data[k] not in (2, 3):
            raise PSBTError(f"{where}: not a compressed public key")
        _pubkey(data[k:k + 33], where)


def _musig_ids(data: bytes, where: str) -> None:
    """Participant key, aggregate key and optional leaf hash (BIP-373)."""
    if len(data) not in (66, 98):
        raise PSBTError(f"{where}: key data must be two 33-byte public keys and an optional leaf hash")
    _compressed_pubkeys(data[:66], where)


def _size(*sizes: int):
    def check(data: bytes, where: str) -> None:
        if len(data) not in sizes:
            raise PSBTError(f"{where}: {len(data)} bytes, must be {' or '.join(map(str, sizes))}")
    return check


def _anything(data: bytes, where: str) -> None:
    pass


def _keypath(value: bytes, where: str) -> None:
    if len(value) < 4 or len(value) % 4:
        raise PSBTError(f"{where}: not a 4-byte fingerprint followed by 4-byte path elements")


def _xpub(data: bytes, where: str) -> None:
    if len(data) != 78:
        raise PSBTError(f"{where}: key data must be a 78-byte extended public key, not {len(data)} bytes")
    _pubkey(data[45:], where)


def _xpub_depth(key_data: bytes, value: bytes, where: str) -> None:
    if len(value) // 4 - 1 != key_data[4]:
        raise PSBTError(f"{where}: derivation path has {len(value) // 4 - 1} steps but the key's depth is {key_data[4]}")


def _tap_keypath(value: bytes, where: str) -> None:
    r = _Reader(value)
    r.take(32 * r.compact(where), where)
    _keypath(value[r.pos:], where)


def _compact_value(value: bytes, where: str) -> None:
    r = _Reader(value)
    r.compact(where)
    r.finish(where)


def _txout(value: bytes, where: str) -> None:
    r = _Reader(value)
    r.take(8, where)
    r.blob(where)
    r.finish(where)


def _witness_stack(value: bytes, where: str) -> None:
    r = _Reader(value)
    for _ in range(r.compact(where)):
        r.blob(where)
    r.finish(where)


def _der_signature(value: bytes, where: str) -> None:
    """A DER signature with a defined sighash byte (BIP-66 strict encoding, as Bitcoin Core checks)."""
    s = value
    ok = 9 <= len(s) <= 73 and s[0] == 0x30 and s[1] == len(s) - 3 and s[2] == 0x02
    if ok:
        len_r = s[3]
        ok = 5 + len_r < len(s) and len_r + s[5 + len_r] + 7 == len(s)
    if ok:
        len_s = s[5 + len_r]
        r_, s_ = s[4:4 + len_r], s[6 + len_r:6 + len_r + len_s]
        ok = s[4 + len_r] == 0x02 and all(
            n and not n[0] & 0x80 and not (len(n) > 1 and n[0] == 0 and not n[1] & 0x80) for n in (r_, s_))
    if not ok:
        raise PSBTError(f"{where}: not a DER-encoded signature")
    if not 1 <= s[-1] & 0x7F <= 3:
        raise PSBTError(f"{where}: signature has an undefined sighash type 0x{s[-1]:02x}")


def _time_locktime(value: bytes, where: str) -> None:
    _size(4)(value, where)
    if int.from_bytes(value, "little") < LOCKTIME_THRESHOLD:
        raise PSBTError(f"{where}: {int.from_bytes(value, 'little')} is not a time (must be >= 500000000)")


def _height_locktime(value: bytes, where: str) -> None:
    _size(4)(value, where)
    if not 0 < int.from_bytes(value, "little") < LOCKTIME_THRESHOLD:
        raise PSBTError(f"{where}: {int.from_bytes(value, 'little')} is not a block height (must be 1 to 499999999)")


def _leaf_script(value: bytes, where: str) -> None:
    if not value:
        raise PSBTError(f"{where}: empty (must be the script followed by its leaf version)")


def _control_block(data: bytes, where: str) -> None:
    if len(data) < 33 or (len(data) - 33) % 32 or len(data) > 33 + 32 * TAPROOT_MAX_DEPTH:
        raise PSBTError(f"{where}: control block of {len(data)} bytes (must be 33 + 32k, k <= 128)")


def _tap_tree(value: bytes, where: str) -> None:
    """Leaves in depth-first order, (depth, leaf version, script), forming one complete tree."""
    if not value:
        raise PSBTError(f"{where}: empty taproot tree")
    r, pending = _Reader(value), []        # depths of subtrees still waiting for a sibling
    while not r.at_end():
        depth, leaf_version = r.take(2, where)
        r.blob(where)
        if depth > TAPROOT_MAX_DEPTH or leaf_version & 1:
            raise PSBTError(f"{where}: leaf with depth {depth} or leaf version 0x{leaf_version:02x} invalid")
        if (pending and depth < pending[-1]) or pending == [0]:
            raise PSBTError(f"{where}: leaves do not form a taproot tree")
        while pending and pending[-1] == depth:     # a sibling is waiting: join them into their parent
            if depth == 0:
                raise PSBTError(f"{where}: leaves do not form a taproot tree")
            pending.pop()
            depth -= 1
        pending.append(depth)
    if pending != [0]:
        raise PSBTError(f"{where}: leaves do not form a complete taproot tree")


def _preimage(hash_fn):
    def check(key_data: bytes, value: bytes, where: str) -> None:
        if hash_fn(value) != key_data:
            raise PSBTError(f"{where}: the preimage does not hash to the key")
    return check


def _proprietary(data: bytes, where: str) -> None:
    r = _Reader(data)
    r.blob(f"{where} identifier")
    r.compact(f"{where} subtype")


# -- the maps ---------------------------------------------------------------------------------
# type: (name, check of the key data, check of the value[, check of key data and value together])
GLOBAL_FIELDS = {
    0x00: ("PSBT_GLOBAL_UNSIGNED_TX", _no_key_data, _anything),     # parsed on its own
    0x01: ("PSBT_GLOBAL_XPUB", _xpub, _keypath, _xpub_depth),
    0x02: ("PSBT_GLOBAL_TX_VERSION", _no_key_data, _size(4)),
    0x03: ("PSBT_GLOBAL_FALLBACK_LOCKTIME", _no_key_data, _size(4)),
    0x04: ("PSBT_GLOBAL_INPUT_COUNT", _no_key_data, _compact_value),
    0x05: ("PSBT_GLOBAL_OUTPUT_COUNT", _no_key_data, _compact_value),
    0x06: ("PSBT_GLOBAL_TX_MODIFIABLE", _no_key_data, _size(1)),
    0xFB: ("PSBT_GLOBAL_VERSION", _no_key_data, _size(4)),
    0xFC: ("PSBT_GLOBAL_PROPRIETARY", _proprietary, _anything),
}
INPUT_FIELDS = {
    0x00: ("PSBT_IN_NON_WITNESS_UTXO", _no_key_data, _anything),    # parsed on its own
    0x01: ("PSBT_IN_WITNESS_UTXO", _no_key_data, _txout),
    0x02: ("PSBT_IN_PARTIAL_SIG", _pubkey, _der_signature),
    0x03: ("PSBT_IN_SIGHASH_TYPE", _no_key_data, _size(4)),
    0x04: ("PSBT_IN_REDEEM_SCRIPT", _no_key_data, _anything),
    0x05: ("PSBT_IN_WITNESS_SCRIPT", _no_key_data, _anything),
    0x06: ("PSBT_IN_BIP32_DERIVATION", _pubkey, _keypath),
    0x07: ("PSBT_IN_FINAL_SCRIPTSIG", _no_key_data, _anything),
    0x08: ("PSBT_IN_FINAL_SCRIPTWITNESS", _no_key_data, _witness_stack),
    0x09: ("PSBT_IN_POR_COMMITMENT", _no_key_data, _anything),
    0x0A: ("PSBT_IN_RIPEMD160", _size(20), _anything, _preimage(ripemd160)),
    0x0B: ("PSBT_IN_SHA256", _size(32), _anything, _preimage(lambda b: hashlib.sha256(b).digest())),
    0x0C: ("PSBT_IN_HASH160", _size(20), _anything, _preimage(hash160)),
    0x0D: ("PSBT_IN_HASH256", _size(32), _anything, _preimage(_sha256d)),
    0x0E: ("PSBT_IN_PREVIOUS_TXID", _no_key_data, _size(32)),
    0x0F: ("PSBT_IN_OUTPUT_INDEX", _no_key_data, _size(4)),
    0x10: ("PSBT_IN_SEQUENCE", _no_key_data, _size(4)),
    0x11: ("PSBT_IN_REQUIRED_TIME_LOCKTIME", _no_key_data, _time_locktime),
    0x12: ("PSBT_IN_REQUIRED_HEIGHT_LOCKTIME", _no_key_data, _height_locktime),
    0x13: ("PSBT_IN_TAP_KEY_SIG", _no_key_data, _size(64, 65)),
    0x14: ("PSBT_IN_TAP_SCRIPT_SIG", _size(64), _size(64, 65)),
    0x15: ("PSBT_IN_TAP_LEAF_SCRIPT", _control_block, _leaf_script),
    0x16: ("PSBT_IN_TAP_BIP32_DERIVATION", _size(32), _tap_keypath),
    0x17: ("PSBT_IN_TAP_INTERNAL_KEY", _no_key_data, _size(32)),
    0x18: ("PSBT_IN_TAP_MERKLE_ROOT", _no_key_data, _size(32)),
    0x1A: ("PSBT_IN_MUSIG2_PARTICIPANT_PUBKEYS", _compressed_pubkeys, _compressed_pubkeys),
    0x1B: ("PSBT_IN_MUSIG2_PUB_NONCE", _musig_ids, _size(66)),
    0x1C: ("PSBT_IN_MUSIG2_PARTIAL_SIG", _musig_ids, _size(32)),
    0xFC: ("PSBT_IN_PROPRIETARY", _proprietary, _anything),
}
OUTPUT_FIELDS = {
    0x00: ("PSBT_OUT_REDEEM_SCRIPT", _no_key_data, _anything),
    0x01: ("PSBT_OUT_WITNESS_SCRIPT", _no_key_data, _anything),
    0x02: ("PSBT_OUT_BIP32_DERIVATION", _pubkey, _keypath),
    0x03: ("PSBT_OUT_AMOUNT", _no_key_data, _size(8)),
    0x04: ("PSBT_OUT_SCRIPT", _no_key_data, _anything),
    0x05: ("PSBT_OUT_TAP_INTERNAL_KEY", _no_key_data, _size(32)),
    0x06: ("PSBT_OUT_TAP_TREE", _no_key_data, _tap_tree),
    0x07: ("PSBT_OUT_TAP_BIP32_DERIVATION", _size(32), _tap_keypath),
    0x08: ("PSBT_OUT_MUSIG2_PARTICIPANT_PUBKEYS", _compressed_pubkeys, _compressed_pubkeys),
    0xFC: ("PSBT_OUT_PROPRIETARY", _proprietary, _anything),
}
# which fields each PSBT version requires and forbids, per map
V0_ONLY = {"global": {0x00}, "input": set(), "output": set()}
V2_ONLY = {"global": {0x02, 0x03, 0x04, 0x05, 0x06}, "input": {0x0E, 0x0F, 0x10, 0x11, 0x12},
           "output": {0x03, 0x04}}
REQUIRED = {0: {"global": {0x00}, "input": set(), "output": set()},
            2: {"global": {0x02, 0x04, 0x05}, "input": {0x0E, 0x0F}, "output": {0x03, 0x04}}}


class _Map:
    """One map's entries, by key; `fields` names and checks the known types."""

    def __init__(self, where: str, fields: dict):
        self.where, self.fields = where, fields
        self.entries: dict[bytes, tuple[int, bytes, bytes]] = {}     # key -> (type, key data, value)

    def name(self, key_type: int) -> str:
        return self.fields[key_type][0] if key_type in self.fields else f"type 0x{key_type:02x}"

    def get(self, key_type: int) -> bytes | None:
        """The value of a field whose key is the type alone."""
        entry = self.entries.get(_ser_compact(key_type))
        return entry[2] if entry else None

    def count(self, *types: int) -> int:
        return sum(1 for t, _, _ in self.entries.values() if t in types)

    def types(self) -> set[int]:
        return {t for t, _, _ in self.entries.values()}


def _read_map(r: _Reader, where: str, fields: dict) -> _Map:
    m = _Map(where, fields)
    while True:
        key = r.blob(f"{where} key")
        if not key:                        # a zero-length key is the separator ending the map
            return m
        value = r.blob(f"{where} value")
        if key in m.entries:
            raise PSBTError(f"{where}: duplicate key 0x{_short_hex(key)}")
        kr = _Reader(key)
        key_type = kr.compact(f"{where} key type")
        key_data = key[kr.pos:]
        if key_type in fields:
            name, check_key, check_value, *check_both = fields[key_type]
            check_key(key_data, f"{where} {name} key")
            check_value(value, f"{where} {name}")
            for check in check_both:
                check(key_data, value, f"{where} {name}")
        m.entries[key] = (key_type, key_data, value)


def _short_hex(b: bytes) -> str:
    return b.hex() if len(b) <= 8 else f"{b[:8].hex()}… ({len(b)} bytes)"


def _check_version_fields(m: _Map, kind: str, version: int) -> None:
    forbidden = sorted(m.types() & (V2_ONLY[kind] if version == 0 else V0_ONLY[kind]))
    if forbidden:
        raise PSBTError(f"{m.where}: {m.name(forbidden[0])} is not allowed in PSBT version {version}")
    missing = sorted(REQUIRED[version][kind] - m.types())
    if missing:
        raise PSBTError(f"{m.where}: PSBT version {version} requires {m.name(missing[0])}")


def _u32(value: bytes) -> int:
    return int.from_bytes(value, "little")


# -- the whole PSBT ---------------------------------------------------------------------------
def check_psbt(data: bytes | str, network: str = "regtest") -> dict:
    """A JSON-able summary of a well-formed PSBT; PSBTError naming the first problem otherwise.

    `data` is binary, hex or base64. `network` ("main", "test", "testnet4", "signet", "regtest")
    only chooses how output addresses are written. The summary:

    - version: 0 or 2; tx_version, locktime: the transaction's (v2: locktime as BIP-370 determines it)
    - txid: the transaction's id without witnesses (v0: the unsigned transaction; v2: built from the
      fields, sequences from PSBT_IN_SEQUENCE or 0xffffffff); unique_id: BIP-370's identification
      (v0: the txid; v2: the same transaction with every sequence 0)
    - inputs: outpoint, value (sats, None if no UTXO is given), has_witness_utxo,
      has_non_witness_utxo, sighash (None if unset), partial_signatures (ECDSA and taproot),
      bip32_derivations (BIP-32 and taproot), finalized
    - outputs: value, script_pubkey (hex), address (None if the script has none)
    - fee: inputs minus outputs when every input's value is known, else None
    - global_xpubs: how many; complete: every input finalized (and there is at least one)
    - warnings: inconsistencies that are not malformations (a witness UTXO contradicting the
      previous transaction)
    """
    if network not in ("main", "test", "testnet4", "signet", "regtest"):
        raise ValueError(f"unknown network {network!r}")
    raw = decode(data)
    r = _Reader(raw, len(MAGIC))
    glob = _read_map(r, "global map", GLOBAL_FIELDS)
    version = _u32(glob.get(0xFB)) if glob.get(0xFB) is not None else 0
    if version not in (0, 2):
        raise PSBTError(f"unsupported PSBT version {version} (there are versions 0 and 2)")
    _check_version_fields(glob, "global", version)

    if version == 0:
        tx = _parse_unsigned_tx(glob.get(0x00))
        n_in, n_out = len(tx["inputs"]), len(tx["outputs"])
        counted = "the unsigned transaction has"
    else:
        tx = {"version": struct.unpack("<i", glob.get(0x02))[0], "inputs": [], "outputs": []}
        n_in, n_out = (_Reader(glob.get(t)).compact("count") for t in (0x04, 0x05))
        counted = "PSBT_GLOBAL_INPUT_COUNT and PSBT_GLOBAL_OUTPUT_COUNT say"

    maps = []
    for kind, n, fields in (("input", n_in, INPUT_FIELDS), ("output", n_out, OUTPUT_FIELDS)):
        for i in range(n):
            if r.at_end():
                raise PSBTError(f"{counted} {n_in} inputs and {n_out} outputs, but the PSBT ends "
                                f"after {i} {kind} maps")
            m = _read_map(r, f"{kind} {i}", fields)
            _check_version_fields(m, kind, version)
            maps.append((kind, i, m))
    if not r.at_end():
        raise PSBTError(f"{len(raw) - r.pos} bytes of trailing data after the last output map "
                        f"({counted} {n_in} inputs and {n_out} outputs)")

    warnings: list[str] = []
    inputs = [_input(i, m, tx, version, warnings) for kind, i, m in maps if kind == "input"]
    outputs = [_output(i, m, tx, version, network) for kind, i, m in maps if kind == "output"]
    if version == 2:
        tx["locktime"] = _v2_locktime(glob, [m for kind, _, m in maps if kind == "input"])
        tx["txid"] = _txid(tx["version"], tx["inputs"], tx["outputs"], tx["locktime"])
        unique_id = _txid(tx["version"], tx["inputs"], tx["outputs"], tx["locktime"], sequence=0)
    else:
        unique_id = tx["txid"]

    values = [i["value"] for i in inputs]
    fee = sum(values) - sum(o["value"] for o in outputs) if values and None not in values else None
    return {"version": version, "txid": tx["txid"], "unique_id": unique_id, "tx_version": tx["version"],
            "locktime": tx["locktime"], "inputs": inputs, "outputs": outputs, "fee": fee,
            "global_xpubs": glob.count(0x01), "complete": bool(inputs) and all(i["finalized"] for i in inputs),
            "warnings": warnings}


def _input(i: int, m: _Map, tx: dict, version: int, warnings: list[str]) -> dict:
    if version == 2:
        sequence = m.get(0x10)
        prevout = {"txid": m.get(0x0E)[::-1].hex(), "vout": _u32(m.get(0x0F)), "script_sig": b"",
                   "sequence": _u32(sequence) if sequence is not None else 0xFFFFFFFF}
        tx["inputs"].append(prevout)
    else:
        prevout = tx["inputs"][i]

    spent = None                                   # the output spent, when the PSBT says
    if m.get(0x00) is not None:
        prev = _parse_tx(m.get(0x00), f"input {i} PSBT_IN_NON_WITNESS_UTXO", allow_witness=True)
        if prev["witness_flag"] and not prev["has_witness"]:
            raise PSBTError(f"input {i} PSBT_IN_NON_WITNESS_UTXO has the witness flag but no witness data")
        if prev["txid"] != prevout["txid"]:
            raise PSBTError(f"input {i}: PSBT_IN_NON_WITNESS_UTXO is transaction {prev['txid']}, "
                            f"not {prevout['txid']} which the input spends")
        if prevout["vout"] >= len(prev["outputs"]):
            raise PSBTError(f"input {i}: spends output {prevout['vout']} of a transaction with "
                            f"{len(prev['outputs'])} outputs")
        spent = prev["outputs"][prevout["vout"]]
    if m.get(0x01) is not None:
        wr = _Reader(m.get(0x01))
        witness_utxo = {"value": struct.unpack("<q", wr.take(8, "witness utxo"))[0], "script": wr.blob("witness utxo")}
        if spent is not None and spent != witness_utxo:
            warnings.append(f"input {i}: PSBT_IN_WITNESS_UTXO disagrees with the output of "
                            f"PSBT_IN_NON_WITNESS_UTXO it spends; the latter (verified by its txid) is used")
        spent = spent or witness_utxo

    sighash = m.get(0x03)
    return {"outpoint": f"{prevout['txid']}:{prevout['vout']}",
            "value": spent["value"] if spent else None,
            "has_witness_utxo": m.get(0x01) is not None,
            "has_non_witness_utxo": m.get(0x00) is not None,
            "sighash": _u32(sighash) if sighash is not None else None,
            "partial_signatures": m.count(0x02, 0x13, 0x14),
            "bip32_derivations": m.count(0x06, 0x16),
            "finalized": m.get(0x07) is not None or m.get(0x08) is not None}


def _output(i: int, m: _Map, tx: dict, version: int, network: str) -> dict:
    if version == 2:
        out = {"value": struct.unpack("<q", m.get(0x03))[0], "script": m.get(0x04)}
        tx["outputs"].append(out)
    else:
        out = tx["outputs"][i]
    return {"value": out["value"], "script_pubkey": out["script"].hex(),
            "address": _address(out["script"], network)}


def _address(script: bytes, network: str) -> str | None:
    net = NETWORKS["test" if network == "testnet4" else network]
    try:
        return Script(script).address(net)
    except Exception:
        pass
    # segwit versions 2 to 16, which embit does not name
    if 4 <= len(script) <= 42 and 0x52 <= script[0] <= 0x60 and script[1] == len(script) - 2:
        return bech32.encode(net["bech32"], script[0] - 0x50, script[2:])
    return None


def _v2_locktime(glob: _Map, inputs: list[_Map]) -> int:
    """BIP-370's locktime determination: the fallback when no input requires a locktime; else the
    kind (height preferred) every input with a requirement accepts, at its largest value."""
    required = [(m.get(0x12), m.get(0x11)) for m in inputs if m.get(0x11) is not None or m.get(0x12) is not None]
    if not required:
        fallback = glob.get(0x03)
        return _u32(fallback) if fallback is not None else 0
    for kind in (0, 1):                                  # height first, then time
        if all(req[kind] is not None for req in required):
            return max(_u32(req[kind]) for req in required)
    raise PSBTError("no locktime satisfies every input: some require a block height and others a time")
