"""Bitcoin transaction and block serialization, as consensus defines it.

The node parses every transaction it is given; this module is the one place that knows the
wire format. Hashes are kept in internal byte order; `.txid` / `.hash` give the familiar hex.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

COIN = 100_000_000
WITNESS_SCALE_FACTOR = 4


class DecodeError(ValueError):
    """Raised for bytes that are not a valid serialization."""


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def ser_compact_size(n: int) -> bytes:
    if n < 0xFD:
        return bytes((n,))
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    if n <= 0xFFFFFFFF:
        return b"\xfe" + struct.pack("<I", n)
    return b"\xff" + struct.pack("<Q", n)


def ser_string(b: bytes) -> bytes:
    return ser_compact_size(len(b)) + b


class Reader:
    """A cursor over bytes that raises DecodeError instead of running past the end."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def read(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise DecodeError("unexpected end of data")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def u8(self) -> int:
        return self.read(1)[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.read(4))[0]

    def i32(self) -> int:
        return struct.unpack("<i", self.read(4))[0]

    def i64(self) -> int:
        return struct.unpack("<q", self.read(8))[0]

    def compact_size(self) -> int:
        n = self.u8()
        if n < 0xFD:
            return n
        if n == 0xFD:
            v = struct.unpack("<H", self.read(2))[0]
            minimum = 0xFD
        elif n == 0xFE:
            v = struct.unpack("<I", self.read(4))[0]
            minimum = 0x10000
        else:
            v = struct.unpack("<Q", self.read(8))[0]
            minimum = 0x100000000
        if v < minimum:
            raise DecodeError("non-canonical compact size")
        if v > 0x02000000:
            raise DecodeError("compact size too large")
        return v

    def string(self) -> bytes:
        return self.read(self.compact_size())

    def at_end(self) -> bool:
        return self.pos == len(self.data)


@dataclass(slots=True)
class TxIn:
    prev_txid: bytes  # internal byte order
    prev_vout: int
    script_sig: bytes = b""
    sequence: int = 0xFFFFFFFF
    witness: list[bytes] = field(default_factory=list)

    @property
    def outpoint(self) -> tuple[bytes, int]:
        return (self.prev_txid, self.prev_vout)

    def is_null(self) -> bool:
        return self.prev_vout == 0xFFFFFFFF and self.prev_txid == b"\x00" * 32


@dataclass(slots=True)
class TxOut:
    value: int
    script_pubkey: bytes

    def serialize(self) -> bytes:
        return struct.pack("<q", self.value) + ser_string(self.script_pubkey)


