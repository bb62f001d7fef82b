"""Approval round trip: device verification of 2 passkey approvals on a 50-input spend, as a ratio to the
same device signing without approvals (goal <= 1.1x).

One 2-of-3 wsh(sortedmulti) spend of 50 coins (each with its full previous transaction, as bench/signer.py
builds it) is signed in-process by two copies of the same registered reference signer, in the same run and
in alternating rounds:
  - without approvals: a policy whose rule needs none;
  - with approvals: a policy of three passkey approvers whose rule needs 2, and the PSBT carrying two
    WebAuthn assertions (ES256) over the approval message (policy id, txid, every output, fee), which the
    device rebuilds from the facts it proved and verifies before signing.
Prints the median of each and their ratio.

    .venv/bin/python bench/approvals.py            # BENCH_ROUNDS=9 to change the rounds
"""
from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, repo_root)
sys.path.insert(0, os.path.join(repo_root, "signer-firmware"))

from embit.psbt import PSBT  # noqa: E402

from custody_signer.device import Device  # noqa: E402
from custody_signer.wallets import policy_id  # noqa: E402
from signer import psbt_for, wallet  # noqa: E402   (bench/signer.py)
from tests.approval_keys import carry, p256_key, spend_message, webauthn_approval, webauthn_entry  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
INPUTS = 50
GOAL = 1.1
OFFICERS = ("olga", "omar", "oren")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-approvals-") as tmp:
        devices = [Device.create(Path(tmp) / f"dev{i}") for i in range(3)]
        descriptor = wallet(devices)
        devices[0].register("bench", descriptor)
        shutil.copytree(devices[0].state, Path(tmp) / "approving")
        plain, approving = devices[0], Device(Path(tmp) / "approving")
        keys = {name: p256_key(f"bench {name}") for name in OFFICERS}
        plain.hsm.install({"approvers": {}, "rules": [{"wallet": "bench"}]})
        approving.hsm.install({"approvers": {name: webauthn_entry(key) for name, key in keys.items()},
                               "rules": [{"wallet": "bench", "min_approvers": 2}]})

        text = psbt_for(descriptor, INPUTS)
        psbt = PSBT.from_string(text)
        message = spend_message(psbt, policy_id("bench", descriptor), change=(1,))
        approved = carry(psbt, *(webauthn_approval(keys[name], message) for name in OFFICERS[:2])).to_string()
        approving.sign_psbt(approved)                      # a warm-up that also proves the approvals count
        assert approving.hsm.log()[-1]["approved_by"] == list(OFFICERS[:2])
        plain.sign_psbt(text)

        without, with_approvals = [], []
        for _ in range(ROUNDS):                            # alternating, so drift affects both alike
            without.append(_seconds(lambda: plain.sign_psbt(text)))
            with_approvals.append(_seconds(lambda: approving.sign_psbt(approved)))
        base, checked = statistics.median(without), statistics.median(with_approvals)
        ratio = checked / base
        print(f"{INPUTS}-input 2-of-3 spend, median of {ROUNDS} rounds")
        print(f"  device signing, policy without approvers:       {base * 1000:8.1f} ms")
        print(f"  device signing, 2 passkey approvals verified:   {checked * 1000:8.1f} ms")
        print(f"  ratio: {ratio:.3f}x (goal <= {GOAL}x): {'met' if ratio <= GOAL else 'NOT met'}")


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
