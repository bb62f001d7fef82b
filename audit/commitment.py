"""BIP-127's commitment input, and the variants published tools use for it.

In BIP-127 input 0 of a proof-of-reserves transaction spends a non-existent outpoint whose txid is
`SHA-256("Proof-of-Reserves: " + message)`, vout 0, so the transaction commits to the message and can
never be mined. Tools in the wild disagree: some hash without the prefix, some use double SHA-256, and
the BIP does not fix the byte order of the txid. An importer recognises each and says which it found;
the verifier accepts only the BIP's own form.
"""
from __future__ import annotations

import hashlib

PREFIX = b"Proof-of-Reserves: "
STANDARD = "sha256 with prefix"


def _sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def variants(message: bytes) -> dict[str, bytes]:
    """Every known commitment for `message`, as the txid bytes in serialization (internal) order."""
    forms = {STANDARD: hashlib.sha256(PREFIX + message).digest(),
             "sha256 without prefix": hashlib.sha256(message).digest(),
             "double sha256 with prefix": _sha256d(PREFIX + message),
             "double sha256 without prefix": _sha256d(message)}
    out = {}
    for name, digest in forms.items():
        out[name] = digest
        out[name + ", byte-reversed"] = digest[::-1]
    return out


def commitment(message: bytes) -> bytes:
    """The BIP's commitment txid (internal byte order) for `message`."""
    return variants(message)[STANDARD]


def detect(commitment_txid: bytes, message: bytes) -> str | None:
    """Which variant `commitment_txid` (internal byte order) is for `message`; None if it commits to
    another message."""
    for name, digest in variants(message).items():
        if digest == commitment_txid:
            return name
    return None
