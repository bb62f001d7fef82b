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

from .errors import CustodyError

# Only what every command needs is imported here: `custody --help` and `custody derive` should start in
# a few tens of milliseconds, and the database layer (SQLAlchemy, Alembic) and the services take 0.7 to
# 2 s to import. The rest is imported by the handler that uses it.


class _OnFirstUse:
    """A module imported when one of its attributes is first used, so a handler pays only for its own."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr):
        return getattr(importlib.import_module(self._name), attr)


service = _OnFirstUse("custody.service")

# Copies of constants whose modules import SQLAlchemy (tests/test_cli_startup.py keeps them equal).
_COIN_STATES = ("unconfirmed", "confirmed", "immature", "frozen", "reserved", "spent")   # ledger.STATES
_LABEL_TYPES = ("tx", "addr", "pubkey", "input", "output", "xpub")                        # ledger.LABEL_TYPES

# Command groups whose parsers are built only when one of them is chosen: their modules import the
# services at once. name -> help as `custody --help` lists it (the modules' own, checked by a test).
_GROUPS = {
    "device_cli": {"device": "signing devices: inventory, status, signing",
                   "ceremony": "key ceremonies: keys with proof, registration, confirmation",
                   "firmware": "firmware releases, minimum versions, upgrades",
                   "rotation": "replace devices: successor policy, test spend, migration"},
    "reserve_cli": {"reserves": "proof of reserves for auditors"},
    "mining_cli": {"mining": "mining treasury: pools, fleet, statements, reconciliation, sweeps"},
    "governance_cli": {"governance": "proposals to change rules, statuses and roles, under a quorum"},
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
    from .node_client import NodeError
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
    """custody.db.default_url(), without importing SQLAlchemy and Alembic to print it in the help."""
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

    key = sub.add_parser("key", help="extended public keys").add_subparsers(dest="key_command", required=True)
    c = command("import", _key_import, "import an xpub/tpub/SLIP-132 key with its origin", key)
    c.add_argument("key", help="[fingerprint/path]xpub, or a bare key with --fingerprint and --path")
    c.add_argument("--fingerprint")
    c.add_argument("--path")
    command("list", _key_list, "list stored keys", key)

    pol = sub.add_parser("policy", help="custody policies").add_subparsers(dest="policy_command", required=True)
    c = command("create", _policy_create, "create an M-of-N policy", pol)
    c.add_argument("name")
    c.add_argument("--kind", default="wsh-sortedmulti",
                   choices=["wsh-sortedmulti", "wsh-multi", "tr-sortedmulti_a", "wsh-recovery"])
    c.add_argument("--threshold", "-m", type=int, required=True)
    c.add_argument("--key", action="append", required=True, help="repeat for each key")
    c.add_argument("--recovery-key", action="append", default=[])
    c.add_argument("--recovery-threshold", type=int, default=1)
    c.add_argument("--recovery-after", type=int, default=0, help="blocks before the recovery path opens")
    c.add_argument("--gap-limit", type=int, default=20)
    c = command("import", _policy_import, "import a policy from a wallet file", pol)
    c.add_argument("file", help="file path, or - for standard input")
    c.add_argument("--format", help="core, bsms, coldcard, sparrow, specter, caravan (detected when omitted)")
    c.add_argument("--name")
    c.add_argument("--gap-limit", type=int, default=20)
    c = command("export", _policy_export, "export a policy as a wallet file", pol)
    c.add_argument("name")
    c.add_argument("--format", default="core")
    command("list", _policy_list, "list policies", pol)
    c = command("show", _policy_show, "show a policy", pol)
    c.add_argument("name")
    c = command("status", _policy_status, "move a policy to active, retiring or retired", pol)
    c.add_argument("name")
    c.add_argument("status", choices=["active", "retiring", "retired"])

    c = command("addresses", _addresses, "addresses of a policy")
    c.add_argument("name")
    c.add_argument("--branch", type=int, choices=[0, 1], default=0)
    c.add_argument("--unused", action="store_true")
    ap = sub.add_parser("approver", help="officers' approval keys (what the devices' policies name)").add_subparsers(
        dest="approver_command", required=True)
    c = command("keygen", _approver_keygen, "make an approval key file; the officer keeps it, the coordinator "
                "gets only its public key", ap)
    c.add_argument("file")
    c.add_argument("--kind", choices=["ed25519", "p256"], default="ed25519")
    c = command("enroll", _approver_enroll, "enrol an officer's approval public key (hex, or a PEM file)", ap)
    c.add_argument("public_key")
    c.add_argument("--officer", required=True)
    c.add_argument("--label", default="key file")
    command("list", _approver_list, "every officer's approval keys, as a device policy's approvers", ap)

    c = command("derive", _derive, "derive addresses of a descriptor, as Bitcoin Core's deriveaddresses")
    c.add_argument("descriptor")
    c.add_argument("--from", dest="start", type=int, default=0)
    c.add_argument("--to", dest="end", type=int, default=0)

    command("sync", _sync, "bring the ledger up to the node's tip once")
    c = command("worker", _worker, "follow the node continuously (one leader per database)")
    c.add_argument("--interval", type=float, default=2.0)

    c = command("balance", _balance, "balances per policy")
    c.add_argument("name", nargs="?")
    c = command("balance-history", _balance_history, "confirmed balance after each block that changed it")
    c.add_argument("name")
    c = command("utxos", _utxos, "coins of a policy")
    c.add_argument("name")
    c.add_argument("--state", action="append", choices=list(_COIN_STATES))
    c.add_argument("--all", action="store_true", help="include spent coins")
    c = command("history", _history, "transactions of a policy")
    c.add_argument("name")
    c = command("freeze", _freeze, "freeze a coin so no spend may use it")
    c.add_argument("outpoint")
    c.add_argument("--reason", required=True)
    c = command("unfreeze", _unfreeze, "release a frozen coin")
    c.add_argument("outpoint")

    rule = sub.add_parser("approval-rule", help="what a spend needs before it reaches signers").add_subparsers(
        dest="rule_command", required=True)
    c = command("set", _rule_set, "set a policy's approval rule (without one, nothing can be spent)", rule)
    c.add_argument("policy")
    c.add_argument("--approvals", type=int, required=True, help="distinct approving officers needed")
    c.add_argument("--per-request", help="largest single spend (BTC, or NNNsat)")
    c.add_argument("--daily", help="most that may leave in any 24 hours")
    c.add_argument("--allow", action="append", help="allowed destination address (repeat); none: any")
    c.add_argument("--delay-above", help="spends of at least this amount wait --delay seconds")
    c.add_argument("--delay", type=int, default=0)

    sp = sub.add_parser("spend", help="spend requests, approvals, PSBTs, signatures, broadcast").add_subparsers(
        dest="spend_command", required=True)
    c = command("request", _spend_request, "request a spend", sp)
    c.add_argument("policy")
    c.add_argument("--to", action="append", required=True, metavar="ADDRESS=AMOUNT",
                   help="destination and amount in BTC (or NNNsat); repeat for several")
    c.add_argument("--requester", required=True)
    c.add_argument("--fee-rate", type=float, help="sat/vB (default: the node's estimate, floored and capped)")
    c.add_argument("--memo")
    c.add_argument("--coin", action="append", help="spend exactly these coins (txid:vout)")
    c.add_argument("--sweep", action="store_true", help="send everything chosen to the one destination")
    c = command("approve", _spend_decide, "approve a spend request: sign its unsigned transaction with your "
                "approval key file", sp)
    c.add_argument("id", type=int)
    c.add_argument("--officer", required=True)
    c.add_argument("--key", required=True, help="the officer's approval key file (PEM; see `custody approver keygen`)")
    c.set_defaults(approve=True)
    c = command("reject", _spend_decide, "reject a spend request", sp)
    c.add_argument("id", type=int)
    c.add_argument("--officer", required=True)
    c.set_defaults(approve=False, key=None)
    c = command("psbt", _spend_psbt, "make the spend's PSBT (handed to signers once approved) and print it", sp)
    c.add_argument("id", type=int)
    c.add_argument("--v2", action="store_true", help="PSBT version 2 (BIP-370)")
    c.add_argument("--out", help="write the PSBT (binary) to this file")
    c = command("sign", _spend_sign, "upload a signer's PSBT (base64, hex or binary; - for stdin)", sp)
    c.add_argument("id", type=int)
    c.add_argument("file")
    for name, handler, help_ in (("broadcast", _spend_broadcast, "finalize, check with the node and broadcast"),
                                 ("track", _spend_track, "follow a broadcast spend to confirmation"),
                                 ("show", _spend_show, "show a spend and its timeline"),
                                 ("cancel", _spend_cancel, "cancel a spend not yet broadcast")):
        c = command(name, handler, help_, sp)
        c.add_argument("id", type=int)
        if name == "track":
            c.add_argument("--confirmations", type=int, default=1)
    c = command("list", _spend_list, "list spends", sp)
    c.add_argument("--policy")
    c = command("preview", _spend_preview, "what a request would cost: inputs, fee, change (nothing is kept)", sp)
    c.add_argument("policy")
    c.add_argument("--to", action="append", required=True, metavar="ADDRESS=AMOUNT")
    c.add_argument("--fee-rate", type=float)
    c.add_argument("--coin", action="append")
    c.add_argument("--sweep", action="store_true")
    c = command("bump-fee", _spend_bump, "replace an unconfirmed broadcast at a higher fee rate (RBF)", sp)
    c.add_argument("id", type=int)
    c.add_argument("--fee-rate", type=float, required=True)
    c.add_argument("--cancel", action="store_true", help="send everything back to the policy instead")
    c = command("cpfp", _spend_cpfp, "child pays for parent: spend the stuck spend's change back to the policy", sp)
    c.add_argument("id", type=int)
    c.add_argument("--fee-rate", type=float, required=True)
    c.add_argument("--requester", required=True)

    for module, commands in _GROUPS.items():
        sub.add_later(commands, lambda sub, module=module: importlib.import_module(f".{module}", __package__)
                      .add_commands(sub, command, _in_transaction, *(() if module == "device_cli" else (_client,))))

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

    c = command("serve", _serve, "serve the web console and the API")
    c.add_argument("--db", default=argparse.SUPPRESS, help="database URL (as the global --db)")
    c.add_argument("--node", default=argparse.SUPPRESS, help="Bitcoin Core RPC URL (as the global --node)")
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, default=8000)
    c.add_argument("--workers", type=int, default=1, help="server processes")
    c.add_argument("--sync-interval", type=float, default=2.0, help="seconds between ledger syncs (0: never)")
    c.add_argument("--tls-cert", help="serve HTTPS with this certificate (cookies then get Secure)")
    c.add_argument("--tls-key")

    ps = sub.add_parser("psbt", help="PSBT tools").add_subparsers(dest="psbt_command", required=True)
    c = command("check", _psbt_check, "is this a well-formed PSBT (v0 or v2)? JSON summary, or one line why not", ps)
    c.add_argument("file", help="PSBT file (base64, hex or binary), or - for standard input")

    log = sub.add_parser("log", help="the tamper-evident event log").add_subparsers(dest="log_command", required=True)
    c = command("verify", _log_verify, "check every entry's hash, chain link and signature", log)
    c.add_argument("--file", help="verify an exported JSONL copy instead of the database")
    c.add_argument("--key", action="append", help="accepted coordinator public key (hex); default: this coordinator's")
    c.add_argument("--checkpoint", nargs="+", default=[], metavar="FILE",
                   help="checkpoint files (or directories of them) the log must still agree with")
    c = command("export", _log_export, "export the log as JSON Lines", log)
    c.add_argument("file", nargs="?", default="-")
    c = command("checkpoint", _log_checkpoint, "sign the log's head and write it for the auditor to keep", log)
    c.add_argument("--out", required=True, help="directory to write the checkpoint file in")
    c = command("log-signer", _log_signer, "hold the coordinator's log key in its own process, signing over a "
                "unix socket (the coordinator then runs with CUSTODY_LOG_SIGNER=unix:PATH)")
    c.add_argument("--key", required=True, help="the log key file (32-byte hex seed, mode 0600)")
    c.add_argument("--socket", required=True, help="the unix socket to answer on (made owner-only)")

    lab = sub.add_parser("labels", help="BIP-329 labels").add_subparsers(dest="labels_command", required=True)
    c = command("import", _labels_import, "import BIP-329 JSON Lines", lab)
    c.add_argument("file", help="file path, or - for standard input")
    c = command("export", _labels_export, "export BIP-329 JSON Lines", lab)
    c.add_argument("file", nargs="?", default="-")
    c = command("label", _label, "set one label")
    c.add_argument("type", choices=list(_LABEL_TYPES))
    c.add_argument("ref")
    c.add_argument("text")
    return p


def _login() -> str:
    import getpass
    try:
        return getpass.getuser()
    except Exception:
        return "operator"


def _sessions(args):
    from .db import open_database
    return open_database(args.db)


def _in_transaction(fn):
    """A handler running `fn(session, args)` in one transaction: committed on success, rolled back on a refusal."""
    def handler(args):
        with _sessions(args).begin() as s:
            return fn(s, args)
    return handler


def _client(args):
    from .node_client import NodeClient
    return NodeClient(args.node, user=args.rpcuser, password=args.rpcpassword, cookie_file=args.node_cookie,
                      datadir=args.node_datadir, network=args.network)


def _read(path: str) -> str:
    return sys.stdin.read() if path == "-" else Path(path).read_text()


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


def _progress(done: int, total: int) -> None:
    if not sys.stderr.isatty() or total < 2:
        return
    width = 30
    filled = width * done // total
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} blocks")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


# -- keys and policies ------------------------------------------------------------------------
# Every handler opens the database, calls the one service function the API calls too, and returns
# what it returned; `sessions.begin()` commits on success and rolls back on any refusal.
def _key_import(args):
    with _sessions(args).begin() as s:
        return service.key_import(s, args.key, network=args.network, fingerprint=args.fingerprint, path=args.path)


def _key_list(args):
    with _sessions(args)() as s:
        return service.key_list(s)


def _policy_create(args):
    with _sessions(args).begin() as s:
        return service.policy_create(s, args.name, kind=args.kind, threshold=args.threshold, keys=args.key,
                                     network=args.network, recovery_keys=args.recovery_key,
                                     recovery_threshold=args.recovery_threshold, recovery_after=args.recovery_after,
                                     gap_limit=args.gap_limit, actor=args.actor)


def _policy_import(args):
    with _sessions(args).begin() as s:
        return service.policy_import(s, _read(args.file), fmt=args.format, name=args.name, network=args.network,
                                     gap_limit=args.gap_limit, actor=args.actor)


def _policy_export(args):
    with _sessions(args)() as s:
        return service.policy_export(s, args.name, args.format)


def _policy_list(args):
    with _sessions(args)() as s:
        return service.policy_list(s)


def _policy_show(args):
    with _sessions(args)() as s:
        shown = service.policy_show(s, args.name)
        return shown if args.json else {k: v for k, v in shown.items() if k != "approval_rule"}


def _policy_status(args):
    with _sessions(args).begin() as s:
        return service.policy_status(s, args.name, args.status, actor=args.actor)


def _addresses(args):
    with _sessions(args)() as s:
        return service.addresses(s, args.name, branch=args.branch, unused=args.unused)


def _derive(args):
    from .derive import derive_descriptor_addresses
    return derive_descriptor_addresses(args.descriptor, args.start, args.end, network=args.network)


# -- sync -------------------------------------------------------------------------------------
def _sync(args):
    return service.sync(_sessions(args), _client(args), progress=_progress)


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
    from .jsonlog import setup_json_logging
    from .leader import LeaderLoop
    setup_json_logging()
    sessions, client = _sessions(args), _client(args)
    LeaderLoop(sessions, lambda: client, interval=args.interval).run(stop)
    logging.getLogger("custody.worker").info("worker stopped (%s)", received[0] if received else "done")
    return None


# -- ledger -----------------------------------------------------------------------------------
def _balance(args):
    with _sessions(args)() as s:
        return service.balance(s, args.name)


def _balance_history(args):
    with _sessions(args)() as s:
        return service.balance_history(s, args.name)


def _utxos(args):
    with _sessions(args)() as s:
        return service.utxos(s, args.name, states=args.state, include_spent=args.all)


def _history(args):
    with _sessions(args)() as s:
        return service.history(s, args.name)


def _freeze(args):
    with _sessions(args).begin() as s:
        return service.freeze(s, args.outpoint, args.reason, actor=args.actor)


def _unfreeze(args):
    with _sessions(args).begin() as s:
        return service.unfreeze(s, args.outpoint, actor=args.actor)


def _labels_import(args):
    with _sessions(args).begin() as s:
        return service.labels_import(s, _read(args.file), actor=args.actor)


def _labels_export(args):
    with _sessions(args)() as s:
        return _emit_lines(service.labels_export(s), args.file)


def _emit_lines(text: str, file: str):
    """JSON Lines to standard output ("-") or to a file, with a count."""
    if file == "-":
        return text
    Path(file).write_text(text)
    return {"exported": text.count("\n"), "file": file}


def _label(args):
    with _sessions(args).begin() as s:
        return service.label_set(s, args.type, args.ref, args.text, actor=args.actor)


# -- PSBT tools -------------------------------------------------------------------------------
def _psbt_check(args):
    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    print(json.dumps(service.psbt_check(data, network=args.network), indent=2))
    return None


# -- event log --------------------------------------------------------------------------------
def _log_verify(args):
    keys = set(args.key) if args.key else None
    kept = service.log_checkpoint_files(args.checkpoint, keys=keys) if args.checkpoint else None
    if args.file:
        return service.log_verify(None, keys=keys, jsonl=_read(args.file), checkpoints=kept)
    with _sessions(args)() as s:
        return service.log_verify(s, keys=keys, checkpoints=kept)


def _log_checkpoint(args):
    with _sessions(args).begin() as s:
        return service.log_checkpoint(s, args.out, actor=args.actor)


def _log_signer(args):
    """Serve signatures until SIGTERM or SIGINT."""
    import signal
    import threading
    from .jsonlog import setup_json_logging
    from .log_signer import serve
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    setup_json_logging()
    serve(args.key, args.socket, stop)
    return None


def _log_export(args):
    with _sessions(args)() as s:
        return _emit_lines(service.log_export(s), args.file)


# -- spends -----------------------------------------------------------------------------------
def _rule_set(args):
    with _sessions(args).begin() as s:
        return service.approval_rule_set(s, args.policy, approvals=args.approvals, per_request=args.per_request,
                                         daily=args.daily, allow=args.allow, delay_above=args.delay_above,
                                         delay=args.delay, actor=args.actor)


def _destinations(items: list[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        address, sep, amount = item.partition("=")
        if not sep:
            raise CustodyError(f"--to {item!r}: write ADDRESS=AMOUNT")
        out.append((address, amount))
    return out


def _spend_request(args):
    with _sessions(args).begin() as s:
        return service.spend_request(s, args.policy, requester=args.requester, to=_destinations(args.to),
                                     fee_rate=args.fee_rate, client=_client(args),
                                     memo=args.memo, coins=args.coin, sweep=args.sweep)


def _spend_preview(args):
    with _sessions(args)() as s:
        return service.fee_preview(s, args.policy, to=_destinations(args.to), fee_rate=args.fee_rate,
                                   client=None if args.fee_rate else _client(args), coins=args.coin, sweep=args.sweep)


def _spend_decide(args):
    proof = None
    with _sessions(args).begin() as s:
        if args.approve:
            from .credentials import sign_with_key_file
            spend = service.spends.get_spend(s, args.id)
            if spend.psbt is None and spend.state == "requested":
                service.spends.prepare_psbt(s, spend, _client(args), actor=args.actor)
            proof = sign_with_key_file(Path(args.key), service.spend_approval_message(s, args.id))
        return service.spend_decide(s, args.id, officer=args.officer, approve=args.approve, proof=proof)


def _approver_keygen(args):
    from .credentials import generate_key_file
    try:
        public = generate_key_file(Path(args.file), args.kind)
    except FileExistsError:
        raise CustodyError(f"{args.file} exists: an approval key is never overwritten") from None
    return {"file": args.file, "kind": args.kind, "public_key": public}


def _approver_enroll(args):
    from . import credentials
    from .accounts import get_user
    text = Path(args.public_key).read_text() if Path(args.public_key).is_file() else args.public_key
    with _sessions(args).begin() as s:
        return credentials.credential_json(credentials.enroll_key(s, get_user(s, args.officer), text,
                                                                  label=args.label, actor=args.actor))


def _approver_list(args):
    from . import credentials
    with _sessions(args)() as s:
        return {"approvers": credentials.device_approvers(s)}


def _spend_psbt(args):
    with _sessions(args).begin() as s:
        text = service.spend_psbt(s, args.id, client=_client(args), v2=args.v2, actor=args.actor)
    if args.out:
        import base64
        Path(args.out).write_bytes(base64.b64decode(text))
        return {"id": args.id, "psbt_file": args.out}
    return {"id": args.id, "psbt": text} if args.json else text


def _spend_sign(args):
    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    with _sessions(args).begin() as s:
        return service.spend_sign(s, args.id, data, actor=args.actor)


def _spend_broadcast(args):
    return service.spend_broadcast(_sessions(args), args.id, client=_client(args), actor=args.actor)


def _spend_track(args):
    with _sessions(args).begin() as s:
        return service.spend_track(s, args.id, client=_client(args), confirmations=args.confirmations)


def _spend_bump(args):
    with _sessions(args).begin() as s:
        return service.spend_bump_fee(s, args.id, client=_client(args), fee_rate=args.fee_rate, cancel=args.cancel,
                                      actor=args.actor)


def _spend_cpfp(args):
    with _sessions(args).begin() as s:
        return service.spend_cpfp(s, args.id, client=_client(args), fee_rate=args.fee_rate, requester=args.requester)


def _spend_show(args):
    with _sessions(args)() as s:
        return service.spend_show(s, args.id)


def _spend_cancel(args):
    with _sessions(args).begin() as s:
        return service.spend_cancel(s, args.id, actor=args.actor)


def _spend_list(args):
    with _sessions(args)() as s:
        return service.spend_list(s, policy=args.policy)


# -- users and tokens -------------------------------------------------------------------------
def _enrollment_shown(args, user, token: str, link) -> dict:
    return {"username": user.username, "role": user.role,
            "enrollment_link": args.url.rstrip("/") + f"/enroll/{token}",
            "enrollment_expires_at": link.expires_at.isoformat()}


def _user_add(args):
    from . import accounts
    with _sessions(args).begin() as s:
        user, token, link = accounts.invite_user(s, args.username, args.role, second_factor=args.totp,
                                                 actor=args.actor)
        return _enrollment_shown(args, user, token, link)


def _user_reset(args):
    from . import accounts
    with _sessions(args).begin() as s:
        user = accounts.get_user(s, args.username)
        token, link = accounts.reset_credentials(s, user, actor=args.actor, by=None)
        return _enrollment_shown(args, user, token, link)


def _user_list(args):
    from . import accounts
    with _sessions(args)() as s:
        return [accounts.user_json(u) for u in accounts.list_users(s)]


def _user_unlock(args):
    from . import accounts
    with _sessions(args).begin() as s:
        return accounts.user_json(accounts.unlock(s, accounts.get_user(s, args.username), actor=args.actor))


def _token_create(args):
    from . import accounts
    with _sessions(args).begin() as s:
        token, row = accounts.create_token(s, accounts.get_user(s, args.username), args.name, role=args.role,
                                           expires_in_days=args.days)
        return {"token": token, "id": row.id, "role": row.role,
                "expires_at": row.expires_at.isoformat() if row.expires_at else None}


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
