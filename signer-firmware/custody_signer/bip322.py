"""BIP-322 "simple" signing, the device's half: the proof that it holds a key (proof of possession,
registration) is a BIP-322 signature of its P2WPKH address. The coordinator verifies it with its own
implementation (custody/bip322.py); both are checked against the BIP's vectors (tests/test_bip322.py)."""
from __future__ import annotations

import base64

from embit import ec, hashes, script
from embit.script import Script
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput

TAG = "BIP0322-signed-message"


def message_hash(message: bytes) -> bytes:
    return hashes.tagged_hash(TAG, message)


def to_spend(script_pubkey: bytes, message: bytes) -> Transaction:
    vin = TransactionInput(b"\x00" * 32, 0xFFFFFFFF, Script(b"\x00\x20" + message_hash(message)), sequence=0)
    return Transaction(version=0, vin=[vin], vout=[TransactionOutput(0, Script(script_pubkey))], locktime=0)


def to_sign(to_spend_tx: Transaction) -> Transaction:
    vin = TransactionInput(to_spend_tx.txid(), 0, sequence=0)
    return Transaction(version=0, vin=[vin], vout=[TransactionOutput(0, Script(b"\x6a"))], locktime=0)


def sign_p2wpkh(private_key: ec.PrivateKey, message: bytes) -> str:
    """The unprefixed simple signature for the key's P2WPKH address: SIGHASH_ALL, RFC 6979 nonce with
    Bitcoin Core's low-R grinding (embit's), so byte-identical to Core's."""
    if not private_key.compressed:
        raise ValueError("P2WPKH needs a compressed public key")
    pub = private_key.get_public_key()
    spk = script.p2wpkh(pub)
    tx = to_sign(to_spend(spk.data, message))
    sig = private_key.sign(tx.sighash_segwit(0, script.p2pkh_from_p2wpkh(spk), 0, SIGHASH.ALL))
    return base64.b64encode(script.witness_p2wpkh(sig, pub).serialize()).decode()
