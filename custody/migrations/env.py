"""Alembic environment: migrations run on the connection custody.db.migrate hands over."""
from alembic import context

from custody import account_models, credential_models, device_models, mining_models, reserve_models, spend_models  # noqa: F401  (registers their tables)
from custody.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
