"""PSBTs for a policy's coins, with everything a strict signer needs to check them on its own.

Each segwit v0 input carries witness_utxo and the full previous transaction (non_witness_utxo, so a
signer can verify the amount), the witness script and every key's BIP-32 derivation; a taproot input
carries the BIP-371 fields (the taproot sighash commits to every input's amount already); the change output carries
its derivations too, so signers can recognise it; PSBT_GLOBAL_XPUB names every policy key. Inputs
signal RBF; the locktime is the tip height (anti fee sniping, as Bitcoin Core does).
"""
from __future__ import annotations

from dataclasses import dataclass

from coincurve import PublicKey
from embit import ec, hashes
from embit.psbt import DerivationPath, PSBT
from embit.script import Script
from embit.transaction import Transaction, TransactionInput, TransactionOutput

from custody.bitcoin.coin_selection import Candidate, select_coins, Selection
from custody.bitcoin.policies import NUMS_KEY, PolicySpec

RBF_SEQUENCE = 0xFFFFFFFD
TX_OVERHEAD_VBYTES = 10.5        # version, locktime, counts, segwit marker and flag
TAPSCRIPT_LEAF_VERSION = 0xC0


class BuildError(ValueError):
    """A spend that cannot be built as asked."""


@dataclass(frozen=True)
class Coin:
    txid: str
    vout: int
    value: int
    branch: int
    index: int
    script_pubkey: bytes

    @property
    def outpoint(self) -> str:
        return f"{self.txid}:{self.vout}"


@dataclass
class BuiltSpend:
    psbt: PSBT
    coins: list[Coin]
    fee: int
    change: int
    change_index: int | None
    vsize: int


def output_vbytes(script_pubkey: bytes) -> int:
    return 8 + 1 + len(script_pubkey)


def input_vbytes(spec: PolicySpec) -> float:
    """Spending one coin of the policy through its quorum path (worst-case 72-byte signatures)."""
    if spec.kind == "wpkh":                      # signature and public key
        return 41 + (1 + 1 + 73 + 1 + 33) / 4
    if spec.kind.startswith("wsh"):
        script = spec.embit(0).derive(0).witness_script().data
        stack = 1 + 1 + spec.threshold * 73 + (1 if len(script) < 253 else 3) + len(script)
        return 41 + stack / 4
    script, _, _ = taproot_leaf(spec, 0, 0)
    n = len(spec.keys)
    # signatures of 65 bytes: a signer may make SIGHASH_ALL explicit, and an estimate must not fall short
    stack = 1 + spec.threshold * 66 + (n - spec.threshold) + _compact_len(len(script)) + len(script) + 1 + 33
    return 41 + stack / 4


def _compact_len(n: int) -> int:
    return 1 if n < 253 else 3


def taproot_leaf(spec: PolicySpec, branch: int, index: int) -> tuple[bytes, bytes, bytes]:
    """(leaf script, leaf hash, control block) of a tr(NUMS, sortedmulti_a) coin's only script path."""
    derived = spec.embit(branch).derive(index)
    leaf = derived.taptree.tree
    script = Script(leaf.miniscript.compile()).data
    leaf_hash = hashes.tagged_hash("TapLeaf", leaf.serialize())
    internal = bytes.fromhex(NUMS_KEY)
    tweak = hashes.tagged_hash("TapTweak", internal + leaf_hash)
    parity = PublicKey(b"\x02" + internal).add(tweak).format()[0] & 1
    return script, leaf_hash, bytes([TAPSCRIPT_LEAF_VERSION | parity]) + internal


