"""enrollment links: people set their own password and second factor (issue 17)

- users.enrolled_at: when the holder set their own credentials; existing accounts count as enrolled
  when they were created (their holders were handed their password and secret then).
- users.second_factor: the kind of second factor ("totp"; a passkey later), "totp" where a secret
  is set.
- enrollments: one-time links (only the SHA-256 of their secret part is kept).

Revision ID: 0012
Revises: 0011
"""
from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('users', sa.Column('second_factor', sa.String(length=16), nullable=True))
    op.add_column('users', sa.Column('enrolled_at', sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE users SET enrolled_at = created_at")
    op.execute("UPDATE users SET second_factor = 'totp' WHERE totp_secret IS NOT NULL")
    op.create_table('enrollments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('selector', sa.String(length=32), nullable=False),
    sa.Column('verifier_hash', sa.String(length=64), nullable=False),
    sa.Column('second_factor_required', sa.Boolean(), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('spent_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('selector')
    )
    op.create_index('ix_enrollments_user_id', 'enrollments', ['user_id'])


def downgrade() -> None:
    # accounts still waiting for enrollment have no password: the old version could not tell them apart
    op.execute("DELETE FROM login_sessions WHERE user_id IN (SELECT id FROM users WHERE enrolled_at IS NULL)")
    op.execute("UPDATE users SET disabled = true WHERE enrolled_at IS NULL")
    op.drop_index('ix_enrollments_user_id', table_name='enrollments')
    op.drop_table('enrollments')
    op.drop_column('users', 'enrolled_at')      # SQLite: ALTER TABLE DROP COLUMN, 3.35+
    op.drop_column('users', 'second_factor')
