"""What the device verifies in a PSBT before it will sign, kept apart from what the PSBT claims.

The coordinator's PSBT is a set of claims: amounts, scripts, which outputs are change. The device
trusts none of it. It proves each fact itself and returns only proven facts (`Facts`):
- every input spends a distinct coin of one registered wallet, at a path it re-derives within a bounded index;
- every input carries its full previous transaction (`non_witness_utxo`), whose txid matches the
  outpoint and whose output agrees with `witness_utxo` in amount and script (a segwit v0 signature
  commits only to the amount it is told, so a lying amount would turn change into fee);
- only SIGHASH_ALL (or unset, meaning ALL) is signed;
- an output is change only if it re-derives from the same wallet within the bound; an output that
  claims to be change and does not is refused, not paid;
- an output is an address of another registered wallet (a watch-only custody wallet, or another wallet
  this device signs for) only if its script re-derives from that wallet within the bound, from a path
  the PSBT gives for the output; the policy can then require every destination to be one (`to_wallets`);
- the fee is within the device's caps.
The input checks (`prove_coins`) are the same for a proof of reserves's coins (`proofs`).
"""
from __future__ import annotations

from dataclasses import dataclass

from embit import bip32
from embit.networks import NETWORKS
from embit.psbt import PSBT
from embit.transaction import SIGHASH

from .wallets import MAX_INDEX, Wallet, derivation_in, proven_at


class SigningRefused(ValueError):
    """The device will not sign; the message names the check."""


@dataclass(frozen=True)
class Output:
    address: str
    value: int
    change: bool
    wallet: str | None = None          # the registered wallet whose script this is, proven; None if unproven


@dataclass(frozen=True)
class Facts:
    wallet: Wallet
    txid: str                          # the unsigned transaction's id: what approvers sign
    inputs_total: int
    outputs: tuple[Output, ...]
    fee: int
    vsize: int                          # of the finished transaction, estimated for the wallet's M-of-N

    @property
    def spent(self) -> int:
        """What leaves the wallet: every output that is not proven change."""
        return sum(o.value for o in self.outputs if not o.change)

    @property
    def destinations(self) -> list[str]:
        return [o.address for o in self.outputs if not o.change]

    @property
    def destination_wallets(self) -> list[str | None]:
        return [o.wallet for o in self.outputs if not o.change]


@dataclass(frozen=True)
class Coin:
    """An input proven to spend a coin of the wallet: this device's key for it and the coin's amount."""
    input: int
    branch: int
    index: int
    value: int


@dataclass(frozen=True)
class FeeCaps:
    max_fee: int = 5_000_000            # 0.05 BTC
    max_fee_rate: int = 1_000           # sat/vB


def inspect(psbt: PSBT, wallets: list[Wallet], root: bip32.HDKey, network: str,
            caps: FeeCaps, watch_only: list[Wallet] = ()) -> tuple[Facts, list[Coin]]:
    """Prove the facts, or raise SigningRefused. Returns the facts and the coins this device signs."""
    fingerprint = root.my_fingerprint
    if not psbt.inputs:
        raise SigningRefused("the PSBT has no inputs")
    wallet, coins = prove_coins(psbt, wallets, fingerprint)
    total = sum(c.value for c in coins)

    outputs = []
    for n, (out, meta) in enumerate(zip(psbt.tx.vout, psbt.outputs)):
        derivations = _derivations(meta)
        script_pubkey = out.script_pubkey.data
        change = _find_owner(derivations, [wallet], fingerprint, script_pubkey)[0] is not None
        proven = wallet.name if change else _proven_wallet(derivations, [*wallets, *watch_only], script_pubkey)
        # a path under this device's fingerprint that re-derives nowhere: change paid to someone else
        if proven is None and any(d.fingerprint == fingerprint for d in derivations):
            raise SigningRefused(f"output {n} claims to be change but does not derive from wallet "
                                 f"{wallet.name!r} within index {MAX_INDEX} (change substitution?)")
        outputs.append(Output(_describe(out.script_pubkey, network), out.value, change, proven))
    paid = sum(o.value for o in outputs)
    if paid > total:
        raise SigningRefused(f"the outputs ({paid} sat) exceed the inputs ({total} sat)")
    fee = total - paid
    vsize = _estimate_vsize(psbt, wallet)
    if fee > caps.max_fee:
        raise SigningRefused(f"fee {fee} sat is above this device's cap of {caps.max_fee} sat")
    if fee > caps.max_fee_rate * vsize:
        raise SigningRefused(f"fee rate {fee / vsize:.1f} sat/vB is above this device's cap of {caps.max_fee_rate}")
    facts = Facts(wallet, psbt.tx.txid().hex(), total, tuple(outputs), fee, vsize)
    return facts, coins


