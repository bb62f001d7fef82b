"""`custody mining ...`: the mining treasury on the command line (pools, accounts, devices, statements,
telemetry, reconciliation, discrepancies, sweeps). Each handler runs in one transaction and calls
the mining service; a refusal prints one line, exits 1 and rolls back (see `main`)."""
from __future__ import annotations

from pathlib import Path

from custody.mining import service as ms


def add_commands(sub, command, tx, client) -> None:
    """Register `custody mining ...`; `command`, `tx(fn)` (run `fn(session, args)` in one transaction) and
    `client(args)` come from cli."""
    mining = sub.add_parser("mining", help="mining treasury: pools, fleet, statements, reconciliation, sweeps")
    mine = mining.add_subparsers(dest="mining_command", required=True)

    pool = mine.add_parser("pool", help="mining pools").add_subparsers(dest="pool_command", required=True)
    c = command("add", tx(lambda s, a: ms.pool_create(s, a.name, a.kind, actor=a.actor)), "add a pool", pool)
    c.add_argument("name")
    c.add_argument("--kind", required=True, choices=ms.POOL_KINDS, help="its statement format (generic: CSV only)")
    command("list", tx(lambda s, a: ms.pools(s)), "the pools", pool)

    acc = mine.add_parser("account", help="pool accounts and their terms").add_subparsers(
        dest="account_command", required=True)
    c = command("add", tx(_account_add), "add an account with its contract terms and payout whitelist", acc)
    c.add_argument("pool")
    c.add_argument("name")
    c.add_argument("--scheme", required=True, type=str.upper, choices=ms.SCHEMES)
    c.add_argument("--fee-bps", type=int, required=True, help="the pool fee in basis points (250 = 2.5 %%)")
    c.add_argument("--fee-method", default="foundry", choices=ms.FEE_METHODS,
                   help="how the pool computes its FPPS fee ratio (default foundry)")
    c.add_argument("--threshold", default="0", help="payout threshold, BTC or NNNsat (default 0)")
    c.add_argument("--schedule", default="daily", choices=ms.SCHEDULES)
    c.add_argument("--address", action="append", default=[], help="a whitelisted payout address; repeat")
    c.add_argument("--fleet", help="the fleet payout wallet (a wpkh policy) the pool pays into")
    command("list", tx(lambda s, a: [_account_row(r) for r in ms.accounts(s)] if not a.json else ms.accounts(s)),
            "the accounts", acc)
    c = command("show", tx(lambda s, a: _show_account(ms.account_show(s, a.account), a.json)),
                "an account, its devices, open findings and recent statement lines", acc)
    c.add_argument("account", help="POOL/ACCOUNT, or the account's name when unique")

    dev = mine.add_parser("device", help="the fleet's machines and their workers").add_subparsers(
        dest="device_command", required=True)
    c = command("add", tx(lambda s, a: ms.device_add(s, a.serial, model=a.model, account=a.account, worker=a.worker,
                                                     api_host=a.host, api_port=a.port, actor=a.actor)),
                "register a machine and the worker it mines as", dev)
    c.add_argument("serial")
    c.add_argument("--model", required=True)
    c.add_argument("--account", required=True)
    c.add_argument("--worker", required=True, help="the worker name at the pool (without the account prefix)")
    c.add_argument("--host", help="the IP address its CGMiner-compatible API answers at, to poll it")
    c.add_argument("--port", type=int, help="its API port (CGMiner: 4028)")
    c = command("address", tx(lambda s, a: ms.device_address(s, a.serial, api_host=None if a.clear else a.host,
                                                              api_port=None if a.clear else a.port, actor=a.actor)),
                "set where a registered machine's API is polled (an IP on the farm's networks), or --clear", dev)
    c.add_argument("serial")
    where = c.add_mutually_exclusive_group(required=True)
    where.add_argument("--host", help="its IP address on the farm's network")
    where.add_argument("--clear", action="store_true", help="stop polling it")
    c.add_argument("--port", type=int, help="its API port (CGMiner: 4028)")
    c = command("list", tx(lambda s, a: ms.devices(s, a.account)), "the fleet", dev)
    c.add_argument("--account")

    st = mine.add_parser("statement", help="pool statements").add_subparsers(dest="statement_command", required=True)
    c = command("import", tx(lambda s, a: _flat(ms.statement_import(s, a.account, a.source, Path(a.file).read_bytes(),
                                                                    actor=a.actor), a.json)),
                "append a pool's statement (its JSON, or the generic CSV) to an account", st)
    c.add_argument("account")
    c.add_argument("source", choices=ms.SOURCES)
    c.add_argument("file")

    tel = mine.add_parser("telemetry", help="the fleet's work counters").add_subparsers(
        dest="telemetry_command", required=True)
    c = command("poll", tx(lambda s, a: _flat(ms.telemetry_poll(s, a.account, device=a.device, timeout=a.timeout),
                                              a.json)),
                "read registered miners now, at their registered addresses", tel)
    c.add_argument("--account")
    c.add_argument("--device", metavar="SERIAL", help="one registered device")
    c.add_argument("--timeout", type=float, default=5.0, help="seconds per miner (default 5)")
    c = command("import", tx(lambda s, a: ms.telemetry_import(s, Path(a.file), a.format, actor=a.actor)),
                "import saved readings", tel)
    c.add_argument("file")
    c.add_argument("--format", required=True, choices=ms.TELEMETRY_FORMATS)

    c = command("reconcile", tx(lambda s, a: _show_report(ms.reconcile(s, client(a), a.account, a.first, a.last,
                                                                       actor=a.actor, sweep_fee_rate=a.sweep_fee_rate),
                                                          a.json)),
                "reconcile an account over days: earnings, payouts, balance, sweeps", mine)
    c.add_argument("account")
    c.add_argument("--from", dest="first", required=True, metavar="YYYY-MM-DD")
    c.add_argument("--to", dest="last", required=True, metavar="YYYY-MM-DD")
    c.add_argument("--sweep-fee-rate", type=float, help="sat/vB to judge stranded coins (default: the node's estimate)")

    dis = mine.add_parser("discrepancy", help="reconciliation findings").add_subparsers(
        dest="discrepancy_command", required=True)
    c = command("list", tx(lambda s, a: [_finding_row(d) for d in ms.discrepancies(
        s, category=a.category, severity=a.severity, account=a.account, state=a.state)]), "findings", dis)
    c.add_argument("--category", type=str.upper, choices=sorted(ms.SEVERITY))
    c.add_argument("--severity", choices=ms.SEVERITIES)
    c.add_argument("--account")
    c.add_argument("--state", choices=ms.STATES, default="open")
    c = command("show", tx(lambda s, a: _show_finding(ms.discrepancy_show(s, a.id), a.json)),
                "one finding and the statement lines and transaction it is about", dis)
    c.add_argument("id", type=int)
    c = command("resolve", tx(lambda s, a: _show_finding(ms.discrepancy_resolve(s, a.id, note=a.note, actor=a.actor),
                                                         a.json)), "resolve a finding, saying why", dis)
    c.add_argument("id", type=int)
    c.add_argument("--note", required=True)

    c = command("sweep", tx(lambda s, a: _show_sweep(ms.sweep_run(
        s, client(a), a.fleet, a.into, actor=a.actor, fee_rate=a.fee_rate, max_fee_rate=a.max_fee_rate,
        max_inputs=a.max_inputs), a.json)), "sweep the fleet wallet's matured coins into custody", mine)
    c.add_argument("fleet")
    c.add_argument("--into", required=True, help="the active custody policy")
    c.add_argument("--fee-rate", type=float, help="sat/vB (default: the node's estimate)")
    c.add_argument("--max-fee-rate", type=float, default=ms.DEFAULT_MAX_FEE_RATE,
                   help=f"above this the coins wait (default {ms.DEFAULT_MAX_FEE_RATE:g})")
    c.add_argument("--max-inputs", type=int, default=ms.DEFAULT_MAX_INPUTS)
    c = command("sweeps", tx(lambda s, a: ms.sweep_history(s, a.fleet)), "sweeps made, with their spend's state", mine)
    c.add_argument("--fleet")


