"""BIP-127 proof files: a finalized PSBT whose input 0 carries the message in PSBT_IN_POR_COMMITMENT
(0x09) and whose other inputs carry their final witnesses (the custodian writes one with
`custody reserves export-bip127`). `read` reads one made by any tool, and
says which commitment variant its input 0 uses (`commitment.detect`): the BIP's own, or one of the
forms published tools use instead. `to_package` turns it into a package the verifier checks like
ours, looking up on the auditor's node only what a BIP-127 file does not carry (the heights the coins
were created at) and matching each coin to the declared descriptors; a non-standard commitment is
then reported invalid by the verifier, naming the variant.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass

from embit.psbt import PSBT
from embit.script import Script, Witness
from embit.transaction import Transaction, TransactionInput

from . import commitment, proof_format, txparse, verify
from .rpc import Node


class Bip127Error(ValueError):
    """A file that is not a BIP-127 proof, or that cannot be turned into a package."""


@dataclass
class Bip127Proof:
    message: bytes
    variant: str | None               # commitment.detect's name; None: input 0 commits to another message
    transaction: bytes                # the finalized proof transaction
    amounts: list[int]                # per coin input, as the file claims (witness_utxo)


def read(data: str | bytes) -> Bip127Proof:
    """A BIP-127 PSBT (base64 or binary): its message, commitment variant and finalized transaction."""
    try:
        raw = data if isinstance(data, bytes) and data[:5] == b"psbt\xff" else base64.b64decode(data.strip(),
                                                                                              validate=True)
        psbt = PSBT.parse(raw)
    except Exception as e:
        raise Bip127Error(f"not a PSBT ({e})") from None
    if not psbt.inputs:
        raise Bip127Error("the PSBT has no inputs")
    message = psbt.inputs[0].unknown.get(proof_format.PSBT_IN_POR_COMMITMENT)
    if message is None:
        raise Bip127Error("input 0 has no PSBT_IN_POR_COMMITMENT (0x09): not a BIP-127 proof")
    vin = []
    for n, scope in enumerate(psbt.inputs):
        witness = scope.final_scriptwitness
        if n > 0 and witness is None and scope.final_scriptsig is None:
            raise Bip127Error(f"input {n} is not finalized (no final_scriptwitness): the proof is not signed")
        vin.append(TransactionInput(scope.txid, scope.vout, sequence=0xFFFFFFFF if scope.sequence is None
                                    else scope.sequence, script_sig=scope.final_scriptsig or Script(b""),
                                    witness=witness or Witness([])))
    version = 2 if psbt.tx_version is None else psbt.tx_version      # the global transaction's, exactly
    tx = Transaction(version=version, locktime=psbt.locktime or 0, vin=vin, vout=[o.vout for o in psbt.outputs])
    raw_tx = tx.serialize()
    variant = commitment.detect(bytes.fromhex(txparse.parse(raw_tx).inputs[0].txid)[::-1], message)
    amounts = [scope.witness_utxo.value if scope.witness_utxo is not None else -1 for scope in psbt.inputs[1:]]
    return Bip127Proof(message, variant, raw_tx, amounts)


def to_package(proof: Bip127Proof, client: Node, *, descriptors: list[dict], height: int,
               network: str) -> dict:
    """A package for the verifier: coins matched to the declared descriptors (each dict as a package's
    `descriptors` entry), creation heights read from the node (`gettxout` for unspent coins)."""
    tx = txparse.parse(proof.transaction)
    scripts = {}
    for d, entry in enumerate(descriptors):
        descriptor, (low, high), _ = verify._declared(entry, network)
        branches: dict = {}
        for branch in (0, 1):
            for index in range(low, high + 1):
                scripts[verify._derive(descriptor, branch, index, branches)] = (d, branch, index)
    tip = client.getblockcount()
    outs = client.batch([("gettxout", [i.txid, i.vout, False]) for i in tx.inputs[1:]])
    coins = []
    for n, (inp, out, amount) in enumerate(zip(tx.inputs[1:], outs, proof.amounts), start=1):
        if not isinstance(out, dict):
            raise Bip127Error(f"input {n} ({inp.txid}:{inp.vout}) is not unspent on this node: its creation "
                              "height cannot be read without a transaction index")
        spk = bytes.fromhex(out["scriptPubKey"]["hex"])
        if spk not in scripts:
            raise Bip127Error(f"input {n} pays a script no declared descriptor derives within its range")
        d, branch, index = scripts[spk]
        coins.append({"outpoint": f"{inp.txid}:{inp.vout}", "amount": amount, "descriptor": d, "branch": branch,
                      "index": index, "height": tip - out["confirmations"] + 1, "coinbase": bool(out["coinbase"])})
    try:
        fields = proof_format.parse_message(proof.message)
    except proof_format.ProofFormatError:
        fields = {"custodian": "", "audit": "", "nonce": ""}   # a foreign message: the challenge check fails closed
    return {"format": proof_format.PACKAGE_FORMAT, "network": network, "kind": "bip127",
            "custodian": fields["custodian"], "audit": fields["audit"], "nonce": fields["nonce"],
            "message": proof.message.decode(errors="replace"), "height": height,
            "block_hash": client.getblockhash(height), "descriptors": descriptors, "coins": coins,
            "total": sum(c["amount"] for c in coins), "txid": tx.txid, "transaction": proof.transaction.hex()}


def declare(descriptor: str, last_index: int) -> dict:
    """A package's `descriptors` entry for a multisig descriptor the custodian declared, over 0..last_index."""
    body = descriptor.split("#")[0]
    match = verify._MULTISIG.match(body) or verify._TAPROOT_MULTISIG.match(body)
    if not match:
        raise Bip127Error(f"{body[:40]}… is not a multisig descriptor this verifier knows")
    m, keys = int(match.group(match.re.groups - 1)), match.group(match.re.groups).split(",")
    return {"descriptor": descriptor, "threshold": m, "keys": len(keys), "range": [0, last_index]}
