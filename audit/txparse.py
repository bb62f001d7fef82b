"""A transaction's fields as plain Python values, read in one pass.

A proof of reserves is one transaction of up to hundreds of thousands of inputs; a general-purpose
library builds an object per input, script and witness item, which is most of the verifier's own time
at that size. The verifier needs only the fields below, so it reads them directly. Malformed input
raises ValueError; trailing bytes are refused.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

_U32, _U64, _OUTPOINT = struct.Struct("<I"), struct.Struct("<Q"), struct.Struct("<32sI")


@dataclass(slots=True)
class Input:
    txid: str                 # display (RPC) order, hex
    vout: int
    script_sig: bytes
    sequence: int
    witness: list[bytes]


@dataclass(slots=True)
class Tx:
    version: int
    inputs: list[Input]
    outputs: list[tuple[int, bytes]]      # (amount in satoshis, scriptPubKey)
    locktime: int
    txid: str


def _compact(raw: bytes, pos: int) -> tuple[int, int]:
    first = raw[pos]
    if first < 0xFD:
        return first, pos + 1
    size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
    return int.from_bytes(raw[pos + 1:pos + 1 + size], "little"), pos + 1 + size


def parse(raw: bytes) -> Tx:
    try:
        return _parse(bytes(raw))
    except (IndexError, struct.error):
        raise ValueError("the transaction ends early") from None


def _parse(raw: bytes) -> Tx:
    version, = _U32.unpack_from(raw, 0)
    count, pos = _compact(raw, 4)
    segwit = count == 0
    if segwit:
        if raw[pos] != 1:
            raise ValueError("unknown segwit flag")
        count, pos = _compact(raw, pos + 1)
    inputs = []
    append = inputs.append
    for _ in range(count):
        txid, vout = _OUTPOINT.unpack_from(raw, pos)
        n, pos = _compact(raw, pos + 36)
        script_sig = raw[pos:pos + n]
        sequence, = _U32.unpack_from(raw, pos + n)
        pos += n + 4
        append(Input(txid[::-1].hex(), vout, script_sig, sequence, []))
    outputs = []
    count, pos = _compact(raw, pos)
    for _ in range(count):
        amount, = _U64.unpack_from(raw, pos)
        n, pos = _compact(raw, pos + 8)
        outputs.append((amount, raw[pos:pos + n]))
        pos += n
    witness_start = pos
    if segwit:
        for inp in inputs:
            items, pos = _compact(raw, pos)
            witness = inp.witness
            for _ in range(items):
                n, pos = _compact(raw, pos)
                witness.append(raw[pos:pos + n])
                pos += n
    witness_end = pos
    locktime, = _U32.unpack_from(raw, pos)
    if pos + 4 != len(raw):
        raise ValueError("the transaction ends early or has bytes after it")
    stripped = raw[:4] + raw[6:witness_start] + raw[witness_end:] if segwit else raw
    txid = hashlib.sha256(hashlib.sha256(stripped).digest()).digest()[::-1].hex()
    return Tx(version, inputs, outputs, locktime, txid)