def _account_add(s, a) -> dict:
    return ms.account_create(s, a.pool, a.name, scheme=a.scheme, pool_fee_bps=a.fee_bps, fee_method=a.fee_method,
                             payout_threshold=ms.parse_threshold(a.threshold), schedule=a.schedule,
                             payout_addresses=a.address, fleet_policy=a.fleet, network=a.network, actor=a.actor)


# -- human output ----------------------------------------------------------------------------------------------
def _table(rows: list[dict]) -> str:
    if not rows:
        return "(none)\n"
    columns = list(rows[0])
    cells = [["" if r.get(c) is None else str(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines) + "\n"


def _facts(shown: dict, skip: tuple[str, ...] = ()) -> str:
    return "".join(f"{k}: {'' if v is None else v}\n" for k, v in shown.items() if k not in skip)


def _flat(result: dict, as_json: bool):
    """Nested results (maps, lists) as indented text for people."""
    if as_json:
        return result
    out = []
    for k, v in result.items():
        if isinstance(v, dict):
            out.append(f"{k}:" + ("" if v else " (none)"))
            out += [f"  {name}: {value}" for name, value in v.items()]
        elif isinstance(v, list):
            out.append(f"{k}: {', '.join(map(str, v)) if v else '(none)'}")
        else:
            out.append(f"{k}: {v}")
    return "\n".join(out) + "\n"


def _account_row(r: dict) -> dict:
    return {k: r[k] for k in ("account", "scheme", "pool_fee_bps", "payout_threshold", "schedule", "fleet_policy",
                              "devices")} | {"whitelist": len(r["payout_addresses"])}


def _line_row(ln: dict) -> dict:
    return {k: ln[k] for k in ("day", "kind", "key", "revision", "amount", "fee", "txid", "address")}


def _finding_row(d: dict) -> dict:
    return {k: d[k] for k in ("id", "severity", "category", "account", "day", "amount", "state", "detail")}


def _show_account(shown: dict, as_json: bool):
    if as_json:
        return shown
    return (_facts(shown, ("device_list", "lines")) + "\ndevices:\n" + _table(shown["device_list"])
            + "\nstatement lines (last 31 days):\n" + _table([_line_row(ln) for ln in shown["lines"]]))


def _show_finding(shown: dict, as_json: bool):
    if as_json:
        return shown
    return _facts(shown, ("lines",)) + "\nstatement lines:\n" + _table([_line_row(ln) for ln in shown["lines"]])


def _show_report(report: dict, as_json: bool):
    if as_json:
        return report
    return (f"{report['account']}: {report['first_day']} to {report['last_day']}, {len(report['findings'])} findings, "
            f"{report['new']} new\n\n" + _table(report["days"]) + "\n"
            + _table([{k: f[k] for k in ("id", "severity", "category", "day", "amount", "detail")}
                      for f in report["findings"]]))


def _show_sweep(result: dict, as_json: bool):
    if as_json:
        return result
    reasons: dict[str, int] = {}
    for why in result["deferred"].values():
        reasons[why.split(":")[0]] = reasons.get(why.split(":")[0], 0) + 1
    made = _table(result["sweeps"]) if result["sweeps"] else "nothing to sweep now\n"
    return (f"at {result['fee_rate']:g} sat/vB into {result['custody']}:\n" + made
            + "".join(f"deferred: {n} coin(s): {why}\n" for why, n in sorted(reasons.items()))
            + ("next: the fleet key signs each sweep (custody spend psbt ID; custody spend sign ID FILE), then "
               "custody spend broadcast ID\n"
               if result["sweeps"] else ""))

