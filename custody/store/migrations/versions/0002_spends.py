"""spends, approvals, signatures, approval rules

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('approval_rules',
    sa.Column('policy_id', sa.Integer(), nullable=False),
    sa.Column('required_approvals', sa.Integer(), nullable=False),
    sa.Column('per_request_limit', sa.BigInteger(), nullable=True),
    sa.Column('daily_limit', sa.BigInteger(), nullable=True),
    sa.Column('allow_list', sa.Text(), nullable=True),
    sa.Column('delay_threshold', sa.BigInteger(), nullable=True),
    sa.Column('delay_seconds', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['policy_id'], ['policies.id'], ),
    sa.PrimaryKeyConstraint('policy_id')
    )
    op.create_table('spends',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('policy_id', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('requester', sa.String(length=200), nullable=False),
    sa.Column('memo', sa.Text(), nullable=True),
    sa.Column('destinations', sa.Text(), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('fee_rate_milli', sa.BigInteger(), nullable=False),
    sa.Column('sweep', sa.Boolean(), nullable=False),
    sa.Column('coins', sa.Text(), nullable=True),
    sa.Column('psbt', sa.Text(), nullable=True),
    sa.Column('txid', sa.String(length=64), nullable=True),
    sa.Column('replaced_txids', sa.Text(), nullable=True),
    sa.Column('fee', sa.BigInteger(), nullable=True),
    sa.Column('change_index', sa.Integer(), nullable=True),
    sa.Column('signable_after', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('broadcast_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('confirmed_height', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['policy_id'], ['policies.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('spends', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_spends_policy_id'), ['policy_id'], unique=False)

    op.create_table('approvals',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('spend_id', sa.Integer(), nullable=False),
    sa.Column('officer', sa.String(length=200), nullable=False),
    sa.Column('decision', sa.String(length=10), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['spend_id'], ['spends.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('spend_id', 'officer')
    )
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_approvals_spend_id'), ['spend_id'], unique=False)

    op.create_table('spend_signatures',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('spend_id', sa.Integer(), nullable=False),
    sa.Column('fingerprint', sa.String(length=8), nullable=False),
    sa.Column('inputs_signed', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['spend_id'], ['spends.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('spend_id', 'fingerprint')
    )
    with op.batch_alter_table('spend_signatures', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_spend_signatures_spend_id'), ['spend_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('spend_signatures', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_spend_signatures_spend_id'))

    op.drop_table('spend_signatures')
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_approvals_spend_id'))

    op.drop_table('approvals')
    with op.batch_alter_table('spends', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_spends_policy_id'))

    op.drop_table('spends')
    op.drop_table('approval_rules')
