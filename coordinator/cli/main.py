"""`custody`: keys, policies, addresses, sync and the ledger from the command line.

Every command prints a human table, or JSON with `--json`; on refusal it prints one line naming the
problem and exits 1 (argument errors exit 2), leaving the database as it was.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from custody.errors import CustodyError

from coordinator.cli.plumbing import client, in_transaction, sessions

# Only what every command needs is imported here: `custody --help` and `custody derive` should start in
# a few tens of milliseconds, and the database layer (SQLAlchemy, Alembic) and the services take 0.7 to
# 2 s to import. The rest is imported by the handler that uses it. Each capability's commands are in a
# module of their own (coordinator/cli/ledger.py, spending.py, ...); this one holds the parser, the service
# commands (`serve`, `worker`) and how answers and refusals are printed.

# Command groups whose parsers are built only when one of them is chosen: their modules import the
# services at once. name -> help as `custody --help` lists it (the modules' own, checked by a test).
_GROUPS = {
    "devices": {"device": "signing devices: inventory, status, signing",
                "ceremony": "key ceremonies: keys with proof, registration, confirmation",
                "firmware": "firmware releases, minimum versions, upgrades",
                "rotation": "replace devices: successor policy, test spend, migration"},
    "reserves": {"reserves": "proof of reserves for auditors"},
    "mining": {"mining": "mining treasury: pools, fleet, statements, reconciliation, sweeps"},
    "governance": {"governance": "proposals to change rules, statuses and roles, under a quorum"},
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = args.handler(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        message = _database_refusal(e, args)
        if message is None and not isinstance(e, _refusals()):
            raise
        print(f"custody: error: {message or e}", file=sys.stderr)
        return 1
    if result is not None:
        _print(result, args.json)
    return 0


def _refusals() -> tuple[type[BaseException], ...]:
    """What a command may refuse with (one line, exit 1); NodeError's module is imported only when needed."""
    from custody.chain.node_client import NodeError
    return CustodyError, ValueError, NodeError, OSError


def _database_refusal(e: Exception, args) -> str | None:
    """A database that is down, read-only, corrupt or refuses the credentials, as one line naming the
    database (never its password); None for anything else."""
    exc = sys.modules.get("sqlalchemy.exc")        # SQLAlchemy never loaded: not a database failure
    if exc is None or not isinstance(e, exc.DBAPIError):
        return None
    from sqlalchemy.engine import make_url
    url = getattr(args, "db", None) or _default_db()
    try:
        url = make_url(url).render_as_string(hide_password=True)
    except Exception:                              # unparsable: say nothing that could hold a password
        url = "the configured database"
    reason = (str(e.orig or e).strip().splitlines() or [type(e.orig or e).__name__])[0]
    return f"the database refused: {reason} ({url})"


# -- plumbing -------------------------------------------------------------------------------
def _version() -> str:
    import importlib.metadata
    try:
        return importlib.metadata.version("custody-toolkit")
    except importlib.metadata.PackageNotFoundError:   # a source tree that was never installed
        return "unknown"


