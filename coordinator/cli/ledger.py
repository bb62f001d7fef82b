"""`custody key|policy|addresses|derive|sync|balance|utxos|history|freeze|labels|label|psbt ...`: keys, policies
and the coins they hold, on the command line. Each handler calls the ledger's service, as the API does."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from coordinator.cli.plumbing import client, emit_lines, OnFirstUse, progress, read_text, sessions

service = OnFirstUse("custody.ledger.service")
spend_service = OnFirstUse("custody.spending.service")

# Copies of constants whose modules import SQLAlchemy (tests/test_cli_startup.py keeps them equal).
COIN_STATES = ("unconfirmed", "confirmed", "immature", "frozen", "reserved", "spent")   # coins.STATES
LABEL_TYPES = ("tx", "addr", "pubkey", "input", "output", "xpub")                        # coins.LABEL_TYPES


def add_commands(sub, command) -> None:
    """Register the commands; `command(name, handler, help, parent)` comes from coordinator.cli.main."""
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

    c = command("balance", _balance, "balances per policy")
    c.add_argument("name", nargs="?")
    c = command("balance-history", _balance_history, "confirmed balance after each block that changed it")
    c.add_argument("name")
    c = command("utxos", _utxos, "coins of a policy")
    c.add_argument("name")
    c.add_argument("--state", action="append", choices=list(COIN_STATES))
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
    c.add_argument("type", choices=list(LABEL_TYPES))
    c.add_argument("ref")
    c.add_argument("text")

    ps = sub.add_parser("psbt", help="PSBT tools").add_subparsers(dest="psbt_command", required=True)
    c = command("check", _psbt_check, "is this a well-formed PSBT (v0 or v2)? JSON summary, or one line why not", ps)
    c.add_argument("file", help="PSBT file (base64, hex or binary), or - for standard input")


def _key_import(args):
    with sessions(args).begin() as s:
        return service.key_import(s, args.key, network=args.network, fingerprint=args.fingerprint, path=args.path)


def _key_list(args):
    with sessions(args)() as s:
        return service.key_list(s)


def _policy_create(args):
    with sessions(args).begin() as s:
        return service.policy_create(s, args.name, kind=args.kind, threshold=args.threshold, keys=args.key,
                                     network=args.network, recovery_keys=args.recovery_key,
                                     recovery_threshold=args.recovery_threshold, recovery_after=args.recovery_after,
                                     gap_limit=args.gap_limit, actor=args.actor)


def _policy_import(args):
    with sessions(args).begin() as s:
        return service.policy_import(s, read_text(args.file), fmt=args.format, name=args.name, network=args.network,
                                     gap_limit=args.gap_limit, actor=args.actor)


def _policy_export(args):
    with sessions(args)() as s:
        return service.policy_export(s, args.name, args.format)


def _policy_list(args):
    with sessions(args)() as s:
        return service.policy_list(s)


def _policy_show(args):
    with sessions(args)() as s:
        shown = spend_service.policy_show(s, args.name)
        return shown if args.json else {k: v for k, v in shown.items() if k != "approval_rule"}


def _policy_status(args):
    with sessions(args).begin() as s:
        return service.policy_status(s, args.name, args.status, actor=args.actor)


def _addresses(args):
    with sessions(args)() as s:
        return service.addresses(s, args.name, branch=args.branch, unused=args.unused)


def _derive(args):
    from custody.bitcoin.derive import derive_descriptor_addresses
    return derive_descriptor_addresses(args.descriptor, args.start, args.end, network=args.network)


def _sync(args):
    return service.sync(sessions(args), client(args), progress=progress)


def _balance(args):
    with sessions(args)() as s:
        return service.balance(s, args.name)


def _balance_history(args):
    with sessions(args)() as s:
        return service.balance_history(s, args.name)


def _utxos(args):
    with sessions(args)() as s:
        return service.utxos(s, args.name, states=args.state, include_spent=args.all)


def _history(args):
    with sessions(args)() as s:
        return service.history(s, args.name)


def _freeze(args):
    with sessions(args).begin() as s:
        return service.freeze(s, args.outpoint, args.reason, actor=args.actor)


def _unfreeze(args):
    with sessions(args).begin() as s:
        return service.unfreeze(s, args.outpoint, actor=args.actor)


def _labels_import(args):
    with sessions(args).begin() as s:
        return service.labels_import(s, read_text(args.file), actor=args.actor)


def _labels_export(args):
    with sessions(args)() as s:
        return emit_lines(service.labels_export(s), args.file)


def _label(args):
    with sessions(args).begin() as s:
        return service.label_set(s, args.type, args.ref, args.text, actor=args.actor)


def _psbt_check(args):
    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    print(json.dumps(service.psbt_check(data, network=args.network), indent=2))
    return None
