"""`custody approval-rule|spend ...`: approval rules and spends from request to broadcast, on the command line."""
from __future__ import annotations

import sys
from pathlib import Path

from custody.errors import CustodyError

from coordinator.cli.plumbing import client, OnFirstUse, sessions

spend_service = OnFirstUse("custody.spending.service")


def add_commands(sub, command) -> None:
    """Register the commands; `command(name, handler, help, parent)` comes from coordinator.cli.main."""
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


def _rule_set(args):
    with sessions(args).begin() as s:
        return spend_service.approval_rule_set(s, args.policy, approvals=args.approvals, per_request=args.per_request,
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
    with sessions(args).begin() as s:
        return spend_service.spend_request(s, args.policy, requester=args.requester, to=_destinations(args.to),
                                     fee_rate=args.fee_rate, client=client(args),
                                     memo=args.memo, coins=args.coin, sweep=args.sweep)


def _spend_preview(args):
    with sessions(args)() as s:
        return spend_service.fee_preview(s, args.policy, to=_destinations(args.to), fee_rate=args.fee_rate,
                                   client=None if args.fee_rate else client(args), coins=args.coin, sweep=args.sweep)


def _spend_decide(args):
    proof = None
    with sessions(args).begin() as s:
        if args.approve:
            from custody.people.credentials import sign_with_key_file
            spend = spend_service.spends.get_spend(s, args.id)
            if spend.psbt is None and spend.state == "requested":
                spend_service.spends.prepare_psbt(s, spend, client(args), actor=args.actor)
            proof = sign_with_key_file(Path(args.key), spend_service.spend_approval_message(s, args.id))
        return spend_service.spend_decide(s, args.id, officer=args.officer, approve=args.approve, proof=proof)


def _spend_psbt(args):
    with sessions(args).begin() as s:
        text = spend_service.spend_psbt(s, args.id, client=client(args), v2=args.v2, actor=args.actor)
    if args.out:
        import base64
        Path(args.out).write_bytes(base64.b64decode(text))
        return {"id": args.id, "psbt_file": args.out}
    return {"id": args.id, "psbt": text} if args.json else text


def _spend_sign(args):
    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    with sessions(args).begin() as s:
        return spend_service.spend_sign(s, args.id, data, actor=args.actor)


def _spend_broadcast(args):
    return spend_service.spend_broadcast(sessions(args), args.id, client=client(args), actor=args.actor)


def _spend_track(args):
    with sessions(args).begin() as s:
        return spend_service.spend_track(s, args.id, client=client(args), confirmations=args.confirmations)


def _spend_bump(args):
    with sessions(args).begin() as s:
        return spend_service.spend_bump_fee(s, args.id, client=client(args), fee_rate=args.fee_rate, cancel=args.cancel,
                                      actor=args.actor)


def _spend_cpfp(args):
    with sessions(args).begin() as s:
        return spend_service.spend_cpfp(s, args.id, client=client(args), fee_rate=args.fee_rate, requester=args.requester)


def _spend_show(args):
    with sessions(args)() as s:
        return spend_service.spend_show(s, args.id)


def _spend_cancel(args):
    with sessions(args).begin() as s:
        return spend_service.spend_cancel(s, args.id, actor=args.actor)


def _spend_list(args):
    with sessions(args)() as s:
        return spend_service.spend_list(s, policy=args.policy)
