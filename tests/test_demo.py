"""`make demo`'s story runs to the end: simulated signers through HWI, the ceremony, a spend signed on two
devices, a verified log, a proof of reserves signed on two devices and verified as the auditor would (the
console part is skipped with DEMO_SERVE=0)."""
from __future__ import annotations

import os
import subprocess
import sys


def test_the_demo_story_runs_on_simulated_signers():
    env = {**os.environ, "DEMO_SERVE": "0"}
    env.pop("CUSTODY_SIGNER_DISCOVERY", None)
    run = subprocess.run([sys.executable, "-m", "coordinator.demo"], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    assert out.count("proof of possession OK") == 3
    assert "-> ceremony complete" in out
    assert "device checked and signed through HWI -> verified, signed" in out
    assert "custody log verify: OK" in out
    assert out.count("device showed the message") == 2 and "the coordinator's own check: valid" in out
    assert "solvency    valid" in out and "verdict: valid:" in out
    assert "flagged UNDERPAID_VS_EXPECTED (alert)" in out
    assert "signed on Mia's device under its policy: confirmed" in out and "0 sat left in the fleet wallet" in out