def prove_coins(psbt: PSBT, wallets: list[Wallet], fingerprint: bytes, first: int = 0) -> tuple[Wallet, list[Coin]]:
    """Prove that inputs `first`.. spend distinct coins of one registered wallet, with amounts from their
    previous transactions; spends check every input, proofs of reserves every input after the commitment."""
    wallet, coins = None, []
    outpoints: dict[tuple[bytes, int], int] = {}
    for n, inp in enumerate(psbt.inputs[first:], start=first):
        outpoint = (inp.txid, inp.vout)
        if outpoint in outpoints:                 # counted twice, it would inflate the inputs and hide a fee
            raise SigningRefused(f"input {n} spends the same coin as input {outpoints[outpoint]}")
        outpoints[outpoint] = n
        if inp.sighash_type not in (None, SIGHASH.ALL):
            raise SigningRefused(f"input {n} asks for sighash {inp.sighash_type}; this device signs SIGHASH_ALL only")
        prev = inp.non_witness_utxo
        if prev is None:
            raise SigningRefused(f"input {n} has no non_witness_utxo (its previous transaction is required)")
        if prev.txid() != inp.txid:
            raise SigningRefused(f"input {n}: the previous transaction's txid does not match the outpoint")
        if inp.vout >= len(prev.vout):
            raise SigningRefused(f"input {n}: the previous transaction has no output {inp.vout}")
        spent = prev.vout[inp.vout]
        if inp.witness_utxo is not None and (inp.witness_utxo.value != spent.value or
                                             inp.witness_utxo.script_pubkey != spent.script_pubkey):
            raise SigningRefused(f"input {n}: witness_utxo says {inp.witness_utxo.value} sat, the previous "
                                 f"transaction says {spent.value} sat (a lying amount)")
        owner, where = _find_owner(_derivations(inp), wallets, fingerprint, spent.script_pubkey.data)
        if owner is None:
            raise SigningRefused(f"input {n} is not a coin of a wallet registered on this device (a foreign input)")
        if wallet is not None and owner.name != wallet.name:
            raise SigningRefused("the inputs come from more than one registered wallet")
        if inp.witness_script is not None and inp.witness_script.data != owner.witness_script_at(*where):
            raise SigningRefused(f"input {n}: the witness script is not the wallet's")
        wallet = owner
        coins.append(Coin(n, *where, spent.value))
    return wallet, coins


def _describe(script_pubkey, network: str) -> str:
    """The output's address; a script with none (OP_RETURN, bare or non-standard scripts) is shown as its
    hex, so it is still a destination the policy sees (and no allow-list of addresses matches it)."""
    try:
        return script_pubkey.address(NETWORKS[network])
    except Exception:                              # embit raises ValueError/EmbitError for scripts without one
        return "script:" + script_pubkey.data.hex()


def _derivations(scope) -> list:
    """The BIP-32 derivations a PSBT input or output gives, segwit v0's and taproot's (x-only keys)."""
    return [*scope.bip32_derivations.values(), *(d for _leaves, d in scope.taproot_bip32_derivations.values())]


def _proven_wallet(derivations: list, wallets: list[Wallet], script_pubkey: bytes) -> str | None:
    """The registered wallet (watch-only or signing) whose script this is at one of the paths given."""
    for derivation in derivations:
        for wallet in wallets:
            if proven_at(wallet, list(derivation.derivation), script_pubkey) is not None:
                return wallet.name
    return None


def _find_owner(derivations: list, wallets: list[Wallet], fingerprint: bytes, script_pubkey: bytes):
    """The wallet and (branch, index) whose script this is, proven by re-deriving it."""
    for derivation in derivations:
        if derivation.fingerprint != fingerprint:
            continue
        for wallet in wallets:
            where = derivation_in(wallet, list(derivation.derivation))
            if where is not None and wallet.script_at(*where) == script_pubkey:
                return wallet, where
    return None, None


def _estimate_vsize(psbt: PSBT, wallet: Wallet) -> int:
    """vsize once finalised: M signatures (72 bytes each, at most) and the witness script per input; a single
    key's signature and public key (wpkh) or its one Schnorr signature (tr, 65 bytes with a sighash byte)."""
    base = len(psbt.tx.serialize())              # the unsigned transaction: no witness yet
    if wallet.kind == "wpkh":
        per_input = 1 + 1 + 73 + 1 + 33
    elif wallet.kind == "tr":
        per_input = 1 + 1 + 65
    else:
        per_input = 1 + 1 + wallet.threshold * 73 + 1 + 3 + 34 * wallet.keys + 1
    weight = base * 4 + 2 + per_input * len(psbt.inputs)
    return (weight + 3) // 4
