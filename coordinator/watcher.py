"""The service's background loop: keep the ledger synced with the node and follow broadcast spends to
confirmation, so pages and metrics move on their own."""
from __future__ import annotations

import logging
import threading
import time


from custody import service

log = logging.getLogger("coordinator.watcher")


STATISTICS_EVERY = 600.0     # seconds between refreshes of the database's planner statistics


class Watcher:
    def __init__(self, sessions, node_factory, interval: float):
        self.sessions, self.node_factory, self.interval = sessions, node_factory, interval
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="custody-watcher", daemon=True)
        self.last_error: str | None = None

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)

    def tick(self) -> None:
        """One round: sync the ledger, then track every spend the chain can still change."""
        from custody.sync import Syncer
        client = self.node_factory()
        if Syncer(self.sessions, client).try_sync_once() is None:
            return                               # another process leads; it syncs and tracks for us
        with self.sessions() as s:
            followed = service.spends_to_track(s)
        for spend_id in followed:
            with self.sessions.begin() as s:
                service.spend_track(s, spend_id, client=client)

    def _loop(self) -> None:
        from custody.db import refresh_statistics
        statistics_due = time.monotonic() + STATISTICS_EVERY
        while not self.stop_event.is_set():
            if time.monotonic() >= statistics_due:
                statistics_due = time.monotonic() + STATISTICS_EVERY
                try:
                    refresh_statistics(self.sessions.kw["bind"])
                except Exception as e:
                    log.warning("statistics refresh failed: %s", e)
            try:
                self.tick()
                if self.last_error:
                    log.info("sync recovered")
                self.last_error = None
            except Exception as e:          # node away, database busy: report and try again
                if str(e) != self.last_error:
                    log.warning("sync failed: %s", e)
                self.last_error = str(e)
            self.stop_event.wait(self.interval)
