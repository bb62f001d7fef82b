"""What durable commits cost: SQLite with synchronous=FULL (the write-ahead log fsynced at every
commit, so an acknowledged spend request survives a power cut) against synchronous=NORMAL (what the
coordinator ran before: fast, but the last commits vanish when power is cut), in the same run, on the
same disk. Each write is one acknowledged event: a custody event-log entry (hash-chained and signed)
committed in its own transaction, as an API request or an approval does.

    python bench/durability.py            # BENCH_COMMITS=500 by default
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from custody.eventlog.log import CoordinatorKey, append  # noqa: E402
from custody.store import db  # noqa: E402

COMMITS = int(os.environ.get("BENCH_COMMITS", "500"))
KEY = CoordinatorKey.from_seed(bytes(32))


def commits_per_second(synchronous: str, folder: Path) -> float:
    db.SQLITE_SYNCHRONOUS = synchronous
    sessions = db.open_database(f"sqlite:///{folder / synchronous}.db")
    with sessions() as s:
        assert s.connection().exec_driver_sql("PRAGMA synchronous").scalar() == {"NORMAL": 1, "FULL": 2}[synchronous]
    started = time.perf_counter()
    for n in range(COMMITS):
        with sessions.begin() as s:
            append(s, KEY, "spend.approved", "bench", f"spend:{n}", {"n": n})
    return COMMITS / (time.perf_counter() - started)


def main() -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as folder:
        rates = {}
        for mode in ("NORMAL", "FULL", "NORMAL", "FULL"):         # interleaved: the disk's mood is shared
            run = Path(folder) / f"run{sum(map(len, rates.values()))}"
            run.mkdir()
            rates.setdefault(mode, []).append(commits_per_second(mode, run))
        normal, full = max(rates["NORMAL"]), max(rates["FULL"])
    print(f"SQLite commits, {COMMITS} acknowledged event-log writes each in its own transaction:")
    print(f"  synchronous=NORMAL (not power-safe): {normal:,.0f}/s")
    print(f"  synchronous=FULL (the coordinator's setting): {full:,.0f}/s")
    print(f"  ratio FULL/NORMAL: {full / normal:.2f}x throughput (each durable commit costs "
          f"{(1 / full - 1 / normal) * 1000:.2f} ms more)")


if __name__ == "__main__":
    main()
