"""`custody`: keys, policies, addresses, sync and the ledger from the command line.

Every command prints a human table, or JSON with `--json`; on refusal it prints one line naming the
problem and exits 1 (argument errors exit 2), leaving the database as it was.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path

from sqlalchemy import select

from . import ledger, registry
from .db import default_url, open_database
from .errors import CustodyError
from .node_client import NodeClient, NodeError


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = args.handler(args)
    except (CustodyError, ValueError, NodeError, OSError) as e:
        print(f"custody: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if result is not None:
        _print(result, args.json)
    return 0


# -- plumbing -------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="custody", description="Institutional Bitcoin custody toolkit")
    p.add_argument("--db", default=None, help=f"database URL (default $CUSTODY_DB or {default_url()})")
    p.add_argument("--node", default=os.environ.get("CUSTODY_NODE", "http://127.0.0.1:18443"),
                   help="Bitcoin Core RPC URL (default $CUSTODY_NODE or http://127.0.0.1:18443)")
    p.add_argument("--node-cookie", default=os.environ.get("CUSTODY_NODE_COOKIE"), help="RPC cookie file")
    p.add_argument("--node-datadir", default=os.environ.get("CUSTODY_NODE_DATADIR"), help="node data directory (for its cookie)")
    p.add_argument("--rpcuser", default=os.environ.get("CUSTODY_RPCUSER"))
    p.add_argument("--rpcpassword", default=os.environ.get("CUSTODY_RPCPASSWORD"))
    p.add_argument("--network", default=os.environ.get("CUSTODY_NETWORK", "regtest"),
                   choices=["main", "test", "testnet4", "signet", "regtest"])
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    c.add_argument("--state", action="append", choices=list(ledger.STATES))
    c.add_argument("--all", action="store_true", help="include spent coins")
    c = command("history", _history, "transactions of a policy")
    c.add_argument("name")
    c = command("freeze", _freeze, "freeze a coin so no spend may use it")
    c.add_argument("outpoint")
    c.add_argument("--reason", required=True)
    c = command("unfreeze", _unfreeze, "release a frozen coin")
    c.add_argument("outpoint")

    lab = sub.add_parser("labels", help="BIP-329 labels").add_subparsers(dest="labels_command", required=True)
    c = command("import", _labels_import, "import BIP-329 JSON Lines", lab)
    c.add_argument("file", help="file path, or - for standard input")
    c = command("export", _labels_export, "export BIP-329 JSON Lines", lab)
    c.add_argument("file", nargs="?", default="-")
    c = command("label", _label, "set one label")
    c.add_argument("type", choices=list(ledger.LABEL_TYPES))
    c.add_argument("ref")
    c.add_argument("text")
    return p


def _sessions(args):
    return open_database(args.db)


def _client(args) -> NodeClient:
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
def _key_import(args):
    with _sessions(args).begin() as s:
        key = registry.import_key(s, args.key, network=args.network, fingerprint=args.fingerprint, path=args.path)
        return {"key": key.descriptor_key, "fingerprint": key.fingerprint, "path": key.path}


def _key_list(args):
    from .models import Key
    with _sessions(args)() as s:
        return [{"fingerprint": k.fingerprint, "path": k.path, "xpub": k.xpub} for k in s.scalars(select(Key))]


def _policy_json(s, policy) -> dict:
    balance = ledger.balances(s, policy)[0]
    return {"name": policy.name, "kind": policy.kind, "threshold": policy.threshold, "keys": len(policy.keys),
            "status": policy.status, "network": policy.network, "descriptor": policy.descriptor,
            "balance": balance.total}


def _policy_create(args):
    from .policies import build_policy
    spec = build_policy(args.kind, args.threshold, args.key, network=args.network, recovery_keys=args.recovery_key,
                        recovery_threshold=args.recovery_threshold, recovery_after=args.recovery_after)
    with _sessions(args).begin() as s:
        return _policy_json(s, registry.create_policy(s, args.name, spec, gap_limit=args.gap_limit))


def _policy_import(args):
    from .formats import import_policy
    spec, name = import_policy(_read(args.file), args.format, network=args.network)
    with _sessions(args).begin() as s:
        return _policy_json(s, registry.create_policy(s, args.name or name, spec, gap_limit=args.gap_limit))


def _policy_export(args):
    from .formats import export_policy
    with _sessions(args)() as s:
        policy = registry.get_policy(s, args.name)
        return export_policy(registry.spec_of(policy), args.format, name=policy.name)


def _policy_list(args):
    with _sessions(args)() as s:
        return [{k: v for k, v in _policy_json(s, p).items() if k != "descriptor"} for p in registry.list_policies(s)]


def _policy_show(args):
    with _sessions(args)() as s:
        policy = registry.get_policy(s, args.name)
        shown = _policy_json(s, policy)
        shown["keys"] = [f"{pk.role}: {pk.key.descriptor_key}" for pk in policy.keys]
        shown["recovery"] = (f"{policy.recovery_threshold} key(s) after {policy.recovery_after} blocks"
                             if policy.kind == "wsh-recovery" else None)
        return shown


def _policy_status(args):
    with _sessions(args).begin() as s:
        policy = registry.set_status(s, registry.get_policy(s, args.name), args.status)
        return {"name": policy.name, "status": policy.status}


def _addresses(args):
    from .models import Address
    with _sessions(args)() as s:
        policy = registry.get_policy(s, args.name)
        query = select(Address).where(Address.policy_id == policy.id, Address.branch == args.branch)
        if args.unused:
            query = query.where(Address.used.is_(False))
        return [{"index": a.index, "address": a.address, "used": a.used}
                for a in s.scalars(query.order_by(Address.index))]


def _derive(args):
    from .derive import derive_descriptor_addresses
    return derive_descriptor_addresses(args.descriptor, args.start, args.end, network=args.network)


# -- sync -------------------------------------------------------------------------------------
def _sync(args):
    from .sync import Syncer
    report = Syncer(_sessions(args), _client(args), progress=_progress).sync_once()
    return {"tip": report.tip_height, "blocks_applied": report.blocks_applied,
            "blocks_rolled_back": report.blocks_rolled_back, "policies_discovered": report.policies_discovered,
            "mempool_transactions": report.transactions_seen}


def _worker(args):
    import logging
    import signal
    from .sync import Syncer
    handler = logging.StreamHandler()
    handler.setFormatter(_JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    Syncer(_sessions(args), _client(args)).run_forever(interval=args.interval, stop=stop)
    return None


class _JsonFormatter:
    """One JSON object per line, for log shippers."""

    def format(self, record) -> str:
        return json.dumps({"time": record.created, "level": record.levelname, "logger": record.name,
                           "message": record.getMessage()})


# -- ledger -----------------------------------------------------------------------------------
def _balance(args):
    with _sessions(args)() as s:
        policy = registry.get_policy(s, args.name) if args.name else None
        return [b.to_json() for b in ledger.balances(s, policy)]


def _balance_history(args):
    with _sessions(args)() as s:
        return ledger.balance_history(s, registry.get_policy(s, args.name))


def _utxos(args):
    with _sessions(args)() as s:
        return ledger.list_utxos(s, registry.get_policy(s, args.name),
                                 states=tuple(args.state) if args.state else None, include_spent=args.all)


def _history(args):
    with _sessions(args)() as s:
        return ledger.history(s, registry.get_policy(s, args.name))


def _freeze(args):
    with _sessions(args).begin() as s:
        utxo = ledger.freeze(s, args.outpoint, args.reason)
        return {"outpoint": args.outpoint, "frozen": True, "reason": utxo.freeze_reason}


def _unfreeze(args):
    with _sessions(args).begin() as s:
        ledger.unfreeze(s, args.outpoint)
        return {"outpoint": args.outpoint, "frozen": False}


def _labels_import(args):
    with _sessions(args).begin() as s:
        return {"imported": ledger.import_labels(s, _read(args.file))}


def _labels_export(args):
    with _sessions(args)() as s:
        text = ledger.export_labels(s)
    if args.file == "-":
        return text
    Path(args.file).write_text(text)
    return {"exported": text.count("\n"), "file": args.file}


def _label(args):
    with _sessions(args).begin() as s:
        ledger.set_label(s, args.type, args.ref, args.text)
        return {"type": args.type, "ref": args.ref, "label": args.text}


if __name__ == "__main__":
    sys.exit(main())