def plan_spend(spec: PolicySpec, coins: list[Coin], outputs: list[tuple[bytes, int]], *, fee_rate: float,
               change_spk: bytes | None, select: bool = True, sweep: bool = False
               ) -> tuple[list[Coin], list[tuple[bytes, int]], int, int]:
    """Which coins pay, the outputs (a sweep's amount filled in), the fee and the change, without
    building anything: what `build_spend` will do, and what a fee preview shows."""
    if fee_rate <= 0:
        raise BuildError("fee rate must be positive")
    for spk, value in outputs:
        if value <= 0 and not sweep:       # a sweep's one output takes whatever the coins hold
            raise BuildError("every output needs a positive amount")
    per_input = input_vbytes(spec)
    base = TX_OVERHEAD_VBYTES + sum(output_vbytes(spk) for spk, _ in outputs)
    if sweep:
        if len(outputs) != 1:
            raise BuildError("a sweep pays everything to exactly one destination")
        total = sum(c.value for c in coins)
        fee = _ceil((base + per_input * len(coins)) * fee_rate)
        if total - fee <= 330:
            raise BuildError("the chosen coins do not cover the fee of sweeping them")
        chosen, outputs, change_value = coins, [(outputs[0][0], total - fee)], 0
    else:
        target = sum(v for _, v in outputs)
        candidates = {c.outpoint: c for c in coins}
        if select:
            picked: Selection = select_coins(
                [Candidate(c.outpoint, c.value, per_input) for c in coins], target, fee_rate=fee_rate,
                base_vbytes=base, change_vbytes=output_vbytes(change_spk or b"\x00" * 34),
                change_spend_vbytes=per_input)
            chosen = [candidates[c.outpoint] for c in picked.coins]
            fee, change_value = picked.fee, picked.change
        else:
            chosen = coins
            with_change = base + per_input * len(chosen) + output_vbytes(change_spk or b"\x00" * 34)
            fee = _ceil(with_change * fee_rate)
            change_value = sum(c.value for c in chosen) - target - fee
            if change_value < 0:
                raise BuildError("the chosen coins cannot pay the amount plus fees")
            if change_value < 330:
                fee += change_value
                change_value = 0
    return chosen, outputs, fee, change_value


def build_spend(spec: PolicySpec, coins: list[Coin], outputs: list[tuple[bytes, int]], *, fee_rate: float,
                change: tuple[int, bytes] | None, previous_txs: dict[str, bytes], locktime: int,
                select: bool = True, sweep: bool = False, version: int = 0) -> BuiltSpend:
    """Choose coins (unless `select` is False: use all given coins) and build the PSBT.
    `change` is (index, scriptPubKey) of the next unused change address; `previous_txs` maps each
    candidate's txid to its raw transaction."""
    chosen, outputs, fee, change_value = plan_spend(spec, coins, outputs, fee_rate=fee_rate,
                                                    change_spk=change[1] if change else None,
                                                    select=select, sweep=sweep)
    if change_value and change is None:
        raise BuildError("no change address available")
    per_input = input_vbytes(spec)
    change_spk = change[1] if change else None
    base = TX_OVERHEAD_VBYTES + sum(output_vbytes(spk) for spk, _ in outputs)
    vout = [TransactionOutput(v, Script(spk)) for spk, v in outputs]
    change_position = None
    if change_value:
        change_position = len(vout)
        vout.append(TransactionOutput(change_value, Script(change_spk)))
    tx = Transaction(version=2, locktime=locktime,
                     vin=[TransactionInput(bytes.fromhex(c.txid), c.vout, sequence=RBF_SEQUENCE) for c in chosen],
                     vout=vout)
    psbt = PSBT(tx, unknown={}, version=2 if version == 2 else None)   # embit defaults to one shared dict
    if version == 2:
        psbt.tx_version, psbt.locktime = 2, locktime
    describe_inputs(psbt.inputs, spec, chosen, previous_txs)
    if change_position is not None:
        describe_output(psbt.outputs[change_position], spec, 1, change[0])
    for key in spec.all_keys:
        psbt.xpubs[key.hdkey] = DerivationPath(bytes.fromhex(key.fingerprint), list(key.path))
    vsize = _ceil(base + per_input * len(chosen) + (output_vbytes(change_spk) if change_value else 0))
    return BuiltSpend(psbt, chosen, fee, change_value, change[0] if change_value else None, vsize)


