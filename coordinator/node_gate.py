"""Keeps the coordinator's request threads for its database when the Bitcoin node hangs.

Each server process serves a few requests at a time (THREADS_PER_PROCESS). A node that stops
answering would otherwise hold every one of them for the RPC timeout, and pages that read only the
database would queue behind it. The gate leaves one thread to the database: at most `slots` node
calls are in flight at once, a call waits briefly for a slot, and while one call has gone unanswered
for `patience` seconds new calls are refused at once (503, "the node is not answering") instead of
queueing behind it. Calls known to be long (a UTXO-set scan) do not count as a hang.
"""
from __future__ import annotations

import threading
import time

from custody.chain.node_client import NodeUnreachable

LONG_CALLS = frozenset({"scantxoutset"})


class NodeGate:
    def __init__(self, slots: int, patience: float = 3.0):
        self.slots, self.patience = slots, patience
        self._cond = threading.Condition()
        self._in_flight: dict[int, tuple[float, bool]] = {}     # thread -> (started, may be long)

    def _unanswered_for(self, now: float) -> float:
        waits = [now - started for started, long in self._in_flight.values() if not long]
        return max(waits, default=0.0)

    def enter(self, method: str) -> None:
        deadline = time.monotonic() + self.patience
        with self._cond:
            while True:
                now = time.monotonic()
                stalled = self._unanswered_for(now)
                if stalled >= self.patience:
                    raise NodeUnreachable(f"the Bitcoin node has not answered a call for {stalled:.0f} s; "
                                          "new calls are refused until it does")
                if len(self._in_flight) < self.slots:
                    self._in_flight[threading.get_ident()] = (now, method in LONG_CALLS)
                    return
                if now >= deadline:
                    raise NodeUnreachable(f"the Bitcoin node is busy: {self.slots} calls are waiting on it")
                self._cond.wait(min(0.05, deadline - now))

    def leave(self) -> None:
        with self._cond:
            self._in_flight.pop(threading.get_ident(), None)
            self._cond.notify_all()
