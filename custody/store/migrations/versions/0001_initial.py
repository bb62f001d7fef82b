"""initial schema: organizations, signatories, devices, keys, policies, addresses, chain, utxos, labels

Revision ID: 0001
Revises: 
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('blocks',
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('time', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('height'),
    sa.UniqueConstraint('hash')
    )
    op.create_table('labels',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('type', sa.String(length=10), nullable=False),
    sa.Column('ref', sa.String(length=200), nullable=False),
    sa.Column('label', sa.Text(), nullable=False),
    sa.Column('origin', sa.Text(), nullable=True),
    sa.Column('spendable', sa.Boolean(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('type', 'ref')
    )
    op.create_table('organizations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('transactions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('txid', sa.String(length=64), nullable=False),
    sa.Column('block_height', sa.Integer(), nullable=True),
    sa.Column('block_hash', sa.String(length=64), nullable=True),
    sa.Column('first_seen', sa.DateTime(timezone=True), nullable=False),
    sa.Column('fee', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('txid')
    )
    with op.batch_alter_table('transactions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_transactions_block_height'), ['block_height'], unique=False)

    op.create_table('policies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('organization_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=30), nullable=False),
    sa.Column('threshold', sa.Integer(), nullable=False),
    sa.Column('network', sa.String(length=10), nullable=False),
    sa.Column('descriptor', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('recovery_threshold', sa.Integer(), nullable=False),
    sa.Column('recovery_after', sa.Integer(), nullable=False),
    sa.Column('gap_limit', sa.Integer(), nullable=False),
    sa.Column('scanned_height', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('signatories',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('organization_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=True),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('organization_id', 'name')
    )
    op.create_table('addresses',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('policy_id', sa.Integer(), nullable=False),
    sa.Column('branch', sa.Integer(), nullable=False),
    sa.Column('index', sa.Integer(), nullable=False),
    sa.Column('script_pubkey', sa.LargeBinary(), nullable=False),
    sa.Column('address', sa.String(length=100), nullable=False),
    sa.Column('used', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['policy_id'], ['policies.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('policy_id', 'branch', 'index'),
    sa.UniqueConstraint('script_pubkey')
    )
    op.create_table('policy_transactions',
    sa.Column('policy_id', sa.Integer(), nullable=False),
    sa.Column('transaction_id', sa.Integer(), nullable=False),
    sa.Column('received', sa.BigInteger(), nullable=False),
    sa.Column('spent', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['policy_id'], ['policies.id'], ),
    sa.ForeignKeyConstraint(['transaction_id'], ['transactions.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('policy_id', 'transaction_id')
    )
    op.create_table('signing_devices',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('signatory_id', sa.Integer(), nullable=True),
    sa.Column('model', sa.String(length=100), nullable=False),
    sa.Column('serial', sa.String(length=100), nullable=False),
    sa.Column('fingerprint', sa.String(length=8), nullable=True),
    sa.Column('firmware_version', sa.String(length=50), nullable=True),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['signatory_id'], ['signatories.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('serial')
    )
    op.create_table('keys',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('fingerprint', sa.String(length=8), nullable=False),
    sa.Column('path', sa.String(length=200), nullable=False),
    sa.Column('xpub', sa.String(length=120), nullable=False),
    sa.Column('network', sa.String(length=10), nullable=False),
    sa.Column('signatory_id', sa.Integer(), nullable=True),
    sa.Column('device_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['signing_devices.id'], ),
    sa.ForeignKeyConstraint(['signatory_id'], ['signatories.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('xpub')
    )
    op.create_table('utxos',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('policy_id', sa.Integer(), nullable=False),
    sa.Column('address_id', sa.Integer(), nullable=False),
    sa.Column('txid', sa.String(length=64), nullable=False),
    sa.Column('vout', sa.Integer(), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=True),
    sa.Column('coinbase', sa.Boolean(), nullable=False),
    sa.Column('spent_txid', sa.String(length=64), nullable=True),
    sa.Column('spent_height', sa.Integer(), nullable=True),
    sa.Column('frozen', sa.Boolean(), nullable=False),
    sa.Column('freeze_reason', sa.Text(), nullable=True),
    sa.Column('reserved_by', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['address_id'], ['addresses.id'], ),
    sa.ForeignKeyConstraint(['policy_id'], ['policies.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('txid', 'vout')
    )
    with op.batch_alter_table('utxos', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_utxos_policy_id'), ['policy_id'], unique=False)
        batch_op.create_index('ix_utxos_spent', ['policy_id', 'spent_txid'], unique=False)

    op.create_table('policy_keys',
    sa.Column('policy_id', sa.Integer(), nullable=False),
    sa.Column('key_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('role', sa.String(length=10), nullable=False),
    sa.ForeignKeyConstraint(['key_id'], ['keys.id'], ),
    sa.ForeignKeyConstraint(['policy_id'], ['policies.id'], ),
    sa.PrimaryKeyConstraint('policy_id', 'key_id')
    )


def downgrade() -> None:
    op.drop_table('policy_keys')
    with op.batch_alter_table('utxos', schema=None) as batch_op:
        batch_op.drop_index('ix_utxos_spent')
        batch_op.drop_index(batch_op.f('ix_utxos_policy_id'))

    op.drop_table('utxos')
    op.drop_table('keys')
    op.drop_table('signing_devices')
    op.drop_table('policy_transactions')
    op.drop_table('addresses')
    op.drop_table('signatories')
    op.drop_table('policies')
    with op.batch_alter_table('transactions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_transactions_block_height'))

    op.drop_table('transactions')
    op.drop_table('organizations')
    op.drop_table('labels')
    op.drop_table('blocks')
