"""governance proposals under quorum (issue 17)

Revision ID: 0011
Revises: 0010
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('governance_proposals',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('target', sa.String(length=200), nullable=False),
    sa.Column('change', sa.Text(), nullable=False),
    sa.Column('before', sa.Text(), nullable=False),
    sa.Column('loosening', sa.Boolean(), nullable=False),
    sa.Column('proposer', sa.String(length=64), nullable=False),
    sa.Column('required', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('scheduled_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('execute_after', sa.DateTime(timezone=True), nullable=True),
    sa.Column('executed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_governance_proposals_state', 'governance_proposals', ['state'], unique=False)
    op.create_table('governance_votes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('proposal_id', sa.Integer(), nullable=False),
    sa.Column('voter', sa.String(length=64), nullable=False),
    sa.Column('decision', sa.String(length=10), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['proposal_id'], ['governance_proposals.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('proposal_id', 'voter')
    )
    op.create_index(op.f('ix_governance_votes_proposal_id'), 'governance_votes', ['proposal_id'], unique=False)
    settings = op.create_table('governance_settings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('quorum', sa.Integer(), nullable=False),
    sa.Column('loosen_delay', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    # the defaults: one other person approves (two people in all); loosening waits 24 hours
    op.bulk_insert(settings, [{"id": 1, "quorum": 1, "loosen_delay": 86400}])


def downgrade() -> None:
    op.drop_table('governance_settings')
    op.drop_index(op.f('ix_governance_votes_proposal_id'), table_name='governance_votes')
    op.drop_table('governance_votes')
    op.drop_index('ix_governance_proposals_state', table_name='governance_proposals')
    op.drop_table('governance_proposals')
