"""officers' approval credentials (passkeys and key files) and signed approvals (issue 17)

- approver_credentials: each officer's public keys (WebAuthn passkeys, ed25519 and P-256 key files);
  the devices' policies name officers by them.
- approval_challenges: WebAuthn enrolments begun and not yet finished.
- approvals.credential_id, approvals.proof: an approval is the officer's signature over the unsigned
  transaction. Approvals recorded before this revision carry none; spends still waiting for approvals
  are approved again by signature (their earlier approvals no longer count for the devices).

Revision ID: 0010
Revises: 0009
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('approver_credentials',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('public_key', sa.String(length=66), nullable=False),
    sa.Column('label', sa.String(length=100), nullable=False),
    sa.Column('rp_id', sa.String(length=253), nullable=True),
    sa.Column('credential_id', sa.String(length=1400), nullable=True),
    sa.Column('attested', sa.Text(), nullable=True),
    sa.Column('sign_count', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('public_key')
    )
    op.create_index(op.f('ix_approver_credentials_user_id'), 'approver_credentials', ['user_id'], unique=False)
    op.create_table('approval_challenges',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('purpose', sa.String(length=20), nullable=False),
    sa.Column('state', sa.Text(), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('user_id', 'purpose')
    )
    op.create_index(op.f('ix_approval_challenges_user_id'), 'approval_challenges', ['user_id'], unique=False)
    with op.batch_alter_table('approvals') as batch:
        batch.add_column(sa.Column('credential_id', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('proof', sa.Text(), nullable=True))
        batch.create_foreign_key('fk_approvals_credential_id', 'approver_credentials', ['credential_id'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('approvals') as batch:
        batch.drop_constraint('fk_approvals_credential_id', type_='foreignkey')
        batch.drop_column('proof')
        batch.drop_column('credential_id')
    op.drop_index(op.f('ix_approval_challenges_user_id'), table_name='approval_challenges')
    op.drop_table('approval_challenges')
    op.drop_index(op.f('ix_approver_credentials_user_id'), table_name='approver_credentials')
    op.drop_table('approver_credentials')