def describe_inputs(scopes: list, spec: PolicySpec, coins: list[Coin], previous_txs: dict[str, bytes]) -> None:
    """Fill each input scope (PSBT input map) with what a signer needs to check and sign its coin."""
    parsed: dict[str, Transaction] = {}
    branches = {0: spec.embit(0), 1: spec.embit(1)}
    for scope, coin in zip(scopes, coins):
        if coin.txid not in parsed:
            raw = previous_txs.get(coin.txid)
            if raw is None:
                raise BuildError(f"previous transaction {coin.txid} is not available from the node")
            parsed[coin.txid] = Transaction.parse(raw)
            if parsed[coin.txid].txid().hex() != coin.txid:     # hashed once per transaction, not per coin
                raise BuildError(f"the node's copy of transaction {coin.txid} has another txid")
        previous = parsed[coin.txid]
        if coin.vout >= len(previous.vout) or previous.vout[coin.vout].value != coin.value \
                or previous.vout[coin.vout].script_pubkey.data != coin.script_pubkey:
            raise BuildError(f"the node's copy of {coin.outpoint} does not match the ledger")
        scope.witness_utxo = previous.vout[coin.vout]
        if spec.kind == "tr-sortedmulti_a":
            _describe_taproot(scope, spec, coin.branch, coin.index)
            continue
        scope.non_witness_utxo = previous
        derived = branches[coin.branch].derive(coin.index)
        if spec.kind != "wpkh":
            scope.witness_script = derived.witness_script()
        for key in derived.keys:
            scope.bip32_derivations[key.get_public_key()] = DerivationPath(key.origin.fingerprint, key.origin.derivation)


def _describe_taproot(scope, spec: PolicySpec, branch: int, index: int) -> None:
    """BIP-371 fields: internal key (NUMS, no key path), merkle root, the leaf script with its control
    block, and each key's derivation with the leaf it signs in."""
    script, leaf_hash, control = taproot_leaf(spec, branch, index)
    scope.taproot_internal_key = ec.PublicKey.from_xonly(bytes.fromhex(NUMS_KEY))
    scope.taproot_merkle_root = leaf_hash
    scope.taproot_scripts[control] = script + bytes([TAPSCRIPT_LEAF_VERSION])
    for key in spec.embit(branch).derive(index).keys:
        if key.origin is None:        # the NUMS internal key: nobody holds it
            continue
        pub = ec.PublicKey.from_xonly(key.get_public_key().xonly())
        scope.taproot_bip32_derivations[pub] = ([leaf_hash], DerivationPath(key.origin.fingerprint, key.origin.derivation))


def describe_output(scope, spec: PolicySpec, branch: int, index: int) -> None:
    """An output of `spec` at branch/index: its keys' derivations (and witness script or taproot leaf),
    so a signer can re-derive it: change, or a sweep's custody destination."""
    if spec.kind == "tr-sortedmulti_a":
        script, leaf_hash, _ = taproot_leaf(spec, branch, index)
        scope.taproot_internal_key = ec.PublicKey.from_xonly(bytes.fromhex(NUMS_KEY))
        for key in spec.embit(branch).derive(index).keys:
            if key.origin is None:
                continue
            pub = ec.PublicKey.from_xonly(key.get_public_key().xonly())
            scope.taproot_bip32_derivations[pub] = ([leaf_hash], DerivationPath(key.origin.fingerprint, key.origin.derivation))
        return
    derived = spec.embit(branch).derive(index)
    if spec.kind != "wpkh":
        scope.witness_script = derived.witness_script()
    for key in derived.keys:
        scope.bip32_derivations[key.get_public_key()] = DerivationPath(key.origin.fingerprint, key.origin.derivation)


def _ceil(x: float) -> int:
    return int(-(-x // 1))
