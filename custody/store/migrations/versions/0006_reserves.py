"""proof of reserves: runs (challenge, PSBT, package, report) and scheduled re-proofs

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('reserve_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('audit', sa.String(length=80), nullable=False),
    sa.Column('nonce', sa.String(length=128), nullable=False),
    sa.Column('custodian', sa.String(length=80), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('block_hash', sa.String(length=64), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('policies', sa.Text(), nullable=False),
    sa.Column('coins', sa.Integer(), nullable=False),
    sa.Column('total', sa.BigInteger(), nullable=False),
    sa.Column('state', sa.String(length=12), nullable=False),
    sa.Column('psbt', sa.Text(), nullable=False),
    sa.Column('package', sa.Text(), nullable=True),
    sa.Column('verdict', sa.String(length=12), nullable=True),
    sa.Column('report', sa.Text(), nullable=True),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finalized_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('reserve_schedules',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('audit', sa.String(length=80), nullable=False),
    sa.Column('policies', sa.Text(), nullable=False),
    sa.Column('every_days', sa.Integer(), nullable=False),
    sa.Column('next_due', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )


def downgrade() -> None:
    op.drop_table('reserve_schedules')
    op.drop_table('reserve_runs')
