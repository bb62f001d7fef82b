"""The node's clock and scheduler, mockable as Bitcoin Core's are for its own functional tests.

`setmocktime` (or `-mocktime`) fixes the time the node uses for new blocks, mempool entry times,
expiry and `uptime`; it is also set inside libbitcoinkernel (its exported SetMockTime), so the
kernel's own checks, such as a block's time being at most two hours ahead, use the same clock.
`mockscheduler` moves the scheduler forward and runs every task that has come due.
"""
from __future__ import annotations

import ctypes
import logging
import threading
import time
from typing import Callable

log = logging.getLogger("regtest.scheduler")


def _kernel_set_mock_time():
    from pbk.capi.library import BITCOINKERNEL_LIB
    fn = BITCOINKERNEL_LIB._Z11SetMockTimel           # void SetMockTime(int64_t)
    fn.argtypes, fn.restype = [ctypes.c_int64], None
    return fn


class Clock:
    def __init__(self, mocktime: int = 0):
        self.mocktime = 0
        self._kernel = None
        if mocktime:
            self.set_mocktime(mocktime)

    def now(self) -> int:
        """Seconds since the epoch: the mock time when one is set, else the system's."""
        return self.mocktime or int(time.time())

    def set_mocktime(self, timestamp: int) -> None:
        """0 returns to the system clock, as in Core."""
        if self._kernel is None:
            self._kernel = _kernel_set_mock_time()
        self._kernel(timestamp)
        self.mocktime = timestamp


class Scheduler:
    """Periodic tasks on a background thread; `mock_forward` runs them as if time had passed."""

    def __init__(self):
        self._tasks: list[list] = []          # [due (monotonic s), interval, fn]
        self._offset = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def every(self, interval: float, fn: Callable[[], None]) -> None:
        with self._lock:
            self._tasks.append([self._now() + interval, interval, fn])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def mock_forward(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds
        self.run_due()

    def run_due(self) -> None:
        with self._lock:
            now = self._now()
            due = [t for t in self._tasks if t[0] <= now]
            for task in due:
                task[0] = now + task[1]
        for _, _, fn in due:
            try:
                fn()
            except Exception:       # one failed task (a full disk, say) must not stop the others for good
                log.exception("scheduled task %s failed", getattr(fn, "__qualname__", fn))

    def _now(self) -> float:
        return time.monotonic() + self._offset

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.run_due()
