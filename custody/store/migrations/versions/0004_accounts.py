"""users, API tokens, login sessions; indexes for paging through coins

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('password_hash', sa.String(length=200), nullable=False),
    sa.Column('totp_secret', sa.String(length=64), nullable=True),
    sa.Column('last_totp_step', sa.Integer(), nullable=False),
    sa.Column('failed_logins', sa.Integer(), nullable=False),
    sa.Column('locked_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('disabled', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('username')
    )
    op.create_table('api_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    op.create_index('ix_api_tokens_user_id', 'api_tokens', ['user_id'])
    op.create_table('login_sessions',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('csrf_token', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_login_sessions_user_id', 'login_sessions', ['user_id'])
    # The console pages through 100,000 coins by value, height (unconfirmed as newest: the same
    # expression as custody.ledger.coins.HEIGHT_KEY) or outpoint, for all policies or one: partial indexes over
    # unspent coins cover each order, so even a deep page is read from an index alone.
    unspent = sa.text('spent_txid IS NULL')
    height = sa.text('coalesce(height, 2147483647)')
    state = ['height', 'coinbase', 'frozen', 'reserved_by']      # what a coin's state is computed from
    for prefix, columns in (('', []), ('policy_', ['policy_id'])):
        for order, keys in (('value', ['value', 'id']), ('height', [height, 'id']), ('outpoint', ['txid', 'vout'])):
            op.create_index(f'ix_utxos_unspent_{prefix}{order}', 'utxos', columns + keys + state,
                            sqlite_where=unspent, postgresql_where=unspent)
    # The rare states get partial indexes of their own (a plain index on a state column would be
    # preferred by SQLite, without statistics, even for the common states, and scanned in full).
    op.create_index('ix_utxos_frozen', 'utxos', ['id'], sqlite_where=sa.text('frozen = 1'),
                    postgresql_where=sa.text('frozen'))
    op.create_index('ix_utxos_reserved', 'utxos', ['id'], sqlite_where=sa.text('reserved_by IS NOT NULL'),
                    postgresql_where=sa.text('reserved_by IS NOT NULL'))
    op.create_index('ix_utxos_unconfirmed', 'utxos', ['id'], sqlite_where=sa.text('height IS NULL'),
                    postgresql_where=sa.text('height IS NULL'))
    op.create_index('ix_utxos_address_id', 'utxos', ['address_id'])        # searches by address
    op.create_index('ix_addresses_address', 'addresses', ['address'])


def downgrade() -> None:
    op.drop_index('ix_addresses_address', table_name='addresses')
    op.drop_index('ix_utxos_address_id', table_name='utxos')
    for name in ('ix_utxos_frozen', 'ix_utxos_reserved', 'ix_utxos_unconfirmed'):
        op.drop_index(name, table_name='utxos')
    for prefix in ('', 'policy_'):
        for order in ('value', 'height', 'outpoint'):
            op.drop_index(f'ix_utxos_unspent_{prefix}{order}', table_name='utxos')
    op.drop_index('ix_login_sessions_user_id', table_name='login_sessions')
    op.drop_table('login_sessions')
    op.drop_index('ix_api_tokens_user_id', table_name='api_tokens')
    op.drop_table('api_tokens')
    op.drop_table('users')
