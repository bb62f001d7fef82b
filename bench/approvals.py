"""Approval round trip: enroll + approve + device verification of 2 passkey approvals on a 50-input spend,
as a ratio to the same device signing without approvals (goal <= 1.1x).

One 2-of-3 wsh(sortedmulti) spend of 50 coins (each with its full previous transaction, as bench/signer.py
builds it) is signed in-process by two copies of the same registered reference signer, in the same run and
in alternating rounds:
  - without approvals: a policy whose rule needs none;
  - with approvals: a policy of three passkey approvers whose rule needs 2, and the PSBT carrying two
    WebAuthn assertions (ES256) over the approval message (policy id, txid, every output, fee), which the
    device rebuilds from the facts it proved and verifies before signing.
  - the round trip: two officers enrol passkeys at the coordinator (custody.people.credentials: WebAuthn
    registration checked with fido2, in a SQLite database), each approves (the assertion checked by the
    coordinator and packed for the devices), and the device verifies both and signs. The software
    passkey of tests/passkeys.py answers as a browser would.
Prints the median of each and their ratios.

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
from tests.passkeys import SoftPasskey  # noqa: E402

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

        sessions = _coordinator(Path(tmp))
        shutil.copytree(devices[0].state, Path(tmp) / "round-trip")
        round_trip_device = Device(Path(tmp) / "round-trip")

        without, with_approvals, round_trips, per_spend = [], [], [], []
        for n in range(ROUNDS):                            # alternating, so drift affects both alike
            without.append(_seconds(lambda: plain.sign_psbt(text)))
            with_approvals.append(_seconds(lambda: approving.sign_psbt(approved)))
            whole, spend_part = _round_trip(sessions, round_trip_device, psbt, message, n)
            round_trips.append(whole)
            per_spend.append(spend_part)
        base, checked = statistics.median(without), statistics.median(with_approvals)
        trip, approving_only = statistics.median(round_trips), statistics.median(per_spend)
        print(f"{INPUTS}-input 2-of-3 spend, median of {ROUNDS} rounds")
        print(f"  device signing, policy without approvers:            {base * 1000:8.1f} ms")
        print(f"  device signing, 2 passkey approvals verified:        {checked * 1000:8.1f} ms   "
              f"ratio {checked / base:.3f}x")
        print(f"  2 approvals (coordinator) + device verification:      {approving_only * 1000:8.1f} ms   "
              f"ratio {approving_only / base:.3f}x (each spend)")
        print(f"  enrol 2 passkeys + 2 approvals + device verification: {trip * 1000:8.1f} ms   "
              f"ratio {trip / base:.3f}x (goal <= {GOAL}x): {'met' if trip / base <= GOAL else 'NOT met'}")


def _coordinator(tmp: Path):
    from custody.store.db import open_database
    os.environ.setdefault("CUSTODY_HOME", str(tmp / "home"))
    return open_database(f"sqlite:///{tmp / 'coordinator.db'}")


def _round_trip(sessions, device: Device, psbt: PSBT, message: bytes, n: int) -> tuple[float, float]:
    """Two new officers enrol a passkey each and approve; the device (its policy naming them, installed
    by the holder beforehand, untimed) verifies both and signs. Returns the seconds of it all, and of the
    part after enrolment (what each spend costs)."""
    from custody.people import credentials
    from custody.people.models import User
    from custody_signer import protocol
    names = [f"olga{n}", f"omar{n}"]
    passkeys = {name: SoftPasskey() for name in names}
    with sessions.begin() as s:
        users = {name: User(username=name, role="officer", password_hash="") for name in names}
        s.add_all(users.values())
    entries = {}
    for name, passkey in passkeys.items():
        numbers = passkey.key.public_key().public_numbers()
        point = bytes([2 + (numbers.y & 1)]) + numbers.x.to_bytes(32, "big")
        entries[name] = {"type": "webauthn", "key": point.hex(), "rp_id": "localhost"}
    device.hsm.install({"approvers": entries, "rules": [{"wallet": "bench", "min_approvers": 2}]})

    start = time.perf_counter()
    carried = []
    for name, passkey in passkeys.items():
        with sessions.begin() as s:
            user = s.get(User, users[name].id)
            options = credentials.begin_passkey(s, user)
        with sessions.begin() as s:
            user = s.get(User, users[name].id)
            credentials.finish_passkey(s, user, passkey.create(options), label="bench", actor=name)
    enrolled = time.perf_counter()
    for name, passkey in passkeys.items():
        with sessions.begin() as s:
            user = s.get(User, users[name].id)
            options = {"publicKey": credentials.assertion_options(s, user, message)["publicKey"]}
            proof = {"kind": "webauthn", "credential": passkey.get(options)}
            carried.append(credentials.check_approval(s, user, message, proof)[1])
    approved = PSBT.from_string(psbt.to_string())
    for approval in carried:
        key, value = protocol.psbt_field(approval)
        approved.unknown[key] = value
    device.sign_psbt(approved.to_string())
    end = time.perf_counter()
    assert device.hsm.log()[-1]["approved_by"] == names
    return end - start, end - enrolled


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