class _Version(argparse.Action):
    """`--version`, reading the installed version only when asked (importlib.metadata costs ~20 ms)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show program's version number and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} {_version()}")
        parser.exit()


def _default_db() -> str:
    """custody.store.db.default_url(), without importing SQLAlchemy and Alembic to print it in the help."""
    home = Path(os.environ.get("CUSTODY_HOME", Path.home() / ".custody"))
    return os.environ.get("CUSTODY_DB") or f"sqlite:///{home / 'custody.db'}"


class _Subcommands(argparse._SubParsersAction):
    """Sub-commands of which some are placeholders until chosen (`add_later`): `custody --help` lists
    them, and only `custody mining ...` imports what the mining commands need."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._later: dict = {}

    def add_later(self, commands: dict[str, str], build) -> None:
        """Placeholders for `commands` (name: help), replaced by the parsers `build(self)` adds when one is chosen."""
        for name, help_ in commands.items():
            self.add_parser(name, help=help_)
            self._later[name] = (tuple(commands), build)

    def _build(self, name: str) -> None:
        names, build = self._later[name]
        listed = list(self._choices_actions)       # the help list stays as it was, in its order
        for n in names:
            del self._name_parser_map[n], self._later[n]
        build(self)
        self._choices_actions[:] = listed

    def __call__(self, parser, namespace, values, option_string=None):
        if values[0] in self._later:
            self._build(values[0])
        super().__call__(parser, namespace, values, option_string)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="custody", description="Institutional Bitcoin custody toolkit")
    p.add_argument("--version", action=_Version)
    p.add_argument("--db", default=None, help=f"database URL (default $CUSTODY_DB or {_default_db()})")
    p.add_argument("--node", default=os.environ.get("CUSTODY_NODE", "http://127.0.0.1:18443"),
                   help="Bitcoin Core RPC URL (default $CUSTODY_NODE or http://127.0.0.1:18443)")
    p.add_argument("--node-cookie", default=os.environ.get("CUSTODY_NODE_COOKIE"), help="RPC cookie file")
    p.add_argument("--node-datadir", default=os.environ.get("CUSTODY_NODE_DATADIR"), help="node data directory (for its cookie)")
    p.add_argument("--rpcuser", default=os.environ.get("CUSTODY_RPCUSER"))
    p.add_argument("--rpcpassword", default=os.environ.get("CUSTODY_RPCPASSWORD"))
    p.add_argument("--network", default=os.environ.get("CUSTODY_NETWORK", "regtest"),
                   choices=["main", "test", "testnet4", "signet", "regtest"])
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--actor", default=os.environ.get("CUSTODY_ACTOR") or _login(),
                   help="who is acting, for the event log (default $CUSTODY_ACTOR or the login name)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", action=_Subcommands)

    def command(name, handler, help_, parent=sub):
        c = parent.add_parser(name, help=help_, description=help_)
        c.set_defaults(handler=handler)
        return c

    # each capability's commands, from its own module, in the order `custody --help` lists them
    from coordinator.cli import accounts, approvers, eventlog, ledger, spending
    for module in (ledger, approvers, spending):
        module.add_commands(sub, command)
    for module, commands in _GROUPS.items():
        sub.add_later(commands, lambda sub, module=module: importlib.import_module(f".{module}", __package__)
                      .add_commands(sub, command, in_transaction, *(() if module == "devices" else (client,))))
    for module in (accounts, eventlog):
        module.add_commands(sub, command)

    c = command("worker", _worker, "follow the node continuously (one leader per database)")
    c.add_argument("--interval", type=float, default=2.0)
    c = command("serve", _serve, "serve the web console and the API")
    c.add_argument("--db", default=argparse.SUPPRESS, help="database URL (as the global --db)")
    c.add_argument("--node", default=argparse.SUPPRESS, help="Bitcoin Core RPC URL (as the global --node)")
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, default=8000)
    c.add_argument("--workers", type=int, default=1, help="server processes")
    c.add_argument("--sync-interval", type=float, default=2.0, help="seconds between ledger syncs (0: never)")
    c.add_argument("--tls-cert", help="serve HTTPS with this certificate (cookies then get Secure)")
    c.add_argument("--tls-key")
    return p


def _login() -> str:
    import getpass
    try:
        return getpass.getuser()
    except Exception:
        return "operator"


def _print(result, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    elif isinstance(result, str):
        print(result, end="" if result.endswith("\n") else "\n")
    elif isinstance(result, list):
        if result and isinstance(result[0], dict):
            columns = list(result[0])
            widths = [max(len(c), *(len(_cell(r.get(c))) for r in result)) for c in columns]
            print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
            for r in result:
                print("  ".join(_cell(r.get(c)).ljust(w) for c, w in zip(columns, widths)))
        else:
            for item in result:
                print(item)
    elif isinstance(result, dict):
        for k, v in result.items():
            print(f"{k}: {_cell(v)}")


def _cell(value) -> str:
    return "" if value is None else str(value)


# -- keys and policies ------------------------------------------------------------------------
# Every handler opens the database, calls the one service function the API calls too, and returns
# what it returned; `sessions.begin()` commits on success and rolls back on any refusal.


# -- sync -------------------------------------------------------------------------------------


def _worker(args):
    """Follow the node until SIGTERM or SIGINT (Ctrl-C), which end the current round and exit 0."""
    import logging
    import signal
    import threading
    stop, received = threading.Event(), []

    def on_signal(signum, _frame):
        received.append(signal.Signals(signum).name)
        stop.set()
    signal.signal(signal.SIGTERM, on_signal)             # before the database opens: a signal during
    signal.signal(signal.SIGINT, on_signal)              # migration stops the worker as cleanly
    from coordinator.jsonlog import setup_json_logging
    from coordinator.worker import LeaderLoop
    setup_json_logging()
    db, node = sessions(args), client(args)
    LeaderLoop(db, lambda: node, interval=args.interval).run(stop)
    logging.getLogger("coordinator.worker").info("worker stopped (%s)", received[0] if received else "done")
    return None


# -- ledger -----------------------------------------------------------------------------------


# -- PSBT tools -------------------------------------------------------------------------------


# -- event log --------------------------------------------------------------------------------


# -- spends -----------------------------------------------------------------------------------


# -- users and tokens -------------------------------------------------------------------------


# -- the web console and API --------------------------------------------------------------------
def _serve(args):
    # The coordinator package holds the HTTP service; the core stays free of it.
    from coordinator.server import serve
    serve(db_url=args.db, node_url=args.node, node_options={"user": args.rpcuser, "password": args.rpcpassword,
          "cookie_file": args.node_cookie, "datadir": args.node_datadir, "network": args.network},
          host=args.host, port=args.port, sync_interval=args.sync_interval, workers=args.workers,
          tls_cert=args.tls_cert, tls_key=args.tls_key)
    return None


if __name__ == "__main__":
    sys.exit(main())
