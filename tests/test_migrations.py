"""The Alembic migrations build exactly the tables and columns the models declare (on SQLite and
PostgreSQL). Only indexes may differ: the paging indexes of migration 0004 (partial, covering, some on
expressions) live in the migration alone, because SQLAlchemy's models cannot say all of them."""
from __future__ import annotations

import warnings

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from custody.schema import metadata
from custody.store.db import open_database


def test_migrations_match_the_models(db_url):
    engine = open_database(db_url).kw["bind"]
    with engine.connect() as connection, warnings.catch_warnings():
        warnings.simplefilter("ignore")          # expression indexes cannot be reflected; they are not compared
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    flat = [d for group in differences for d in (group if isinstance(group, list) else [group])]
    structural = [d for d in flat if d[0] != "remove_index"]
    assert structural == []
    assert all(d[1].name.startswith(("ix_utxos_", "ix_addresses_")) for d in flat)


def test_a_commit_is_durable_when_it_returns(db_url):
    """SQLite fsyncs its write-ahead log at every commit (synchronous=FULL; NORMAL loses the last
    acknowledged commits on a power cut); PostgreSQL keeps its default, synchronous_commit on."""
    engine = open_database(db_url).kw["bind"]
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2       # FULL
        else:
            assert connection.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
