"""accounts: canonical usernames, failed-login log rate limit, idle sessions (issue 16)

- users.username becomes canonical (NFKC, case-folded, 2-64 of a-z 0-9 . _ - @): its unique
  constraint is then on the identity, so "OLGA" can no longer act as an officer besides "olga". Names
  that fold to the same identity, or that have no valid canonical form, stop the upgrade with a list
  of them: rename those accounts (on the old version) and upgrade again. Spends and approvals that
  name a renamed user are renamed with it, so a requester still cannot approve their own request.
- users.failures_unlogged, users.failure_logged_at: failed logins are logged at most once a minute
  per account, with a count.
- login_sessions.last_seen_at: sessions end when idle.

Revision ID: 0009
Revises: 0008
"""
import re
import unicodedata

from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

# The rule as of this revision (coordinator.accounts.canonical_username), kept here so that the
# migration does what it did when it was written.
_USERNAME = re.compile(r"[a-z0-9][a-z0-9._@-]{1,63}")


def _canonical(name: str) -> str | None:
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).strip().casefold())
    return folded if _USERNAME.fullmatch(folded) else None


class UsernameCollision(RuntimeError):
    """The upgrade cannot make every username canonical without merging or inventing identities."""


def upgrade() -> None:
    connection = op.get_bind()
    rows = connection.execute(sa.text("SELECT id, username FROM users ORDER BY id")).all()
    owners: dict[str, list[tuple[int, str]]] = {}
    invalid = []
    for user_id, name in rows:
        canonical = _canonical(name)
        if canonical is None:
            invalid.append(f"#{user_id} {name!r}")
        else:
            owners.setdefault(canonical, []).append((user_id, name))
    collisions = [f"{' and '.join(f'#{i} {n!r}' for i, n in found)} are all {canonical!r}"
                  for canonical, found in owners.items() if len(found) > 1]
    if invalid or collisions:
        problems = ([f"no valid canonical form (2-64 of a-z 0-9 . _ - @ after NFKC and case folding): "
                     f"{', '.join(invalid)}"] if invalid else []) + \
                   ([f"the same identity: {'; '.join(collisions)}"] if collisions else [])
        raise UsernameCollision(
            "migration 0009 (canonical usernames) refused, nothing was changed: " + ". ".join(problems)
            + ". Usernames are identities (an officer must not approve as a second spelling of "
              "themselves): rename or remove these accounts with the current version, then upgrade again.")
    for canonical, [(user_id, name)] in owners.items():
        if name == canonical:
            continue
        connection.execute(sa.text("UPDATE users SET username = :new WHERE id = :id"),
                           {"new": canonical, "id": user_id})
        # the names spends and approvals compare (custody.spending.spends.decide) follow the account
        connection.execute(sa.text("UPDATE spends SET requester = :new WHERE requester = :old"),
                           {"new": canonical, "old": name})
        connection.execute(sa.text(
            "UPDATE approvals SET officer = :new WHERE officer = :old AND NOT EXISTS "
            "(SELECT 1 FROM approvals AS other WHERE other.spend_id = approvals.spend_id AND other.officer = :new)"),
            {"new": canonical, "old": name})

    op.add_column('users', sa.Column('failures_unlogged', sa.Integer(), nullable=False, server_default='0'))
    op.add_column('users', sa.Column('failure_logged_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('login_sessions', sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # (usernames stay canonical: their old spellings are not kept)
    op.drop_column('login_sessions', 'last_seen_at')      # SQLite: ALTER TABLE DROP COLUMN, 3.35+
    op.drop_column('users', 'failure_logged_at')
    op.drop_column('users', 'failures_unlogged')
