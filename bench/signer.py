"""What the reference signer's checks cost: signing a 2-of-3 wsh(sortedmulti) PSBT on the device vs plain
embit signing the same PSBT with the same key.

Measured in the same run, for PSBTs of 1, 10 and 50 inputs (each with its full previous transaction):
  - baseline: embit `PSBT.sign_with(root)`: no checks at all;
  - device in-process: `Device.sign_psbt` (parse, prove every fact: ownership by re-derivation,
    non_witness_utxo txid and amount cross-check, change, fee caps; the policy engine with its
    velocity counters and hash-chained log written to disk; then sign);
  - device through HWI: the same over the simulator's Unix socket via `hwilib.commands.signtx`.
Prints the median of several rounds and each ratio to the baseline. No chain is needed: the device
never asks one.

    .venv/bin/python bench/signer.py            # BENCH_ROUNDS=5 to change the rounds
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, repo_root)
sys.path.insert(0, os.path.join(repo_root, "signer-firmware"))

from embit.descriptor import Descriptor  # noqa: E402
from embit.psbt import PSBT, DerivationPath  # noqa: E402
from embit.transaction import Transaction, TransactionInput, TransactionOutput  # noqa: E402

from custody_signer.device import Device  # noqa: E402
from custody_signer.simulator import spawn  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SIZES = (1, 10, 50)


def wallet(devices: list[Device]) -> str:
    keys = ",".join(f"[{d.fingerprint}/48h/1h/0h/2h]{d.xpub('m/48h/1h/0h/2h')}/<0;1>/*" for d in devices)
    return f"wsh(sortedmulti(2,{keys}))"


def psbt_for(descriptor: str, inputs: int) -> str:
    """Inputs paying the wallet at receive indexes 0..n-1, one payee and a change output."""
    desc = Descriptor.from_string(descriptor)
    tx = Transaction(vin=[], vout=[])
    prevs = []
    for i in range(inputs):
        derived = desc.derive(i, branch_index=0)
        prev = Transaction(vin=[TransactionInput(bytes([i % 256, i // 256]) * 16, 0)],
                           vout=[TransactionOutput(1_000_000, derived.script_pubkey())])
        prevs.append((prev, derived))
        tx.vin.append(TransactionInput(prev.txid(), 0))
    change = desc.derive(0, branch_index=1)
    tx.vout = [TransactionOutput(inputs * 400_000, Descriptor.from_string(descriptor).derive(999, branch_index=0)
                                 .script_pubkey()), TransactionOutput(inputs * 590_000, change.script_pubkey())]
    psbt = PSBT(tx, unknown={})
    for scope, (prev, derived) in zip(psbt.inputs, prevs):
        scope.non_witness_utxo = prev
        scope.witness_utxo = prev.vout[0]
        scope.witness_script = derived.witness_script()
        for key in derived.keys:
            scope.bip32_derivations[key.get_public_key()] = DerivationPath(key.origin.fingerprint,
                                                                           key.origin.derivation)
    for key in change.keys:
        psbt.outputs[1].bip32_derivations[key.get_public_key()] = DerivationPath(key.origin.fingerprint,
                                                                                 key.origin.derivation)
    return psbt.to_string()


def median_seconds(fn, rounds: int = ROUNDS) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-signer-") as tmp:
        os.environ["CUSTODY_SIGNER_DISCOVERY"] = str(Path(tmp) / "d")
        devices = [Device.create(Path(tmp) / f"dev{i}") for i in range(3)]
        descriptor = wallet(devices)
        first = devices[0]
        first.register("bench", descriptor)
        first.hsm.install({"approvers": {}, "rules": [{"wallet": "bench"}]})
        root = first._root                                   # the baseline signs with the same key, unchecked
        process, info = spawn(Path(tmp) / "dev0")
        try:
            from hwilib import commands
            from hwilib.common import Chain
            client = commands.get_client("custodysigner", info["socket"], chain=Chain.REGTEST)
            print(f"{'inputs':>6}  {'embit ms':>9}  {'device ms':>9}  {'ratio':>6}  {'via HWI ms':>10}  {'ratio':>6}")
            for n in SIZES:
                text = psbt_for(descriptor, n)
                plain = median_seconds(lambda: PSBT.from_string(text).sign_with(root))
                checked = median_seconds(lambda: first.sign_psbt(text))
                via_hwi = median_seconds(lambda: commands.signtx(client, text))
                print(f"{n:>6}  {plain * 1000:>9.1f}  {checked * 1000:>9.1f}  {checked / plain:>6.1f}  "
                      f"{via_hwi * 1000:>10.1f}  {via_hwi / plain:>6.1f}")
        finally:
            process.terminate()
            process.wait(timeout=10)


if __name__ == "__main__":
    main()
