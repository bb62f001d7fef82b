"""mining treasury: pools, accounts, devices, statements, telemetry, discrepancies, sweeps

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('mining_pools',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=80), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('mining_accounts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('pool_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=80), nullable=False),
    sa.Column('scheme', sa.String(length=10), nullable=False),
    sa.Column('pool_fee_bps', sa.Integer(), nullable=False),
    sa.Column('fee_method', sa.String(length=20), nullable=False),
    sa.Column('payout_threshold', sa.BigInteger(), nullable=False),
    sa.Column('schedule', sa.String(length=20), nullable=False),
    sa.Column('payout_addresses', sa.Text(), nullable=False),
    sa.Column('fleet_policy_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['fleet_policy_id'], ['policies.id'], ),
    sa.ForeignKeyConstraint(['pool_id'], ['mining_pools.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('pool_id', 'name')
    )
    op.create_table('mining_devices',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('serial', sa.String(length=80), nullable=False),
    sa.Column('model', sa.String(length=80), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('worker', sa.String(length=120), nullable=False),
    sa.Column('api_host', sa.String(length=200), nullable=True),
    sa.Column('api_port', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['mining_accounts.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('account_id', 'worker'),
    sa.UniqueConstraint('serial')
    )
    op.create_table('mining_discrepancies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('category', sa.String(length=40), nullable=False),
    sa.Column('severity', sa.String(length=10), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=True),
    sa.Column('day', sa.String(length=10), nullable=True),
    sa.Column('ref', sa.String(length=200), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('resolved_by', sa.String(length=200), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['mining_accounts.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('category', 'ref')
    )
    with op.batch_alter_table('mining_discrepancies', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mining_discrepancies_category'), ['category'], unique=False)

    op.create_table('mining_statement_lines',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('day', sa.String(length=10), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('fee', sa.BigInteger(), nullable=True),
    sa.Column('txid', sa.String(length=64), nullable=True),
    sa.Column('address', sa.String(length=100), nullable=True),
    sa.Column('details', sa.Text(), nullable=False),
    sa.Column('raw_sha256', sa.String(length=64), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('superseded', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['mining_accounts.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('account_id', 'kind', 'key', 'revision')
    )
    with op.batch_alter_table('mining_statement_lines', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mining_statement_lines_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_mining_statement_lines_day'), ['day'], unique=False)

    op.create_table('mining_sweeps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('fleet_policy_id', sa.Integer(), nullable=False),
    sa.Column('spend_id', sa.Integer(), nullable=True),
    sa.Column('destination', sa.String(length=100), nullable=False),
    sa.Column('inputs', sa.Integer(), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('fee', sa.BigInteger(), nullable=False),
    sa.Column('vsize', sa.Integer(), nullable=False),
    sa.Column('deferred', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['fleet_policy_id'], ['policies.id'], ),
    sa.ForeignKeyConstraint(['spend_id'], ['spends.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('mining_telemetry',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.Integer(), nullable=True),
    sa.Column('worker', sa.String(length=120), nullable=False),
    sa.Column('time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('difficulty_accepted', sa.String(length=60), nullable=False),
    sa.Column('mhs_av', sa.String(length=60), nullable=True),
    sa.Column('source', sa.String(length=20), nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['mining_devices.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('mining_telemetry', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mining_telemetry_device_id'), ['device_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_mining_telemetry_time'), ['time'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('mining_telemetry', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_mining_telemetry_time'))
        batch_op.drop_index(batch_op.f('ix_mining_telemetry_device_id'))

    op.drop_table('mining_telemetry')
    op.drop_table('mining_sweeps')
    with op.batch_alter_table('mining_statement_lines', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_mining_statement_lines_day'))
        batch_op.drop_index(batch_op.f('ix_mining_statement_lines_account_id'))

    op.drop_table('mining_statement_lines')
    with op.batch_alter_table('mining_discrepancies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_mining_discrepancies_category'))

    op.drop_table('mining_discrepancies')
    op.drop_table('mining_devices')
    op.drop_table('mining_accounts')
    op.drop_table('mining_pools')
