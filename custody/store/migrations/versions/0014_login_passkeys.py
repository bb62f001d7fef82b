"""login passkeys: a passkey as a person's second factor (issue 17)

- approver_credentials.purpose: "approval" (an officer's approval key, as every existing row is) or
  "login" (anyone's passkey for logging in, never counted as an approval key).

Revision ID: 0014
Revises: 0013
"""
from alembic import op
import sqlalchemy as sa


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('approver_credentials', sa.Column('purpose', sa.String(length=10), nullable=False,
                                                    server_default='approval'))


def downgrade() -> None:
    op.execute("DELETE FROM approver_credentials WHERE purpose = 'login'")
    with op.batch_alter_table('approver_credentials') as batch:
        batch.drop_column('purpose')
