"""Every input of a proof checked by Bitcoin Core's own script interpreter (libbitcoinkernel, through
py-bitcoinkernel), and the sighash byte inside every signature.

The interpreter decides whether the witness satisfies the coin's script under consensus rules, with
the spent amounts and scripts the auditor's node reported (never the package's). Consensus accepts
any sighash type, so the signature bytes are read separately: a SIGHASH_ANYONECANPAY, NONE or SINGLE
signature does not commit to input 0 (the message) or to the output, so it could be replayed under
another message; only ALL (and DEFAULT for taproot) is accepted, strictly DER-encoded with low S.

The inputs are split across processes (one per core): each builds the kernel's transaction and its
precomputed sighash data once, then verifies its share of the inputs.

Two facts about py-bitcoinkernel 0.1.0a5, measured (bench/reserves.py): precomputed data made with the
spent outputs costs time proportional to the number of inputs on every call (the outputs are copied), so
a 100,000-input proof would take minutes; made without them, a call costs what its signatures cost. The
spent outputs are only needed for taproot, so segwit v0 inputs are checked with precomputed data without
them and every consensus flag but TAPROOT (which changes nothing for a v0 program), and taproot inputs
with the outputs and every flag. And `pbk.Transaction(bytes)` copies its argument byte by byte through
ctypes; `_kernel_transaction` hands it one buffer instead.
"""
from __future__ import annotations

import ctypes
import hashlib
import multiprocessing
import os

import pbk
from pbk.capi import KernelOpaquePtr

FLAGS = pbk.ScriptVerificationFlags.ALL
FLAGS_V0 = FLAGS & ~pbk.ScriptVerificationFlags.TAPROOT
_N_HALF = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0
_TX: tuple | None = None            # (raw transaction, spent outputs) for the worker processes


def _is_taproot(script_pubkey: bytes) -> bool:
    return len(script_pubkey) == 34 and script_pubkey[:2] == b"\x51\x20"


def _kernel_transaction(raw: bytes) -> pbk.Transaction:
    tx = pbk.Transaction.__new__(pbk.Transaction)
    KernelOpaquePtr.__init__(tx, (ctypes.c_ubyte * len(raw)).from_buffer_copy(raw), len(raw))
    return tx


def _verify_range(bounds: tuple[int, int]) -> list[tuple[int, str]]:
    raw, spent = _TX
    tx = _kernel_transaction(raw)
    v0_data = pbk.script.PrecomputedTransactionData(tx, None)
    taproot_data = None
    scripts: dict[bytes, pbk.ScriptPubkey] = {}
    failures = []
    for i in range(*bounds):
        script, amount = spent[i]
        checker = scripts.get(script)
        if checker is None:
            checker = scripts[script] = pbk.ScriptPubkey(script)
        if _is_taproot(script):
            if taproot_data is None:
                taproot_data = pbk.script.PrecomputedTransactionData(
                    tx, [pbk.TransactionOutput(pbk.ScriptPubkey(s), a) for s, a in spent])
            data, flags = taproot_data, FLAGS
        else:
            data, flags = v0_data, FLAGS_V0
        try:
            ok = checker.verify(amount, tx, data, i, flags)
        except pbk.ScriptVerifyException as e:
            failures.append((i, str(e)))
            continue
        if not ok:
            failures.append((i, "the witness does not satisfy the script"))
    return failures


