"""The service's background thread: the same loop as `custody worker` (coordinator.worker.LeaderLoop), so
whichever process leads, and only that one, keeps the ledger synced and follows broadcast spends to
confirmation; pages and metrics move on their own."""
from __future__ import annotations

import threading

from coordinator.worker import LeaderLoop


class Watcher:
    def __init__(self, sessions, node_factory, interval: float):
        self.loop = LeaderLoop(sessions, node_factory, interval=interval)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.loop.run, args=(self.stop_event,), name="custody-watcher",
                                       daemon=True)

    @property
    def last_error(self) -> str | None:
        return self.loop.last_error

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)
