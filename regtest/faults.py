"""Named points where a test can kill the node, to prove that what it persists survives a crash there.

`REGTEST_KILL_AT=name` makes the node SIGKILL itself when it reaches `point(name)`: no clean-up, no
flush, as an OOM kill or `kill -9` would leave it; `name@N` waits for the point's Nth arrival. `lose_unsynced(name, path, keep)` is a point that,
before the kill, also truncates `path` to its first `keep` bytes: what a power cut does to a file whose
data was written but not yet fsynced (the page cache holding the rest is gone). Unset, a point costs
one environment lookup. This module stands alone (the node imports nothing of the toolkit's).

The points: for each file the node writes itself (`mempool.dat`, `fee_estimates.json`,
`utxo-txindex.pickle`, `clean-shutdown`, `.cookie`), `FILE:torn-write` (half the new data written),
`FILE:power-loss` (all written, none synced: the temporary file loses its unsynced half),
`FILE:before-rename` (synced, not yet renamed over the old file), `FILE:before-dirsync` (renamed, the
directory not yet synced), `FILE:rename-lost` (renamed, then a power cut before the directory was synced
takes the rename back: the old file under its name again, the new one under NAME.new); `block:accepted` (the kernel has accepted a block, its RPC has not answered);
`replay:block` (start-up is re-submitting blocks the kernel's index had lost, one is done);
`shutdown:flushed` (the kernel has flushed on a clean stop, the clean-shutdown marker is not written).
"""
from __future__ import annotations

import os
import signal

ENV = "REGTEST_KILL_AT"
_arrivals: dict[str, int] = {}


def arrived(name: str) -> bool:
    """Counts an arrival at `name`; true when it is the one REGTEST_KILL_AT names (the caller then dies)."""
    target = os.environ.get(ENV)
    if not target or not target.startswith(name):
        return False
    wanted, _, nth = target.partition("@")
    if wanted != name:
        return False
    _arrivals[name] = count = _arrivals.get(name, 0) + 1
    return count == (int(nth) if nth.isdigit() else 1)


def point(name: str) -> None:
    if arrived(name):
        die(name)


def lose_unsynced(name: str, path, keep: int) -> None:
    if arrived(name):
        os.truncate(path, keep)
        die(name)


def die(name: str) -> None:
    os.write(2, f"regtest fault point {name}: SIGKILL\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)
