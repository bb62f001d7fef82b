"""health probe: the row /health writes to prove the database takes commits

Revision ID: 0008
Revises: 0007
"""
from datetime import datetime, timezone

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    probe = op.create_table('health_probe',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('checked_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.bulk_insert(probe, [{'id': 1, 'checked_at': datetime(1970, 1, 1, tzinfo=timezone.utc)}])


def downgrade() -> None:
    op.drop_table('health_probe')
