"""The worker loop `custody worker` and `custody serve` both run: whichever process holds the sync
leader's lock (custody.ledger.leader) syncs the ledger, runs governance changes that are due, follows
broadcast spends and writes the event log's scheduled checkpoints (into $CUSTODY_CHECKPOINT_DIR every
$CUSTODY_CHECKPOINT_SECONDS); every other process stands by."""
from __future__ import annotations

import logging
import os
import threading
import time

from sqlalchemy.exc import DBAPIError

from custody.errors import CustodyError
from custody.ledger.leader import LeaderLock

log = logging.getLogger("coordinator.worker")

MAX_BACKOFF = 10.0           # seconds: the longest wait between attempts while the database or node is away
STATISTICS_EVERY = 600.0     # seconds between refreshes of the database's planner statistics


class LeaderLoop:
    """Each round the leader re-checks that it still holds the lock, then syncs the ledger and tracks
    every spend the chain can still change; a standby tries to take the lock. A database or node that
    goes away is logged once and retried with backoff. `node` makes a NodeClient."""

    def __init__(self, sessions, node, *, interval: float):
        self.sessions, self.node, self.interval = sessions, node, interval
        self.lock = LeaderLock(sessions.kw["bind"])
        self.role = "starting"                    # then "leader", "standby" or "lost"
        self.last_error: str | None = None
        self._error_kind: str | None = None
        self._statistics_due = time.monotonic() + STATISTICS_EVERY
        self.checkpoint_dir = os.environ.get("CUSTODY_CHECKPOINT_DIR") or None
        every = os.environ.get("CUSTODY_CHECKPOINT_SECONDS") or "3600"
        if not every.isdigit() or int(every) < 1:
            raise CustodyError(f"CUSTODY_CHECKPOINT_SECONDS is a whole number of seconds, not {every!r}")
        self.checkpoint_every = int(every)
        self._checkpoint_error: str | None = None

    @property
    def leading(self) -> bool:
        return self.role == "leader"

    def run(self, stop: threading.Event) -> None:
        failures = 0
        try:
            while not stop.is_set():
                try:
                    self.step()
                    failures = 0
                    if self.last_error:
                        log.info("recovered")
                    self.last_error = self._error_kind = None
                except Exception as e:            # database or node away: say so once, try again later
                    failures = min(failures + 1, 10)
                    self._failed(e)
                stop.wait(min(self.interval * 2 ** failures, max(MAX_BACKOFF, self.interval)))
        finally:
            self.lock.release()
            self.role = "stopped"

    def step(self) -> None:
        """One round: make sure of the lead (re-checked every round), then sync and track if leading."""
        if self.leading and not self.lock.held():
            self._become("lost", "lost the leader lock (its database connection ended); trying to take it again")
        if not self.leading:
            if not self.lock.try_acquire():
                self._become("standby", "standing by: another process leads (syncs the ledger, tracks spends)")
                return
            self._become("leader", "leading: this process syncs the ledger and tracks spends")
        self._round()

    def _round(self) -> None:
        from custody.governance import proposals as governance
        from custody.spending import service as spend_service
        from custody.store.db import refresh_statistics
        from custody.ledger.sync import Syncer
        # approved governance changes whose delay has passed: first, as they need no node
        for done in governance.run_due(self.sessions):
            log.info("governance proposal #%d %s", done["id"], done["state"])
        if time.monotonic() >= self._statistics_due:
            self._statistics_due = time.monotonic() + STATISTICS_EVERY
            try:
                refresh_statistics(self.sessions.kw["bind"])
            except DBAPIError as e:               # planner statistics can wait; the sync cannot
                log.warning("statistics refresh failed: %s", e)
        self._checkpoint()                        # before the node is asked: an outage must not stop it
        client = self.node()
        report = Syncer(self.sessions, client).sync_as_leader()
        if report.blocks_applied or report.blocks_rolled_back:
            log.info("synced to %s (+%d, -%d blocks)", report.tip_height, report.blocks_applied,
                     report.blocks_rolled_back)
        with self.sessions() as s:
            followed = spend_service.spends_to_track(s)
        for spend_id in followed:
            with self.sessions.begin() as s:
                spend_service.spend_track(s, spend_id, client=client)

    def _checkpoint(self) -> None:
        """A checkpoint when one is due. One that cannot be written (a full disk, a broken log) is
        logged and tried again next round: it must not stop the ledger from following the chain."""
        if not self.checkpoint_dir:
            return
        from custody.eventlog.checkpoints import scheduled
        try:
            written = scheduled(self.sessions, self.checkpoint_dir, self.checkpoint_every)
        except (CustodyError, OSError) as e:
            if str(e) != self._checkpoint_error:  # once per problem, not every round
                log.warning("event log checkpoint failed: %s", e)
            self._checkpoint_error = str(e)
            return
        self._checkpoint_error = None
        if written:
            log.info("event log checkpoint at seq %d written to %s", written["seq"], written["file"])

    def _become(self, role: str, message: str) -> None:
        if role != self.role:
            (log.warning if role == "lost" else log.info)(message)
            self.role = role

    def _failed(self, e: Exception) -> None:
        """Log a failure when its kind changes: one line per outage, however its messages vary."""
        reason = (str(getattr(e, "orig", None) or e).strip().splitlines() or [type(e).__name__])[0]
        kind = type(e).__name__ if isinstance(e, DBAPIError) else reason
        if kind != self._error_kind:
            what = "database" if isinstance(e, DBAPIError) else "round"
            log.warning("%s failed (%s): %s; retrying", what, self.role, reason)
        self.last_error, self._error_kind = reason, kind