class Job:
    """Script verification running on every core while the caller does something else."""

    def __init__(self, raw_tx: bytes, spent: list[tuple[bytes, int]], workers: int | None):
        global _TX
        workers = max(1, min(workers or os.cpu_count() or 1, len(spent) // 2000 or 1))
        size = -(-len(spent) // workers)
        chunks = [(start, min(start + size, len(spent))) for start in range(0, len(spent), size)]
        self._pool = self._pending = self._done = None
        if workers == 1:
            _TX = (raw_tx, spent)
            try:
                self._done = _verify_range((0, len(spent)))
            finally:
                _TX = None
            return
        _TX = (raw_tx, spent)                         # inherited by the forked workers
        try:
            self._pool = multiprocessing.get_context("fork").Pool(workers)
            self._pending = self._pool.map_async(_verify_range, chunks)
        finally:
            _TX = None

    def result(self) -> list[tuple[int, str]]:
        """(input index, reason) for every input whose script check failed."""
        if self._done is None:
            self._done = [f for part in self._pending.get() for f in part]
            self.close()
        return self._done

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


def start(raw_tx: bytes, spent: list[tuple[bytes, int]], workers: int | None = None) -> Job:
    return Job(raw_tx, spent, workers)


def verify_inputs(raw_tx: bytes, spent: list[tuple[bytes, int]], workers: int | None = None) -> list[tuple[int, str]]:
    """(input index, reason) for every input whose script check fails; `spent` is (scriptPubKey, amount)
    per input, input 0 included."""
    return Job(raw_tx, spent, workers).result()


def strict_der_low_s(sig: bytes) -> str | None:
    """Why `sig` (DER, without its sighash byte) is not strict DER with low S, or None."""
    if len(sig) < 8 or len(sig) > 72 or sig[0] != 0x30 or sig[1] != len(sig) - 2 or sig[2] != 0x02:
        return "not strict DER"
    r_len = sig[3]
    if 4 + r_len + 2 > len(sig) or sig[4 + r_len] != 0x02:
        return "not strict DER"
    s_len = sig[5 + r_len]
    if 6 + r_len + s_len != len(sig):
        return "not strict DER"
    for start, length in ((4, r_len), (6 + r_len, s_len)):
        part = sig[start:start + length]
        if length == 0 or part[0] & 0x80 or (length > 1 and part[0] == 0 and not part[1] & 0x80):
            return "not strict DER"
    if int.from_bytes(sig[6 + r_len:], "big") > _N_HALF:
        return "high S"
    return None


def signatures_in(witness: list[bytes], script_pubkey: bytes) -> list[bytes] | None:
    """The signatures an input's witness carries for the templates a custody policy uses, or None for a
    template this verifier does not know (so the check is inconclusive, never passed)."""
    if len(script_pubkey) == 34 and script_pubkey[:2] == b"\x00\x20":          # P2WSH
        if not witness or hashlib.sha256(witness[-1]).digest() != script_pubkey[2:]:
            return None
        ws = witness[-1]
        if len(ws) >= 3 and ws[-1] == 0xAE and 0x51 <= ws[0] <= 0x60:           # m <keys> n CHECKMULTISIG
            return [item for item in witness[1:-1] if item]
        return None
    if len(script_pubkey) == 22 and script_pubkey[:2] == b"\x00\x14":          # P2WPKH
        return witness[:1] if len(witness) == 2 else None
    if len(script_pubkey) == 34 and script_pubkey[:2] == b"\x51\x20":          # P2TR
        items = witness[:-1] if len(witness) > 1 and witness[-1][:1] == b"\x50" else witness   # annex
        if len(items) == 1:
            return items                                                        # key path
        if len(items) >= 2 and items[-1][:1] in (b"\xc0", b"\xc1"):             # script path: sigs, script, control
            return [item for item in items[:-2] if item]
        return None
    return None


def sighash_problem(sig: bytes, taproot: bool) -> str | None:
    """Why one signature is not ALL/DEFAULT and well-formed, or None."""
    if taproot:
        if len(sig) == 64:
            return None
        if len(sig) == 65:
            return None if sig[64] == 0x01 else f"sighash 0x{sig[64]:02x}"
        return "not a 64- or 65-byte Schnorr signature"
    if not sig:
        return "empty signature"
    if sig[-1] != 0x01:
        return f"sighash 0x{sig[-1]:02x}"
    return strict_der_low_s(sig[:-1])
