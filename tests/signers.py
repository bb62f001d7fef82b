"""Simulated reference signers for tests: each its own process, found by HWI; the policy its holder
installs on it; and the key ceremony that registers a policy on them."""
from __future__ import annotations

import json
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from custody.devices import ceremony
from custody_signer.device import shown_first_address
from custody_signer.simulator import spawn

from .conftest import signer_discovery
from .support import stop


@contextmanager
def simulated_signers(root: Path, names):
    """One signer per name under `root`: {name: {"state": its directory, "serial", "fingerprint", …}}."""
    procs, found = [], {}
    with signer_discovery(root / "discovery"):
        try:
            for name in names:
                proc, info = spawn(root / name)
                procs.append(proc)
                found[name] = {"state": root / name, **info}
            yield found
        finally:
            for proc in procs:
                stop(proc)


def install_policy(state: Path, policy: dict) -> None:
    """The holder approves a signing policy on the device itself (`custody-signer hsm-policy`)."""
    (state / "policy-request.json").write_text(json.dumps(policy))
    subprocess.run([sys.executable, "-m", "custody_signer.cli", "hsm-policy", "--state", str(state),
                    str(state / "policy-request.json")], check=True, capture_output=True)


def run_ceremony(sessions, policy: str, threshold: int, signers: dict, holders: dict | None = None) -> int:
    """Make `policy` on the devices of `signers` (issued and connected): keys with proofs, registration,
    and, with `holders` (signer name -> holder), each holder confirming the address their device shows."""
    with sessions.begin() as s:
        cid = ceremony.start(s, policy, threshold, [d["serial"] for d in signers.values()], actor="root").id
    for device in signers.values():
        with sessions.begin() as s:
            ceremony.collect_key(s, ceremony.get(s, cid), device["serial"], "regtest", actor="root")
    with sessions.begin() as s:
        ceremony.register(s, ceremony.get(s, cid), "regtest", actor="root")
    for name, holder in (holders or {}).items():
        with sessions.begin() as s:
            ceremony.confirm(s, ceremony.get(s, cid), signers[name]["serial"],
                             shown_first_address(signers[name]["state"]), by=holder)
    return cid
