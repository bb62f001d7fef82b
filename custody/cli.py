"""`custody`: keys, policies, addresses, sync and the ledger from the command line.

Every command prints a human table, or JSON with `--json`; on refusal it prints one line naming the
problem and exits 1 (argument errors exit 2), leaving the database as it was.
"""
from __future__ import annotations

import argparse
import importlib.metadata
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
def _version() -> str:
    try:
        return importlib.metadata.version("custody-toolkit")
    except importlib.metadata.PackageNotFoundError:   # a source tree that was never installed
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="custody", description="Institutional Bitcoin custody toolkit")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
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
    p.add_argument("--actor", default=os.environ.get("CUSTODY_ACTOR") or _login(),
                   help="who is acting, for the event log (default $CUSTODY_ACTOR or the login name)")
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
    for name, approve in (("approve", True), ("reject", False)):
        c = command(name, _spend_decide, f"{name} a spend request", sp)
        c.add_argument("id", type=int)
        c.add_argument("--officer", required=True)
        c.set_defaults(approve=approve)
    c = command("psbt", _spend_psbt, "make (once approved) and print the spend's PSBT", sp)
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

    ps = sub.add_parser("psbt", help="PSBT tools").add_subparsers(dest="psbt_command", required=True)
    c = command("check", _psbt_check, "is this a well-formed PSBT (v0 or v2)? JSON summary, or one line why not", ps)
    c.add_argument("file", help="PSBT file (base64, hex or binary), or - for standard input")

    log = sub.add_parser("log", help="the tamper-evident event log").add_subparsers(dest="log_command", required=True)
    c = command("verify", _log_verify, "check every entry's hash, chain link and signature", log)
    c.add_argument("--file", help="verify an exported JSONL copy instead of the database")
    c.add_argument("--key", action="append", help="accepted coordinator public key (hex); default: this coordinator's")
    c = command("export", _log_export, "export the log as JSON Lines", log)
    c.add_argument("file", nargs="?", default="-")

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


def _login() -> str:
    import getpass
    try:
        return getpass.getuser()
    except Exception:
        return "operator"


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
        return _policy_json(s, registry.create_policy(s, args.name, spec, gap_limit=args.gap_limit, actor=args.actor))


def _policy_import(args):
    from .formats import import_policy
    spec, name = import_policy(_read(args.file), args.format, network=args.network)
    with _sessions(args).begin() as s:
        return _policy_json(s, registry.create_policy(s, args.name or name, spec, gap_limit=args.gap_limit,
                                                      actor=args.actor))


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
        policy = registry.set_status(s, registry.get_policy(s, args.name), args.status, actor=args.actor)
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
        utxo = ledger.freeze(s, args.outpoint, args.reason, actor=args.actor)
        return {"outpoint": args.outpoint, "frozen": True, "reason": utxo.freeze_reason}


def _unfreeze(args):
    with _sessions(args).begin() as s:
        ledger.unfreeze(s, args.outpoint, actor=args.actor)
        return {"outpoint": args.outpoint, "frozen": False}


def _labels_import(args):
    with _sessions(args).begin() as s:
        return {"imported": ledger.import_labels(s, _read(args.file))}


def _labels_export(args):
    with _sessions(args)() as s:
        return _emit_lines(ledger.export_labels(s), args.file)


def _emit_lines(text: str, file: str):
    """JSON Lines to standard output ("-") or to a file, with a count."""
    if file == "-":
        return text
    Path(file).write_text(text)
    return {"exported": text.count("\n"), "file": file}


def _label(args):
    with _sessions(args).begin() as s:
        ledger.set_label(s, args.type, args.ref, args.text)
        return {"type": args.type, "ref": args.ref, "label": args.text}


# -- PSBT tools -------------------------------------------------------------------------------
def _psbt_check(args):
    from .psbt_check import check_psbt
    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    summary = check_psbt(data, network=args.network)
    print(json.dumps(summary, indent=2))
    return None


