"""The database: engine and sessions, the tables' common base, and the Alembic migrations of every capability's tables."""
