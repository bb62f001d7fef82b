"""Database connection and schema migrations (Alembic). SQLite file by default, PostgreSQL by URL."""
from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")
# What SQLite promises at COMMIT. FULL: the write-ahead log is fsynced before a commit returns, so a
# spend request or an approval the API acknowledged survives a power cut (NORMAL syncs only at
# checkpoints and loses the last commits). bench/durability.py measures what it costs.
SQLITE_SYNCHRONOUS = "FULL"


def default_url() -> str:
    home = Path(os.environ.get("CUSTODY_HOME", Path.home() / ".custody"))
    return os.environ.get("CUSTODY_DB") or f"sqlite:///{home / 'custody.db'}"


def make_engine(url: str | None = None) -> Engine:
    url = url or default_url()
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record):
            cur = conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={SQLITE_SYNCHRONOUS}")
            cur.close()
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def probe_write(engine: Engine) -> None:
    """Rewrite and commit the health-probe row: raises when the database answers reads but refuses
    commits (a full disk, a read-only file or server, a lost primary)."""
    from datetime import datetime, timezone
    from sqlalchemy import text
    with engine.begin() as connection:
        connection.execute(text("UPDATE health_probe SET checked_at = :now WHERE id = 1"),
                           {"now": datetime.now(timezone.utc)})


def refresh_statistics(engine: Engine) -> None:
    """Row counts for SQLite's query planner, so that a filter on a rare coin state uses its small
    partial index (PostgreSQL's autovacuum keeps its own). Approximate and cheap: milliseconds at
    100,000 coins."""
    if engine.dialect.name == "sqlite":
        with engine.begin() as connection:
            connection.exec_driver_sql("PRAGMA analysis_limit=1000")
            connection.exec_driver_sql("ANALYZE")


def open_database(url: str | None = None) -> sessionmaker[Session]:
    engine = make_engine(url)
    migrate(engine)
    return sessionmaker(engine, expire_on_commit=False)
