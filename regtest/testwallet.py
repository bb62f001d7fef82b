"""A minimal single-key wallet for regtest tests, benchmarks and demos.

It signs with embit, a library independent of the node, so that what the node accepts is checked
against signatures the node did not make.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from embit import ec, script
from embit.networks import NETWORKS
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput


@dataclass
class Utxo:
    txid: str
    vout: int
    value: int          # satoshis
    script_pubkey: bytes


class TestWallet:
    __test__ = False  # not a pytest test class

    def __init__(self, seed: str = "custody-regtest"):
        self.key = ec.PrivateKey(hashlib.sha256(seed.encode()).digest())
        self.pub = self.key.get_public_key()
        self.wpkh = script.p2wpkh(self.pub).data
        self.tr_key = self.key.taproot_tweak(b"")
        self.tr = script.p2tr(self.pub).data
        self.pkh = script.p2pkh(self.pub).data

    def address(self, kind: str = "wpkh") -> str:
        return script.Script(getattr(self, kind)).address(NETWORKS["regtest"])

    def sign(self, inputs: list[Utxo], outputs: list[tuple[bytes, int]], *, version: int = 2,
             locktime: int = 0, sequence: int = 0xFFFFFFFD, sighash: int | None = None) -> str:
        """Build and sign a transaction spending our own P2WPKH, P2TR or P2PKH coins; returns hex."""
        tx = Transaction(version=version, locktime=locktime,
                         vin=[TransactionInput(bytes.fromhex(u.txid), u.vout, sequence=sequence) for u in inputs],
                         vout=[TransactionOutput(value, script.Script(spk)) for spk, value in outputs])
        spks = [script.Script(u.script_pubkey) for u in inputs]
        values = [u.value for u in inputs]
        for i, u in enumerate(inputs):
            if u.script_pubkey == self.wpkh:
                sh = SIGHASH.ALL if sighash is None else sighash
                digest = tx.sighash_segwit(i, script.p2pkh(self.pub), u.value, sighash=sh)
                sig = self.key.sign(digest).serialize() + bytes([sh])
                tx.vin[i].witness = script.Witness([sig, self.pub.sec()])
            elif u.script_pubkey == self.tr:
                sh = SIGHASH.DEFAULT if sighash is None else sighash
                digest = tx.sighash_taproot(i, spks, values, sighash=sh)
                sig = self.tr_key.schnorr_sign(digest).serialize() + (bytes([sh]) if sh else b"")
                tx.vin[i].witness = script.Witness([sig])
            elif u.script_pubkey == self.pkh:
                sh = SIGHASH.ALL if sighash is None else sighash
                digest = tx.sighash_legacy(i, script.Script(self.pkh), sighash=sh)
                sig = self.key.sign(digest).serialize() + bytes([sh])
                tx.vin[i].script_sig = script.Script(bytes([len(sig)]) + sig + bytes([33]) + self.pub.sec())
            else:
                raise ValueError(f"input {i} is not this wallet's coin")
        return tx.serialize().hex()
