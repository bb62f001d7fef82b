"""What the device verifies in a proof-of-reserves PSBT before it signs (the shape is `audit.proof_format`'s).

A proof moves no money: input 0 spends an outpoint that cannot exist, so the transaction can never be
mined. What a signature does is vouch, under the message, that the wallet holds the coins. So the
device proves, as for a spend, that every coin input is a distinct coin of one registered wallet with
its amount taken from the previous transaction, and then that the signatures commit to exactly what
its holder is shown:
- the message is a proof-of-reserves message, and input 0 commits to this message (not another audit's);
- the one output is a bare OP_RETURN burning exactly the coins' total: SIGHASH_ALL then commits every
  signature to the message (through input 0), to every coin and to the amount claimed.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from embit import bip32
from embit.psbt import PSBT
from embit.transaction import Transaction, TransactionInput

from audit import proof_format

from .inspection import Coin, SigningRefused, prove_coins
from .protocol import POR_COMMITMENT, POR_MESSAGE
from .wallets import Wallet


class ExactPSBT(PSBT):
    """embit's PSBT rebuilds its transaction with `version or 2` and `sequence or 0xffffffff`, so a proof's
    version-0, sequence-0 transaction would be signed, and sent back, as another transaction. This one
    keeps the version and sequences the PSBT carries (for spends, which never use 0, nothing changes)."""

    @property
    def tx(self) -> Transaction:
        return self.TX_CLS(version=2 if self.tx_version is None else self.tx_version, locktime=self.locktime or 0,
                           vin=[TransactionInput(i.txid, i.vout, sequence=0xFFFFFFFF if i.sequence is None
                                                 else i.sequence) for i in self.inputs],
                           vout=[o.vout for o in self.outputs])


@dataclass(frozen=True)
class ProofFacts:
    wallet: Wallet
    txid: str
    message: bytes
    kind: str                          # how input 0 commits to the message: "bip322" or "bip127"
    total: int
    coins: int

    @property
    def message_sha256(self) -> str:
        return hashlib.sha256(self.message).hexdigest()


def is_proof(psbt: PSBT) -> bool:
    """A PSBT carrying a proof-of-reserves message (BIP-322's global field or BIP-127's input-0 field)."""
    return POR_MESSAGE in psbt.unknown or bool(psbt.inputs and POR_COMMITMENT in psbt.inputs[0].unknown)


def inspect_proof(psbt: PSBT, wallets: list[Wallet], root: bip32.HDKey) -> tuple[ProofFacts, list[Coin]]:
    """Prove the proof's facts, or raise SigningRefused. Returns them and the coins this device signs."""
    message = _message(psbt)
    kind = proof_format.kind_of(psbt.tx, message)
    if kind is None:
        raise SigningRefused("input 0 does not commit to this message (a proof made for another message or audit?)")
    commitment = psbt.inputs[0]
    if (kind == "bip322" and commitment.non_witness_utxo is not None
            and commitment.non_witness_utxo.serialize() != proof_format.to_spend(message).serialize()):
        raise SigningRefused("input 0's non_witness_utxo is not BIP-322's to_spend for this message")
    if commitment.bip32_derivations:
        raise SigningRefused("input 0 is the message's commitment: it carries no keys and is never signed")
    if len(psbt.inputs) < 2:
        raise SigningRefused("a proof needs at least one coin after the commitment input")
    wallet, coins = prove_coins(psbt, wallets, root.my_fingerprint, first=1)
    if wallet.kind == "tr":
        raise SigningRefused("proofs of reserves are signed for segwit v0 wallets only: a taproot signature "
                             "commits to input 0's coin too, which a proof does not have")
    total = sum(c.value for c in coins)
    if len(psbt.outputs) != 1:
        raise SigningRefused(f"a proof has exactly one output (an OP_RETURN burning the coins' total), "
                             f"not {len(psbt.outputs)}")
    out = psbt.tx.vout[0]
    if out.script_pubkey.data != proof_format.OP_RETURN:
        raise SigningRefused(f"the proof's output must be a bare OP_RETURN (6a), not {out.script_pubkey.data.hex()}")
    if out.value < total:
        raise SigningRefused(f"the output burns {out.value} sat of the coins' {total} sat: a proof has no fee "
                             f"(non-zero fee of {total - out.value} sat)")
    if out.value > total:
        raise SigningRefused(f"the output claims {out.value} sat, more than the coins hold ({total} sat)")
    return ProofFacts(wallet, psbt.tx.txid().hex(), message, kind, total, len(coins)), coins


def _message(psbt: PSBT) -> bytes:
    """The message, from whichever field carries it (the two must agree), if it parses."""
    fields = {psbt.unknown.get(POR_MESSAGE), psbt.inputs[0].unknown.get(POR_COMMITMENT) if psbt.inputs else None}
    fields.discard(None)
    if not fields:
        raise SigningRefused("the PSBT carries no proof-of-reserves message")
    if len(fields) > 1:
        raise SigningRefused("the PSBT's two message fields (global 0x09 and input 0's 0x09) differ")
    message = fields.pop()
    try:
        proof_format.parse_message(message)
    except proof_format.ProofFormatError as e:
        raise SigningRefused(f"not a proof-of-reserves message: {e}") from None
    return message
