"""One sync leader per database: a PostgreSQL advisory lock (released by the server when the
holder's connection dies, so another worker takes over), or a file lock beside a SQLite database.
The loop that takes it is coordinator.worker.LeaderLoop."""
from __future__ import annotations

import fcntl
import os

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError


LOCK_ID = 0x637573746F6479  # "custody"
# pg_locks shows a bigint advisory key as its high and low 32 bits.
_HELD = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()"
             " AND classid::bigint = :hi AND objid::bigint = :lo AND objsubid = 1")


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
