"""Named points where a test can kill the process, to prove a step survives a crash at that point.

`CUSTODY_KILL_AT=name` makes the process SIGKILL itself when it reaches `point(name)`: no clean-up,
no flush, as a power cut or an OOM kill would leave it. Unset, a point costs one dictionary lookup.
"""
from __future__ import annotations

import os
import signal


def point(name: str) -> None:
    if os.environ.get("CUSTODY_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
