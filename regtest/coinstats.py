"""gettxoutsetinfo's statistics over the node's UTXO map, computed as Core's kernel/coinstats.cpp does.

hash_serialized_3 is SHA256d over every coin in the coins database's order (txid as stored, then
output index), each as outpoint || u32 (height << 1 | coinbase) || amount || script; muhash is Core's
MuHash3072 over the same serializations (each hashed with SHA-256 and expanded with ChaCha20 into a
3072-bit number, multiplied modulo 2^3072 - 1103717, the product's bytes hashed with SHA-256).
"""
from __future__ import annotations

import hashlib
import struct

from .serialize import ser_string

MUHASH_PRIME = 2**3072 - 1103717
HASH_TYPES = ("hash_serialized_3", "muhash", "none")


def coin_bytes(outpoint: tuple[bytes, int], coin) -> bytes:
    return (outpoint[0] + struct.pack("<IIq", outpoint[1], (coin.height << 1) | coin.coinbase, coin.value)
            + ser_string(coin.script_pubkey))


class MuHash3072:
    """Core's crypto/muhash: a set hash that elements can be multiplied into and divided out of."""

    def __init__(self):
        self.numerator = self.denominator = 1

    @staticmethod
    def element(data: bytes) -> int:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
        key = hashlib.sha256(data).digest()
        stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor().update(bytes(384))
        return int.from_bytes(stream, "little")

    def insert(self, data: bytes) -> None:
        self.numerator = self.numerator * self.element(data) % MUHASH_PRIME

    def remove(self, data: bytes) -> None:
        self.denominator = self.denominator * self.element(data) % MUHASH_PRIME

    def finalize(self) -> bytes:
        value = self.numerator * pow(self.denominator, -1, MUHASH_PRIME) % MUHASH_PRIME
        return hashlib.sha256(value.to_bytes(384, "little")).digest()


def utxo_stats(utxos: dict, hash_type: str) -> dict:
    """txouts, bogosize, total_amount (sats), transactions and, unless hash_type is 'none', the hash
    (bytes, in Core's internal order: display it reversed)."""
    hasher = hashlib.sha256() if hash_type == "hash_serialized_3" else None
    muhash = MuHash3072()
    txids = set()
    bogosize = total = 0
    for outpoint in sorted(utxos):
        coin = utxos[outpoint]
        txids.add(outpoint[0])
        total += coin.value
        bogosize += 32 + 4 + 4 + 8 + 2 + len(coin.script_pubkey)
        if hash_type == "hash_serialized_3":
            hasher.update(coin_bytes(outpoint, coin))
        elif hash_type == "muhash":
            muhash.insert(coin_bytes(outpoint, coin))
    stats = {"txouts": len(utxos), "bogosize": bogosize, "total_amount": total, "transactions": len(txids)}
    if hash_type == "hash_serialized_3":
        stats["hash"] = hashlib.sha256(hasher.digest()).digest()
    elif hash_type == "muhash":
        stats["hash"] = muhash.finalize()
    return stats