# -- event log --------------------------------------------------------------------------------
def _log_verify(args):
    from . import eventlog
    keys = set(args.key) if args.key else {eventlog.coordinator_key().public_hex}
    if args.file:
        result = eventlog.verify_jsonl(_read(args.file), keys)
    else:
        with _sessions(args)() as s:
            result = eventlog.verify(s, keys)
    if not result.ok:
        raise CustodyError(f"event log verification failed: {result.problem}")
    return {"ok": True, "entries": result.entries, "head_hash": result.head_hash}


def _log_export(args):
    from . import eventlog
    with _sessions(args)() as s:
        return _emit_lines(eventlog.export_jsonl(s), args.file)


# -- spends -----------------------------------------------------------------------------------
def _amount(text: str | None) -> int | None:
    from .spends import parse_amount
    return None if text is None else parse_amount(text)


def _rule_set(args):
    from .spends import set_approval_rule
    with _sessions(args).begin() as s:
        rule = set_approval_rule(s, registry.get_policy(s, args.policy), required_approvals=args.approvals,
                                 per_request_limit=_amount(args.per_request), daily_limit=_amount(args.daily),
                                 allow_list=args.allow, delay_threshold=_amount(args.delay_above),
                                 delay_seconds=args.delay, actor=args.actor)
        return {"policy": args.policy, "required_approvals": rule.required_approvals,
                "per_request_limit": rule.per_request_limit, "daily_limit": rule.daily_limit,
                "allow_list": json.loads(rule.allow_list) if rule.allow_list else None,
                "delay_threshold": rule.delay_threshold, "delay_seconds": rule.delay_seconds}


def _spend_request(args):
    from . import spends
    destinations = []
    for item in args.to:
        address, sep, amount = item.partition("=")
        if not sep:
            raise CustodyError(f"--to {item!r}: write ADDRESS=AMOUNT")
        destinations.append((address, spends.parse_amount(amount) if not args.sweep or amount else 0))
    with _sessions(args).begin() as s:
        spend = spends.request_spend(s, registry.get_policy(s, args.policy), args.requester, destinations,
                                     fee_rate=args.fee_rate, client=None if args.fee_rate else _client(args),
                                     memo=args.memo, coins=args.coin, sweep=args.sweep)
        return spends.summary(s, spend)


def _spend_decide(args):
    from . import spends
    with _sessions(args).begin() as s:
        return spends.summary(s, spends.decide(s, spends.get_spend(s, args.id), args.officer, args.approve))


def _spend_psbt(args):
    from . import spends
    with _sessions(args).begin() as s:
        spend = spends.get_spend(s, args.id)
        if spend.psbt is None:
            spends.create_psbt(s, spend, _client(args), version=2 if args.v2 else 0)
        text = spend.psbt
    if args.out:
        import base64
        Path(args.out).write_bytes(base64.b64decode(text))
        return {"id": args.id, "psbt_file": args.out}
    return {"id": args.id, "psbt": text} if args.json else text


def _spend_sign(args):
    from . import spends
    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    with _sessions(args).begin() as s:
        spend = spends.get_spend(s, args.id)
        signers = spends.add_signatures(s, spend, data)
        return {**spends.summary(s, spend), "new_signers": signers}


def _spend_broadcast(args):
    from . import spends
    with _sessions(args).begin() as s:
        spend = spends.get_spend(s, args.id)
        spends.broadcast(s, spend, _client(args))
        return spends.summary(s, spend)


def _spend_track(args):
    from . import spends
    with _sessions(args).begin() as s:
        return spends.summary(s, spends.track(s, spends.get_spend(s, args.id), _client(args), args.confirmations))


def _spend_show(args):
    from . import spends
    with _sessions(args)() as s:
        return spends.summary(s, spends.get_spend(s, args.id))


def _spend_cancel(args):
    from . import spends
    with _sessions(args).begin() as s:
        return spends.summary(s, spends.cancel(s, spends.get_spend(s, args.id)))


def _spend_list(args):
    from . import spends
    from .spend_models import Spend
    with _sessions(args)() as s:
        query = select(Spend).order_by(Spend.id)
        if args.policy:
            query = query.where(Spend.policy_id == registry.get_policy(s, args.policy).id)
        return [{k: v for k, v in spends.summary(s, sp).items() if k in ("id", "policy", "state", "amount", "txid")}
                for sp in s.scalars(query)]


if __name__ == "__main__":
    sys.exit(main())
