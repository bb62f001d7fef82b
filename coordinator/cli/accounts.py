"""`custody user|token ...`: console and API accounts from the database holder's shell: enrollment links,
lock-outs, API tokens."""
from __future__ import annotations

import os

from coordinator.cli.plumbing import sessions


def add_commands(sub, command) -> None:
    """Register the commands; `command(name, handler, help, parent)` comes from coordinator.cli.main."""
    users = sub.add_parser("user", help="console and API accounts").add_subparsers(dest="user_command", required=True)
    link_base = dict(default=os.environ.get("CUSTODY_URL") or "http://127.0.0.1:8000",
                     help="the console's address, for the link (default $CUSTODY_URL or http://127.0.0.1:8000)")
    c = command("add", _user_add, "add an account: prints a one-time enrollment link on which its holder sets "
                "their own password and second factor", users)
    c.add_argument("username")
    c.add_argument("--role", required=True, choices=["admin", "officer", "signatory", "auditor", "viewer"])
    c.add_argument("--totp", action="store_true", help="a second factor for roles that do not require one")
    c.add_argument("--url", **link_base)
    command("list", _user_list, "list accounts", users)
    c = command("unlock", _user_unlock, "clear a lock-out after failed logins", users)
    c.add_argument("username")
    c = command("reset", _user_reset, "clear an account's password and second factor, end its sessions and "
                "tokens, and print a new enrollment link (also the recovery path for the last admin)", users)
    c.add_argument("username")
    c.add_argument("--url", **link_base)
    tokens = sub.add_parser("token", help="API tokens").add_subparsers(dest="token_command", required=True)
    c = command("create", _token_create, "make an API token for a user (printed once; only its hash is kept)", tokens)
    c.add_argument("username")
    c.add_argument("--name", required=True)
    c.add_argument("--role", help="the user's role (default) or viewer")
    c.add_argument("--days", type=int, default=90, help="lifetime in days")


def _enrollment_shown(args, user, token: str, link) -> dict:
    return {"username": user.username, "role": user.role,
            "enrollment_link": args.url.rstrip("/") + f"/enroll/{token}",
            "enrollment_expires_at": link.expires_at.isoformat()}


def _user_add(args):
    from coordinator import accounts
    with sessions(args).begin() as s:
        user, token, link = accounts.invite_user(s, args.username, args.role, second_factor=args.totp,
                                                 actor=args.actor)
        return _enrollment_shown(args, user, token, link)


def _user_reset(args):
    from coordinator import accounts
    with sessions(args).begin() as s:
        user = accounts.get_user(s, args.username)
        token, link = accounts.reset_credentials(s, user, actor=args.actor, by=None)
        return _enrollment_shown(args, user, token, link)


def _user_list(args):
    from coordinator import accounts
    with sessions(args)() as s:
        return [accounts.user_json(u) for u in accounts.list_users(s)]


def _user_unlock(args):
    from coordinator import accounts
    with sessions(args).begin() as s:
        return accounts.user_json(accounts.unlock(s, accounts.get_user(s, args.username), actor=args.actor))


def _token_create(args):
    from coordinator import accounts
    with sessions(args).begin() as s:
        token, row = accounts.create_token(s, accounts.get_user(s, args.username), args.name, role=args.role,
                                           expires_in_days=args.days)
        return {"token": token, "id": row.id, "role": row.role,
                "expires_at": row.expires_at.isoformat() if row.expires_at else None}
