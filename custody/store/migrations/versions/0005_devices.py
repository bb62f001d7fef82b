"""device lifecycle: registrations with proofs, firmware trust and releases, ceremonies, rotations

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('signing_devices') as batch:
        batch.add_column(sa.Column('hwi_type', sa.String(length=40), nullable=True))
    op.create_table('device_registrations',
    sa.Column('device_id', sa.Integer(), nullable=False),
    sa.Column('policy_id', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=12), nullable=False),
    sa.Column('policy_hash', sa.String(length=64), nullable=False),
    sa.Column('proof', sa.Text(), nullable=False),
    sa.Column('proof_address', sa.String(length=100), nullable=False),
    sa.Column('first_address', sa.String(length=100), nullable=False),
    sa.Column('registered_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('confirmed_by', sa.String(length=200), nullable=True),
    sa.Column('confirmed_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['device_id'], ['signing_devices.id'], ),
    sa.ForeignKeyConstraint(['policy_id'], ['policies.id'], ),
    sa.PrimaryKeyConstraint('device_id', 'policy_id')
    )
    op.create_table('firmware_models',
    sa.Column('model', sa.String(length=100), nullable=False),
    sa.Column('trusted_keys', sa.Text(), nullable=False),
    sa.Column('threshold', sa.Integer(), nullable=False),
    sa.Column('production', sa.Boolean(), nullable=False),
    sa.Column('min_version', sa.String(length=20), nullable=True),
    sa.PrimaryKeyConstraint('model')
    )
    op.create_table('firmware_releases',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model', sa.String(length=100), nullable=False),
    sa.Column('version', sa.String(length=20), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('signatures', sa.Integer(), nullable=False),
    sa.Column('image', sa.LargeBinary(), nullable=False),
    sa.Column('added_by', sa.String(length=200), nullable=False),
    sa.Column('added_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model'], ['firmware_models.model'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sha256')
    )
    op.create_table('ceremonies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('policy_name', sa.String(length=200), nullable=False),
    sa.Column('threshold', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=12), nullable=False),
    sa.Column('policy_id', sa.Integer(), nullable=True),
    sa.Column('replaces_policy_id', sa.Integer(), nullable=True),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['policy_id'], ['policies.id'], ),
    sa.ForeignKeyConstraint(['replaces_policy_id'], ['policies.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('policy_name')
    )
    op.create_table('ceremony_members',
    sa.Column('ceremony_id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.Integer(), nullable=False),
    sa.Column('challenge', sa.String(length=64), nullable=False),
    sa.Column('key_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['ceremony_id'], ['ceremonies.id'], ),
    sa.ForeignKeyConstraint(['device_id'], ['signing_devices.id'], ),
    sa.ForeignKeyConstraint(['key_id'], ['keys.id'], ),
    sa.PrimaryKeyConstraint('ceremony_id', 'device_id')
    )
    op.create_table('rotations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('old_policy_id', sa.Integer(), nullable=False),
    sa.Column('ceremony_id', sa.Integer(), nullable=False),
    sa.Column('retiring_devices', sa.Text(), nullable=False),
    sa.Column('state', sa.String(length=12), nullable=False),
    sa.Column('test_spend_id', sa.Integer(), nullable=True),
    sa.Column('migration_spend_id', sa.Integer(), nullable=True),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['old_policy_id'], ['policies.id'], ),
    sa.ForeignKeyConstraint(['ceremony_id'], ['ceremonies.id'], ),
    sa.ForeignKeyConstraint(['test_spend_id'], ['spends.id'], ),
    sa.ForeignKeyConstraint(['migration_spend_id'], ['spends.id'], ),
    sa.PrimaryKeyConstraint('id')
    )


def downgrade() -> None:
    op.drop_table('rotations')
    op.drop_table('ceremony_members')
    op.drop_table('ceremonies')
    op.drop_table('firmware_releases')
    op.drop_table('firmware_models')
    op.drop_table('device_registrations')
    with op.batch_alter_table('signing_devices') as batch:
        batch.drop_column('hwi_type')
