"""One sync leader per database: a PostgreSQL advisory lock (released by the server when the
holder's connection dies, so another worker takes over), or a file lock beside a SQLite database.

`LeaderLoop` is the one loop `custody worker` and `custody serve` both run: whichever process holds
the lock syncs the ledger, follows broadcast spends and writes the event log's scheduled checkpoints
(into $CUSTODY_CHECKPOINT_DIR every $CUSTODY_CHECKPOINT_SECONDS); every other process stands by."""
from __future__ import annotations

import fcntl
import logging
import os
import threading
import time

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from .errors import CustodyError

log = logging.getLogger("custody.leader")

LOCK_ID = 0x637573746F6479  # "custody"
# pg_locks shows a bigint advisory key as its high and low 32 bits.
_HELD = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()"
             " AND classid::bigint = :hi AND objid::bigint = :lo AND objsubid = 1")
MAX_BACKOFF = 10.0           # seconds: the longest wait between attempts while the database or node is away
STATISTICS_EVERY = 600.0     # seconds between refreshes of the database's planner statistics


class LeaderLock:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._conn = None
        self._file = None

    def try_acquire(self) -> bool:
        if self.engine.dialect.name == "postgresql":
            conn = self.engine.connect()
            try:
                taken = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_ID}).scalar()
                conn.commit()
            except BaseException:
                conn.close()
                raise
            if taken:
                self._conn = conn
                return True
            conn.close()
            return False
        path = self.engine.url.database
        handle = open(f"{path}.sync-lock" if path else os.devnull, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._file = handle
        return True

    def held(self) -> bool:
        """Whether we still lead. A database restart ends the lock's connection and the lock with it
        (another worker may hold it by now); a file lock lasts as long as this process."""
        if self._file is not None:
            return True
        if self._conn is None:
            return False
        try:
            still = bool(self._conn.execute(_HELD, {"hi": LOCK_ID >> 32, "lo": LOCK_ID & 0xFFFFFFFF}).scalar())
            self._conn.rollback()                 # not left idle in a transaction between rounds
        except DBAPIError:
            still = False
        if not still:
            self._discard()
        return still

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_ID})
                self._conn.commit()
                self._conn.close()
                self._conn = None
            except DBAPIError:                    # the connection is gone, and the server released the lock
                self._discard()
        if self._file is not None:
            self._file.close()
            self._file = None

    def _discard(self) -> None:
        """Drop the lock's connection without returning it to the pool (a pooled session keeps its lock)."""
        try:
            self._conn.invalidate()
            self._conn.close()
        except DBAPIError:
            pass
        self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


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
        from . import governance, service
        from .db import refresh_statistics
        from .sync import Syncer
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
            followed = service.spends_to_track(s)
        for spend_id in followed:
            with self.sessions.begin() as s:
                service.spend_track(s, spend_id, client=client)

    def _checkpoint(self) -> None:
        """A checkpoint when one is due. One that cannot be written (a full disk, a broken log) is
        logged and tried again next round: it must not stop the ledger from following the chain."""
        if not self.checkpoint_dir:
            return
        from .checkpoints import scheduled
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
