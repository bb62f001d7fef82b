"""mempool.dat in Bitcoin Core's format (src/node/mempool_persist.cpp, version 2).

    u64 version (2) | compact-size 8, 8-byte obfuscation key |
    then, XORed with the key at each byte's file offset:
    u64 count | count x (transaction with witness, i64 entry time, i64 fee delta) |
    map of fee deltas (compact size, then txid + i64 each) | set of unbroadcast txids (compact size, txids)

Version 1 (no key) is read too, and so is the line format this node wrote before it used Core's
("ENTRY-TIME HEX" per line), so an older data directory keeps its mempool.
"""
from __future__ import annotations

import os
import struct

from .serialize import DecodeError, Reader, Tx, ser_compact_size

VERSION_NO_XOR_KEY = 1
VERSION = 2
KEY_SIZE = 8


def xor_at(data: bytes, key: bytes, offset: int) -> bytes:
    """`data` XORed with `key` as Core's obfuscation applies it: key byte (file offset mod key size)."""
    if not data or not any(key):
        return data
    r = offset % len(key)
    rotated = key[r:] + key[:r]
    pad = (rotated * (len(data) // len(key) + 1))[:len(data)]
    return (int.from_bytes(data, "little") ^ int.from_bytes(pad, "little")).to_bytes(len(data), "little")


def dump(entries: list[tuple[bytes, int]], key: bytes | None = None) -> bytes:
    """The file for `entries` of (transaction bytes with witness, entry time), parents before children."""
    key = os.urandom(KEY_SIZE) if key is None else key
    header = struct.pack("<Q", VERSION) + ser_compact_size(len(key)) + key
    body = [struct.pack("<Q", len(entries))]
    for raw, entry_time in entries:
        body.append(raw)
        body.append(struct.pack("<qq", entry_time, 0))   # no fee deltas: the node has no prioritisetransaction
    body.append(ser_compact_size(0))                       # mapDeltas
    body.append(ser_compact_size(0))                       # unbroadcast txids: no peers to broadcast to
    return header + xor_at(b"".join(body), key, len(header))


def load(data: bytes) -> list[tuple[Tx, int]]:
    """(transaction, entry time) in file order. Raises DecodeError for a file that is neither format."""
    if len(data) < 8:
        raise DecodeError("mempool file too short")
    version = struct.unpack("<Q", data[:8])[0]
    if version not in (VERSION_NO_XOR_KEY, VERSION):
        return _load_lines(data)
    r = Reader(data)
    r.read(8)
    key = b""
    if version == VERSION:
        key = r.string()
    r = Reader(xor_at(data[r.pos:], key, r.pos) if key else data[r.pos:])
    count = struct.unpack("<Q", r.read(8))[0]
    out = []
    for _ in range(count):
        tx = Tx.read(r)
        entry_time, _fee_delta = struct.unpack("<qq", r.read(16))
        out.append((tx, entry_time))
    for _ in range(r.compact_size()):       # fee deltas of transactions not in the file: nothing to apply them to
        r.read(40)
    for _ in range(r.compact_size()):
        r.read(32)
    return out


def _load_lines(data: bytes) -> list[tuple[Tx, int]]:
    try:
        lines = data.decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise DecodeError("not a mempool file") from None
    out = []
    for line in lines:
        entry_time, _, raw = line.rpartition(" ")
        try:
            out.append((Tx.parse(bytes.fromhex(raw)), int(entry_time)))
        except ValueError as e:
            raise DecodeError(f"bad mempool line: {e}") from None
    return out
