"""One sync leader per database: a PostgreSQL advisory lock (released by the server when the
holder's connection dies, so another worker takes over), or a file lock beside a SQLite database."""
from __future__ import annotations

import fcntl
import os
import time

from sqlalchemy import text
from sqlalchemy.engine import Engine

from .errors import CustodyError

LOCK_ID = 0x637573746F6479  # "custody"


class LeaderLock:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._conn = None
        self._file = None

    def try_acquire(self) -> bool:
        if self.engine.dialect.name == "postgresql":
            conn = self.engine.connect()
            if conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_ID}).scalar():
                conn.commit()
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

    def acquire(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                raise CustodyError("another sync worker holds the ledger; try again when it stops")
            time.sleep(0.2)

    def release(self) -> None:
        if self._conn is not None:
            self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_ID})
            self._conn.close()
            self._conn = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