class Tx:
    """A transaction with its hashes and sizes computed once, on demand."""

    __slots__ = ("version", "vin", "vout", "locktime", "_raw", "_raw_nowit", "_txid", "_wtxid")

    def __init__(self, version: int, vin: list[TxIn], vout: list[TxOut], locktime: int = 0):
        self.version = version
        self.vin = vin
        self.vout = vout
        self.locktime = locktime
        self._raw = self._raw_nowit = self._txid = self._wtxid = None

    # -- parsing -------------------------------------------------------------------------
    @classmethod
    def parse(cls, data: bytes, *, allow_witness: bool = True) -> "Tx":
        r = Reader(data)
        tx = cls.read(r, allow_witness=allow_witness)
        if not r.at_end():
            raise DecodeError("trailing bytes after transaction")
        return tx

    @classmethod
    def read(cls, r: Reader, *, allow_witness: bool = True) -> "Tx":
        start = r.pos
        version = r.i32()
        n_in = r.compact_size()
        flags = 0
        if n_in == 0 and allow_witness:
            flags = r.u8()
            if flags != 1:
                raise DecodeError("unknown transaction optional data")
            n_in = r.compact_size()
        vin = []
        for _ in range(n_in):
            txid = r.read(32)
            vout = r.u32()
            vin.append(TxIn(txid, vout, r.string(), r.u32()))
        vout = [TxOut(r.i64(), r.string()) for _ in range(r.compact_size())]
        if flags:
            for txin in vin:
                txin.witness = [r.string() for _ in range(r.compact_size())]
            if not any(txin.witness for txin in vin):
                raise DecodeError("superfluous witness record")
        locktime = r.u32()
        tx = cls(version, vin, vout, locktime)
        tx._raw = r.data[start:r.pos]
        if not flags:
            tx._raw_nowit = tx._raw
        return tx

    # -- serialization -------------------------------------------------------------------
    def has_witness(self) -> bool:
        return any(txin.witness for txin in self.vin)

    def _ser(self, with_witness: bool) -> bytes:
        parts = [struct.pack("<i", self.version)]
        witness = with_witness and self.has_witness()
        if witness:
            parts.append(b"\x00\x01")
        parts.append(ser_compact_size(len(self.vin)))
        for i in self.vin:
            parts += [i.prev_txid, struct.pack("<I", i.prev_vout), ser_string(i.script_sig),
                      struct.pack("<I", i.sequence)]
        parts.append(ser_compact_size(len(self.vout)))
        parts += [o.serialize() for o in self.vout]
        if witness:
            for i in self.vin:
                parts.append(ser_compact_size(len(i.witness)))
                parts += [ser_string(w) for w in i.witness]
        parts.append(struct.pack("<I", self.locktime))
        return b"".join(parts)

    def serialize(self) -> bytes:
        if self._raw is None:
            self._raw = self._ser(True)
        return self._raw

    def serialize_no_witness(self) -> bytes:
        if self._raw_nowit is None:
            self._raw_nowit = self._ser(False)
        return self._raw_nowit

    # -- identity and size ---------------------------------------------------------------
    @property
    def txid_bytes(self) -> bytes:
        if self._txid is None:
            self._txid = sha256d(self.serialize_no_witness())
        return self._txid

    @property
    def wtxid_bytes(self) -> bytes:
        if self._wtxid is None:
            self._wtxid = sha256d(self.serialize()) if self.has_witness() else self.txid_bytes
        return self._wtxid

    @property
    def txid(self) -> str:
        return self.txid_bytes[::-1].hex()

    @property
    def wtxid(self) -> str:
        return self.wtxid_bytes[::-1].hex()

    @property
    def size(self) -> int:
        return len(self.serialize())

    @property
    def weight(self) -> int:
        base = len(self.serialize_no_witness())
        return base * (WITNESS_SCALE_FACTOR - 1) + self.size

    @property
    def vsize(self) -> int:
        return (self.weight + WITNESS_SCALE_FACTOR - 1) // WITNESS_SCALE_FACTOR

    def is_coinbase(self) -> bool:
        return len(self.vin) == 1 and self.vin[0].is_null()


@dataclass(slots=True)
class BlockHeader:
    version: int
    prev_hash: bytes  # internal order
    merkle_root: bytes
    time: int
    bits: int
    nonce: int

    def serialize(self) -> bytes:
        return (struct.pack("<i", self.version) + self.prev_hash + self.merkle_root
                + struct.pack("<III", self.time, self.bits, self.nonce))

    @property
    def hash_bytes(self) -> bytes:
        return sha256d(self.serialize())

    @property
    def hash(self) -> str:
        return self.hash_bytes[::-1].hex()

    @classmethod
    def read(cls, r: Reader) -> "BlockHeader":
        version = r.i32()
        prev, merkle = r.read(32), r.read(32)
        time, bits, nonce = struct.unpack("<III", r.read(12))
        return cls(version, prev, merkle, time, bits, nonce)


@dataclass(slots=True)
class Block:
    header: BlockHeader
    txs: list[Tx]

    @classmethod
    def parse(cls, data: bytes) -> "Block":
        r = Reader(data)
        header = BlockHeader.read(r)
        txs = [Tx.read(r) for _ in range(r.compact_size())]
        if not r.at_end():
            raise DecodeError("trailing bytes after block")
        return cls(header, txs)

    def serialize(self) -> bytes:
        return b"".join([self.header.serialize(), ser_compact_size(len(self.txs))]
                        + [tx.serialize() for tx in self.txs])

    @property
    def hash(self) -> str:
        return self.header.hash

    @property
    def weight(self) -> int:
        nowit = 80 + len(ser_compact_size(len(self.txs))) + sum(len(t.serialize_no_witness()) for t in self.txs)
        return nowit * (WITNESS_SCALE_FACTOR - 1) + len(self.serialize())


def merkle_root(hashes: list[bytes]) -> bytes:
    """The merkle root of internal-order hashes, as in Bitcoin's block header."""
    if not hashes:
        return b"\x00" * 32
    level = list(hashes)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def bits_to_target(bits: int) -> int:
    exponent, mantissa = bits >> 24, bits & 0x007FFFFF
    if exponent <= 3:
        return mantissa >> (8 * (3 - exponent))
    return mantissa << (8 * (exponent - 3))
