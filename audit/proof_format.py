"""The shape of a proof of reserves: its message, its commitment input and its one output.

A proof is one transaction that can never be mined (version 2, locktime 0, final sequences). Input 0 commits to the message; inputs 1..n are the
coins being proven, each signed SIGHASH_ALL so every signature commits to input 0 and so to the message;
the one output is OP_RETURN and burns exactly the coins' total, so the fee is zero and the signatures also
commit to the amount claimed.

Input 0 takes one of two standard forms:
- ``bip322``: it spends output 0 of BIP-322's virtual ``to_spend`` transaction for the message, whose
  challenge script is OP_TRUE (the proof-of-funds form: no key has to sign the challenge itself);
  ``to_spend`` spends the null outpoint, so neither it nor anything spending it can be mined.
- ``bip127``: it spends the made-up outpoint ``SHA-256("Proof-of-Reserves: " + message):0`` of BIP-127.

The message names the custodian, the audit, the auditor's nonce and a recent block, so a proof cannot be
replayed into another audit or made before the auditor's chosen height. Signers and the auditor read it
with `parse_message`, which accepts exactly what `compose_message` writes.
"""
from __future__ import annotations

import re

from embit import hashes
from embit.script import Script
from embit.transaction import Transaction, TransactionInput, TransactionOutput

from . import commitment

KINDS = ("bip322", "bip127")
PACKAGE_FORMAT = "custody-proof-of-reserves/1"
VERSION = 2           # BIP-322 allows 0 or 2 for a full proof; PSBT tools (embit) rewrite 0 as 2 anyway
FINAL = 0xFFFFFFFF    # no time lock: the proof is valid now, not "at time T and age S"
OP_TRUE = b"\x51"
OP_RETURN = b"\x6a"
BIP322_TAG = "BIP0322-signed-message"
HEADER = "Proof of reserves"
_FIELDS = ("custodian", "audit", "nonce", "recent block", "height")
_TEXT = re.compile(r"[ -~]{1,80}")                   # printable ASCII, as a signer's screen shows it
_NONCE = re.compile(r"[A-Za-z0-9._:-]{8,128}")
_HASH = re.compile(r"[0-9a-f]{64}")
PSBT_GLOBAL_GENERIC_SIGNED_MESSAGE = b"\x09"       # BIP-322, in the PSBT's global map
PSBT_IN_POR_COMMITMENT = b"\x09"                   # BIP-127, in input 0's map


class ProofFormatError(ValueError):
    """A message or transaction that is not a proof of reserves in this shape."""


def compose_message(custodian: str, audit: str, nonce: str, recent_block: str, height: int) -> bytes:
    values = {"custodian": custodian, "audit": audit, "nonce": nonce, "recent block": recent_block,
              "height": str(height)}
    _check_fields(values)
    return "\n".join([HEADER, *(f"{k}: {values[k]}" for k in _FIELDS)]).encode()


def parse_message(message: bytes) -> dict:
    """The message's fields, or ProofFormatError; `height` comes back as an int."""
    try:
        lines = message.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise ProofFormatError("the message is not ASCII text") from None
    if len(lines) != len(_FIELDS) + 1 or lines[0] != HEADER:
        raise ProofFormatError(f"the message is not a proof-of-reserves message (it must start {HEADER!r} "
                               f"and have the lines {', '.join(_FIELDS)})")
    values = {}
    for name, line in zip(_FIELDS, lines[1:]):
        prefix = f"{name}: "
        if not line.startswith(prefix):
            raise ProofFormatError(f"message line {line[:40]!r} should be {prefix!r}")
        values[name] = line[len(prefix):]
    _check_fields(values)
    values["height"] = int(values["height"])
    return values


def _check_fields(values: dict) -> None:
    for name in ("custodian", "audit"):
        if not _TEXT.fullmatch(values[name]) or values[name] != values[name].strip():
            raise ProofFormatError(f"{name} must be 1-80 printable ASCII characters without surrounding spaces")
    if not _NONCE.fullmatch(values["nonce"]):
        raise ProofFormatError("the auditor's nonce must be 8-128 characters of letters, digits and . _ : -")
    if not _HASH.fullmatch(values["recent block"]):
        raise ProofFormatError("the recent block must be a block hash (64 lowercase hex digits)")
    if not re.fullmatch(r"0|[1-9][0-9]{0,8}", values["height"]):
        raise ProofFormatError("the height must be a whole number")


def to_spend(message: bytes) -> Transaction:
    """BIP-322's virtual transaction for `message` with the proof-of-funds challenge OP_TRUE: it spends the
    null outpoint with scriptSig OP_0 PUSH32[sha256_tag("BIP0322-signed-message", message)] and pays 0 to
    the challenge (as `custody.bitcoin.bip322.to_spend`, written out here so audit/ stands alone)."""
    tagged = hashes.tagged_hash(BIP322_TAG, message)
    vin = TransactionInput(b"\x00" * 32, 0xFFFFFFFF, Script(b"\x00\x20" + tagged), sequence=0)
    return Transaction(version=0, vin=[vin], vout=[TransactionOutput(0, Script(OP_TRUE))], locktime=0)


def commitment_outpoint(message: bytes, kind: str) -> bytes:
    """Input 0's previous txid for `message`, in embit's (display) byte order; its vout is always 0."""
    if kind == "bip322":
        return to_spend(message).txid()
    if kind == "bip127":
        return commitment.commitment(message)[::-1]
    raise ProofFormatError(f"unknown proof kind {kind!r} (expected one of {', '.join(KINDS)})")


def unsigned_proof(message: bytes, kind: str, coins: list[tuple[bytes, int, int]]) -> Transaction:
    """The transaction the quorum signs: commitment, then the coins (txid bytes, vout, amount) in order."""
    if not coins:
        raise ProofFormatError("a proof needs at least one coin")
    vin = [TransactionInput(commitment_outpoint(message, kind), 0, sequence=FINAL)]
    vin += [TransactionInput(txid, vout, sequence=FINAL) for txid, vout, _ in coins]
    total = sum(amount for _, _, amount in coins)
    return Transaction(version=VERSION, vin=vin, vout=[TransactionOutput(total, Script(OP_RETURN))], locktime=0)


def kind_of(tx: Transaction, message: bytes) -> str | None:
    """Which form input 0 of `tx` commits to `message` in, or None if it commits to something else."""
    if not tx.vin or tx.vin[0].vout != 0:
        return None
    for kind in KINDS:
        if tx.vin[0].txid == commitment_outpoint(message, kind):
            return kind
    return None
