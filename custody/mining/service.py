"""The mining treasury as the CLI, the API and the console call it: plain arguments in, JSON-able out.

The caller owns the transaction (see custody.ledger.service): a refusal raises CustodyError with a message an operator
can act on, and the caller rolls back, so nothing is written.

Accounts are named "POOL/ACCOUNT", or by the account's name alone when no other pool has an account so
named (API paths use ids). A reconciliation report is not a table of its own: each run's day rows (paid
and expected per day) are kept in the event log as a "mining.report" entry next to reconcile's own
"mining.reconciled", and the overview, the chart and the metrics read them from there, so none of them
asks the node.
"""
from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from custody.chain.node_client import NodeClient
from custody.errors import CustodyError, NotFound
from custody.eventlog.log import record
from custody.eventlog.models import EventLogEntry
from custody.ledger import coins as ledger
from custody.ledger.models import Address, Policy
from custody.ledger.registry import get_policy
from custody.mining import reconcile as reconciliation, statements, sweeps, telemetry
from custody.mining.expected import FEE_METHODS
# what the interfaces offer as choices and defaults, from the modules that decide them
from custody.mining.reconcile import SEVERITY  # noqa: F401
from custody.mining.statements import SOURCES  # noqa: F401
from custody.mining.sweeps import DEFAULT_MAX_FEE_RATE, DEFAULT_MAX_INPUTS  # noqa: F401
from custody.mining.telemetry import FORMATS as TELEMETRY_FORMATS  # noqa: F401
from custody.mining.models import Discrepancy, MiningDevice, Pool, PoolAccount, StatementLine, Sweep, TelemetrySample
from custody.spending import spends
from custody.spending.models import Spend
from custody.store.base import utcnow

POOL_KINDS = ("braiins", "foundry", "f2pool", "luxor", "ocean", "generic")
SCHEMES = ("PPS", "FPPS", "PPLNS", "TIDES", "SOLO")
SCHEDULES = ("daily", "weekly", "per-block", "manual")
SEVERITIES = ("info", "warn", "alert", "critical")
STATES = ("open", "resolved", "all")
REPORT_EVENT = "mining.report"
RESOLVED_EVENT = "mining.discrepancy_resolved"
MAX_SATS = statements.MAX_SATS
_TXID = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")


def _text(value: str | None, what: str, longest: int) -> str:
    value = (value or "").strip()
    if not value:
        raise CustodyError(f"{what} is required")
    if len(value) > longest:
        raise CustodyError(f"{what} is at most {longest} characters")
    return value


def _choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise CustodyError(f"{what} {value!r} is not one of {', '.join(choices)}")
    return value


def _time(moment: datetime | None) -> str | None:
    """UTC, to the second (SQLite hands back naive datetimes: they are UTC)."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).isoformat(timespec="seconds")


def _today() -> date:
    return datetime.now(timezone.utc).date()


def _day(text: str, what: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except (TypeError, ValueError):
        raise CustodyError(f"{what} {text!r} is not a day (YYYY-MM-DD)") from None


# -- pools -----------------------------------------------------------------------------------------------------
def pool_json(s: Session, pool: Pool) -> dict:
    accounts = s.scalar(select(func.count()).select_from(PoolAccount).where(PoolAccount.pool_id == pool.id))
    return {"id": pool.id, "name": pool.name, "kind": pool.kind, "accounts": accounts}


def get_pool(s: Session, name: str) -> Pool:
    pool = s.scalar(select(Pool).where(Pool.name == name))
    if pool is None:
        raise NotFound(f"no mining pool named {name!r}")
    return pool


def pool_create(s: Session, name: str, kind: str, *, actor: str) -> dict:
    name = _text(name, "a pool's name", 80)
    if "/" in name:
        raise CustodyError(f"a pool's name has no '/' (accounts are named POOL/ACCOUNT): {name!r}")
    kind = _choice((kind or "").strip().lower(), POOL_KINDS, "pool kind")
    if s.scalar(select(Pool.id).where(Pool.name == name)) is not None:
        raise CustodyError(f"a pool named {name!r} exists already")
    pool = Pool(name=name, kind=kind)
    s.add(pool)
    s.flush()
    record(s, "mining.pool_created", actor, f"mining-pool:{pool.id}", {"name": name, "kind": kind})
    return pool_json(s, pool)


def pools(s: Session) -> list[dict]:
    return [pool_json(s, p) for p in s.scalars(select(Pool).order_by(Pool.name))]


# -- accounts --------------------------------------------------------------------------------------------------
def _label(s: Session, account: PoolAccount) -> str:
    return f"{s.get(Pool, account.pool_id).name}/{account.name}"


def get_account(s: Session, ref: str | int) -> PoolAccount:
    """An account by id, by "POOL/ACCOUNT", or by its name when that is unique."""
    if isinstance(ref, int):
        account = s.get(PoolAccount, ref)
        if account is None:
            raise NotFound(f"no mining account #{ref}")
        return account
    pool_name, slash, name = ref.strip().rpartition("/")
    query = select(PoolAccount, Pool.name).join(Pool, Pool.id == PoolAccount.pool_id).where(PoolAccount.name == name)
    if slash:
        query = query.where(Pool.name == pool_name)
    rows = s.execute(query).all()
    if not rows:
        raise NotFound(f"no mining account {ref!r}")
    if len(rows) > 1:
        raise CustodyError(f"pools {', '.join(sorted(p for _, p in rows))} each have an account {name!r}: "
                           f"write POOL/{name}")
    return rows[0][0]


def account_json(s: Session, account: PoolAccount) -> dict:
    fleet = s.get(Policy, account.fleet_policy_id) if account.fleet_policy_id else None
    devices = s.scalar(select(func.count()).select_from(MiningDevice).where(MiningDevice.account_id == account.id))
    return {"id": account.id, "account": _label(s, account), "pool": s.get(Pool, account.pool_id).name,
            "name": account.name, "scheme": account.scheme, "pool_fee_bps": account.pool_fee_bps,
            "fee_method": account.fee_method, "payout_threshold": account.payout_threshold,
            "schedule": account.schedule, "payout_addresses": json.loads(account.payout_addresses or "[]"),
            "fleet_policy": fleet.name if fleet else None, "devices": devices}


def account_create(s: Session, pool: str, name: str, *, scheme: str, pool_fee_bps: int, fee_method: str,
                   payout_threshold: int, schedule: str, payout_addresses: list[str], fleet_policy: str | None,
                   network: str, actor: str) -> dict:
    """An account with its contract terms. The whitelist holds the addresses the pool may pay; with a fleet
    wallet, each must be one of its addresses (a pool paying anywhere else is paying someone else)."""
    row_pool = get_pool(s, pool)
    name = _text(name, "an account's name", 80)
    if "/" in name:
        raise CustodyError(f"an account's name has no '/': {name!r}")
    scheme = _choice((scheme or "").strip().upper(), SCHEMES, "payout scheme")
    fee_method = _choice((fee_method or "").strip().lower(), FEE_METHODS, "fee method")
    schedule = _choice((schedule or "").strip().lower(), SCHEDULES, "payout schedule")
    if not isinstance(pool_fee_bps, int) or not 0 <= pool_fee_bps <= 10_000:
        raise CustodyError(f"the pool fee is 0 to 10,000 basis points, not {pool_fee_bps!r}")
    if not isinstance(payout_threshold, int) or not 0 <= payout_threshold <= MAX_SATS:
        raise CustodyError(f"the payout threshold is whole satoshis from 0 to 21 million BTC, not {payout_threshold!r}")
    if s.scalar(select(PoolAccount.id).where(PoolAccount.pool_id == row_pool.id, PoolAccount.name == name)):
        raise CustodyError(f"pool {row_pool.name} has an account {name!r} already")
    fleet = get_policy(s, fleet_policy) if fleet_policy else None
    if fleet is not None and fleet.kind != "wpkh":
        raise CustodyError(f"policy {fleet.name!r} is a {fleet.kind} custody policy: a fleet payout wallet is a "
                           "single-key wpkh policy")
    whitelist = list(dict.fromkeys(a.strip() for a in payout_addresses if a.strip()))
    if len(whitelist) > 100:
        raise CustodyError("a whitelist holds at most 100 payout addresses")
    for address in whitelist:
        spends._script(address, fleet.network if fleet else network)
        if fleet is not None and s.scalar(select(Address.id).where(Address.address == address,
                                                                   Address.policy_id == fleet.id)) is None:
            raise CustodyError(f"payout address {address} is not an address of the fleet wallet {fleet.name!r} "
                               "(check it, or derive further with a larger gap limit)")
    account = PoolAccount(pool_id=row_pool.id, name=name, scheme=scheme, pool_fee_bps=pool_fee_bps,
                          fee_method=fee_method, payout_threshold=payout_threshold, schedule=schedule,
                          payout_addresses=json.dumps(whitelist), fleet_policy_id=fleet.id if fleet else None)
    s.add(account)
    s.flush()
    shown = account_json(s, account)
    record(s, "mining.account_created", actor, f"mining-account:{account.id}",
           {k: v for k, v in shown.items() if k not in ("id", "devices")})
    return shown


def accounts(s: Session) -> list[dict]:
    rows = s.scalars(select(PoolAccount).join(Pool, Pool.id == PoolAccount.pool_id).order_by(Pool.name, PoolAccount.name))
    return [account_json(s, a) for a in rows]


def line_json(line: StatementLine) -> dict:
    return {"id": line.id, "kind": line.kind, "key": line.key, "revision": line.revision, "day": line.day,
            "amount": line.amount, "fee": line.fee, "txid": line.txid, "address": line.address,
            "details": json.loads(line.details), "superseded": line.superseded, "raw_sha256": line.raw_sha256}


def account_show(s: Session, ref: str | int, *, days: int = 31) -> dict:
    """The account, its devices, its open findings by severity and its current statement lines of the last
    `days` days."""
    account = get_account(s, ref)
    since = (_today() - timedelta(days=days - 1)).isoformat()
    return {**account_json(s, account), "device_list": devices(s, account.id),
            "open_findings": _open_by_severity(s).get(account.id, {}),
            "lines": [line_json(ln) for ln in statements.latest_lines(s, account, day_from=since)]}


# -- devices ---------------------------------------------------------------------------------------------------
def device_add(s: Session, serial: str, *, model: str, account: str | int, worker: str, api_host: str | None = None,
               api_port: int | None = None, actor: str) -> dict:
    serial = _text(serial, "a device's serial", 80)
    model = _text(model, "a device's model", 80)
    worker = _text(worker, "the worker name", 120)
    row_account = get_account(s, account)
    address = _address(api_host, api_port)
    if s.scalar(select(MiningDevice.id).where(MiningDevice.serial == serial)) is not None:
        raise CustodyError(f"device {serial} is registered already")
    taken = s.scalar(select(MiningDevice.serial).where(MiningDevice.account_id == row_account.id,
                                                       MiningDevice.worker == worker))
    if taken is not None:
        raise CustodyError(f"worker {worker!r} of {_label(s, row_account)} is device {taken} already")
    device = MiningDevice(serial=serial, model=model, account_id=row_account.id, worker=worker)
    s.add(device)
    s.flush()
    record(s, "mining.device_added", actor, f"mining-device:{serial}",
           {"model": model, "account": _label(s, row_account), "worker": worker})
    if address is not None:
        _set_address(s, device, address, actor=actor)
    return devices(s, row_account.id, serial=serial)[0]


def get_device(s: Session, serial: str) -> MiningDevice:
    device = s.scalar(select(MiningDevice).where(MiningDevice.serial == (serial or "").strip()))
    if device is None:
        raise NotFound(f"no fleet device with serial {serial!r} is registered")
    return device


def _address(api_host: str | None, api_port: int | None) -> tuple[str, int] | None:
    """A polled miner's API address, checked (`telemetry.check_address`), or None for a device not polled."""
    if (api_host is None) != (api_port is None):
        raise CustodyError("give both the API host and port of a polled miner, or neither")
    return None if api_host is None else telemetry.check_address(api_host, api_port)


def _set_address(s: Session, device: MiningDevice, address: tuple[str, int] | None, *, actor: str) -> None:
    before = f"{device.api_host}:{device.api_port}" if device.api_host else None
    device.api_host, device.api_port = address if address else (None, None)
    s.flush()
    record(s, "mining.device_address_set", actor, f"mining-device:{device.serial}",
           {"api": f"{address[0]}:{address[1]}" if address else None, "before": before})


def device_address(s: Session, serial: str, *, api_host: str | None, api_port: int | None, actor: str) -> dict:
    """Register (or, with neither host nor port, remove) the address a device's CGMiner API is polled at: an
    IP address on the farm's networks and an unprivileged port (`telemetry.check_address`). Its own event
    in the log ("mining.device_address_set", with the address before), since it decides where the
    coordinator connects."""
    device = get_device(s, serial)
    _set_address(s, device, _address(api_host, api_port), actor=actor)
    return devices(s, device.account_id, serial=device.serial)[0]


def devices(s: Session, account: str | int | None = None, *, serial: str | None = None) -> list[dict]:
    """The fleet's devices with the worker each mines as and its last telemetry reading."""
    query = select(MiningDevice).order_by(MiningDevice.serial)
    if account is not None:
        query = query.where(MiningDevice.account_id == get_account(s, account).id)
    if serial is not None:
        query = query.where(MiningDevice.serial == serial)
    rows = list(s.scalars(query))
    t = TelemetrySample
    polled = dict(s.execute(select(t.device_id, func.max(t.time)).where(t.device_id.in_([d.id for d in rows]))
                            .group_by(t.device_id)).all())
    # a file's samples may name the worker only ("rig1", or "<account>.rig1" as the pool sees it)
    names = {d.id: {d.worker, f"{s.get(PoolAccount, d.account_id).name}.{d.worker}"} for d in rows}
    filed = dict(s.execute(select(t.worker, func.max(t.time)).where(
        t.device_id.is_(None), t.worker.in_(sorted(set().union(*names.values())))).group_by(t.worker)).all())
    out = []
    for d in rows:
        seen = [m for m in (polled.get(d.id), *(filed.get(n) for n in names[d.id])) if m is not None]
        out.append({"serial": d.serial, "model": d.model, "account": _label(s, s.get(PoolAccount, d.account_id)),
                    "worker": d.worker, "api": f"{d.api_host}:{d.api_port}" if d.api_host else None,
                    "last_seen": _time(max(seen)) if seen else None})
    return out


# -- statements and telemetry ----------------------------------------------------------------------------------
def statement_import(s: Session, account: str | int, source: str, payload: bytes | str, *, actor: str) -> dict:
    row = get_account(s, account)
    if not payload or not payload.strip():
        raise CustodyError("the statement is empty")
    report = statements.import_statement(s, row, (source or "").strip().lower(), payload, actor=actor)
    return {"account": _label(s, row), "source": report.source, "sha256": report.sha256, "added": report.added,
            "unchanged": report.unchanged, "restated": report.restated,
            "restatements": [vars(r) for r in report.restatements]}


def telemetry_poll(s: Session, account: str | int | None = None, *, device: str | None = None,
                   timeout: float = 5.0) -> dict:
    """Read every polled miner (one registered device by serial, the account's, or the fleet's) now, at the
    addresses registered for them, and store what each answered; a miner that does not answer is reported
    (telemetry.NO_ANSWER, whatever happened), not an error."""
    if device is not None and account is not None:
        raise CustodyError("poll one device or one account, not both")
    if not 0 < timeout <= 60:
        raise CustodyError("the poll timeout is more than 0 and at most 60 seconds")
    query = select(MiningDevice).order_by(MiningDevice.serial)
    if device is not None:
        query = query.where(MiningDevice.id == get_device(s, device).id)
    elif account is not None:
        query = query.where(MiningDevice.account_id == get_account(s, account).id)
    rows = list(s.scalars(query))
    if not rows:
        raise CustodyError("no fleet devices are registered" + (f" for account {account}" if account else ""))
    report = telemetry.poll(s, rows, timeout=timeout)
    return {"polled": len(rows) - len(report.skipped), "answered": len(report.ok),
            "ok": {serial: {"worker": x.worker, "time": _time(x.time), "difficulty_accepted": str(x.difficulty_accepted),
                            "mhs_av": None if x.mhs_av is None else str(x.mhs_av)} for serial, x in report.ok.items()},
            "failed": report.failed, "skipped": report.skipped,
            "worker_mismatch": {k: {"registered": a, "mining_as": b} for k, (a, b) in report.worker_mismatch.items()}}


def telemetry_import(s: Session, data: str | Path, fmt: str, *, actor: str) -> dict:
    """A telemetry file (a Path), or its text (a str is never taken as a file name)."""
    report = telemetry.import_samples(s, data, (fmt or "").strip().lower(), actor=actor)
    return {"stored": report.stored, "duplicates": report.duplicates, "unknown_workers": report.unknown_workers,
            "sha256": report.sha256}


# -- reconciliation --------------------------------------------------------------------------------------------
def reconcile(s: Session, client: NodeClient, account: str | int, first_day: str, last_day: str, *, actor: str,
              sweep_fee_rate: float | None = None) -> dict:
    """Run every reconciliation rule over the days (both included); new findings are stored, and the day rows
    are kept (event "mining.report") for the overview, the chart and the metrics."""
    row = get_account(s, account)
    first, last = _day(first_day, "the first day"), _day(last_day, "the last day")
    if last < first:
        raise CustodyError(f"the last day {last} is before the first day {first}")
    if (date.fromisoformat(last) - date.fromisoformat(first)).days > 366:
        raise CustodyError("reconcile at most 367 days at a time")
    if last > _today().isoformat():
        raise CustodyError(f"{last} has not begun yet (UTC): reconcile up to today")
    if sweep_fee_rate is not None and not sweep_fee_rate > 0:
        raise CustodyError("the sweep fee rate is a positive number of sat/vB")
    report = reconciliation.reconcile(s, client, row, first, last, sweep_fee_rate=sweep_fee_rate, actor=actor)
    days = [r.to_json() for r in report.days]
    record(s, REPORT_EVENT, actor, f"mining-account:{row.id}", {"first_day": first, "last_day": last, "days": days})
    ids = {(d.category, d.ref): d.id for d in s.scalars(select(Discrepancy).where(
        Discrepancy.ref.in_([f.ref for f in report.findings])))} if report.findings else {}
    return {"account": _label(s, row), "first_day": first, "last_day": last, "days": days, "new": report.new,
            "findings": [{"id": ids.get((f.category, f.ref)), "category": f.category, "severity": f.severity,
                          "ref": f.ref, "day": f.day, "amount": f.amount, "detail": f.detail} for f in report.findings]}


def _reported(s: Session) -> dict[tuple[int, str], dict]:
    """(account id, day) -> the latest reconciliation's row for that day."""
    out: dict[tuple[int, str], dict] = {}
    for subject, data in s.execute(select(EventLogEntry.subject, EventLogEntry.data)
                                   .where(EventLogEntry.kind == REPORT_EVENT).order_by(EventLogEntry.seq)):
        account_id = int(subject.rsplit(":", 1)[1])
        for row in json.loads(data)["days"]:
            base = row["expected_pool"] if row["expected_pool"] is not None else row["expected_fleet"]
            out[account_id, row["day"]] = {**row, "expected": base}
    return out


def _earnings(s: Session, since: str) -> dict[tuple[int, str], int]:
    """(account id, day) -> what the pool credited that day (current revisions of earning lines)."""
    return {(a, d): int(total) for a, d, total in s.execute(
        select(StatementLine.account_id, StatementLine.day, func.sum(StatementLine.amount))
        .where(StatementLine.kind == "earning", StatementLine.superseded.is_(False), StatementLine.day >= since)
        .group_by(StatementLine.account_id, StatementLine.day))}


# -- discrepancies ---------------------------------------------------------------------------------------------
def get_discrepancy(s: Session, discrepancy_id: int) -> Discrepancy:
    row = s.get(Discrepancy, discrepancy_id)
    if row is None:
        raise NotFound(f"no discrepancy #{discrepancy_id}")
    return row


def discrepancy_json(s: Session, d: Discrepancy) -> dict:
    account = s.get(PoolAccount, d.account_id) if d.account_id else None
    return {"id": d.id, "category": d.category, "severity": d.severity,
            "account": _label(s, account) if account else None, "day": d.day, "ref": d.ref, "detail": d.detail,
            "amount": d.amount, "created_at": _time(d.created_at), "state": "resolved" if d.resolved_at else "open",
            "resolved_at": _time(d.resolved_at), "resolved_by": d.resolved_by}


def discrepancies(s: Session, *, category: str | None = None, severity: str | None = None,
                  account: str | int | None = None, state: str = "open", limit: int = 500) -> list[dict]:
    """Findings, the most severe first, then the newest."""
    query = select(Discrepancy).order_by(Discrepancy.id.desc()).limit(limit)
    if category:
        query = query.where(Discrepancy.category == _choice(category.strip().upper(), tuple(reconciliation.SEVERITY),
                                                            "category"))
    if severity:
        query = query.where(Discrepancy.severity == _choice(severity.strip().lower(), SEVERITIES, "severity"))
    if account not in (None, ""):
        query = query.where(Discrepancy.account_id == get_account(s, account).id)
    state = _choice(state or "open", STATES, "state")
    if state != "all":
        query = query.where(Discrepancy.resolved_at.is_(None) if state == "open" else Discrepancy.resolved_at.is_not(None))
    rows = sorted(s.scalars(query), key=lambda d: (-SEVERITIES.index(d.severity), -d.id))
    return [discrepancy_json(s, d) for d in rows]


def _about(s: Session, d: Discrepancy) -> tuple[list[StatementLine], str | None, int | None]:
    """The statement lines, the transaction and the spend a finding is about, read from its reference."""
    account = s.get(PoolAccount, d.account_id) if d.account_id else None
    lines: list[StatementLine] = []
    parts = d.ref.split(":")
    if account is not None and len(parts) >= 3 and parts[0] == str(account.id) and parts[1] in statements.KINDS:
        key = ":".join(parts[2:])
        if d.category == "STATEMENT_RESTATED":
            key = key.rsplit(":r", 1)[0]
        elif d.category == "COINBASE_IMMATURE":
            key = key.rsplit(":", 1)[0]
        lines = statements.revisions(s, account, parts[1], key)
    elif account is not None and d.day:
        lines = statements.latest_lines(s, account, day_from=d.day, day_to=d.day)
    found = _TXID.search(d.ref)
    txid = next((ln.txid for ln in lines if ln.txid), None) or (found.group(0) if found else None)
    spend_id = int(parts[1]) if parts[0] == "spend" and parts[1].isdigit() else None
    if spend_id is None and txid:
        spend_id = s.scalar(select(Spend.id).where(Spend.txid == txid))
    return lines, txid, spend_id


def discrepancy_show(s: Session, discrepancy_id: int) -> dict:
    d = get_discrepancy(s, discrepancy_id)
    lines, txid, spend_id = _about(s, d)
    note = s.scalar(select(EventLogEntry.data).where(EventLogEntry.kind == RESOLVED_EVENT,
                                                     EventLogEntry.subject == f"mining-discrepancy:{d.id}")
                    .order_by(EventLogEntry.seq.desc()).limit(1))
    return {**discrepancy_json(s, d), "note": json.loads(note)["note"] if note else None,
            "lines": [line_json(ln) for ln in lines], "txid": txid, "spend_id": spend_id}


def discrepancy_resolve(s: Session, discrepancy_id: int, *, note: str, actor: str) -> dict:
    """Resolving keeps the finding: it records who resolved it, when, and why (the note, in the event log)."""
    d = s.scalar(select(Discrepancy).where(Discrepancy.id == discrepancy_id).with_for_update()
                 .execution_options(populate_existing=True))
    if d is None:
        raise NotFound(f"no discrepancy #{discrepancy_id}")
    note = _text(note, "a note saying why the discrepancy is resolved", 1000)
    if d.resolved_at is not None:
        raise CustodyError(f"discrepancy #{d.id} was resolved by {d.resolved_by} at {_time(d.resolved_at)}")
    d.resolved_at, d.resolved_by = utcnow(), actor
    s.flush()
    record(s, RESOLVED_EVENT, actor, f"mining-discrepancy:{d.id}",
           {"category": d.category, "ref": d.ref, "severity": d.severity, "note": note})
    return discrepancy_show(s, d.id)


def _open_by_severity(s: Session) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {}
    for account_id, severity, n in s.execute(
            select(Discrepancy.account_id, Discrepancy.severity, func.count()).where(Discrepancy.resolved_at.is_(None))
            .group_by(Discrepancy.account_id, Discrepancy.severity)):
        out.setdefault(account_id, {})[severity] = n
    return out


# -- sweeps ----------------------------------------------------------------------------------------------------
def sweep_json(s: Session, row: Sweep) -> dict:
    spend = s.get(Spend, row.spend_id) if row.spend_id else None
    address = s.scalar(select(Address).where(Address.address == row.destination))
    custody = s.get(Policy, address.policy_id) if address else None
    return {"id": row.id, "fleet": s.get(Policy, row.fleet_policy_id).name, "custody": custody.name if custody else None,
            "destination": row.destination, "inputs": row.inputs, "amount": row.amount, "fee": row.fee,
            "vsize": row.vsize, "deferred": len(json.loads(row.deferred)), "spend_id": row.spend_id,
            "state": spend.state if spend else None, "txid": spend.txid if spend else None,
            "created_at": _time(row.created_at)}


def sweep_run(s: Session, client: NodeClient | None, fleet: str, custody: str, *, actor: str,
              fee_rate: float | None = None, max_fee_rate: float = sweeps.DEFAULT_MAX_FEE_RATE,
              max_inputs: int = sweeps.DEFAULT_MAX_INPUTS) -> dict:
    """Sweep the fleet wallet's matured coins into the custody policy: one spend per batch, approved as a
    custody sweep with its PSBT made; the fleet's signer signs it and it is broadcast like any spend."""
    for value, what in ((fee_rate, "the fee rate"), (max_fee_rate, "the fee cap")):
        if value is not None and not value > 0:
            raise CustodyError(f"{what} is a positive number of sat/vB")
    target = get_policy(s, custody)          # checked now: `sweeps.sweep` checks it only when a batch is ready
    if target.kind not in sweeps.CUSTODY_KINDS or target.status != "active":
        raise CustodyError(f"policy {target.name!r} ({target.kind}, {target.status}) is not an active custody policy: "
                           "sweeps pay only into one")
    rate = spends.estimate_fee_rate(client) if fee_rate is None else fee_rate
    made = sweeps.sweep(s, client, fleet, custody, actor=actor, fee_rate=rate, max_fee_rate=max_fee_rate,
                        max_inputs=max_inputs)
    deferred = json.loads(made[0].deferred) if made else sweeps.plan(
        s, get_policy(s, fleet), fee_rate=rate, max_fee_rate=max_fee_rate, max_inputs=max_inputs).deferred
    return {"fleet": fleet, "custody": custody, "fee_rate": rate, "sweeps": [sweep_json(s, m) for m in made],
            "deferred": deferred}


def sweep_history(s: Session, fleet: str | None = None, *, limit: int = 200) -> list[dict]:
    query = select(Sweep).order_by(Sweep.id.desc()).limit(limit)
    if fleet:
        query = query.where(Sweep.fleet_policy_id == get_policy(s, fleet).id)
    return [sweep_json(s, row) for row in s.scalars(query)]


# -- the overview, the chart, the metrics ----------------------------------------------------------------------
def overview(s: Session, *, today: date | None = None) -> list[dict]:
    """Per account: today's and the last 30 days' earnings against what reconciliation expected (on the
    days it expected something), open findings by severity, and the fleet wallet's balance."""
    today = today or _today()
    since = (today - timedelta(days=29)).isoformat()
    paid, reported, findings = _earnings(s, since), _reported(s), _open_by_severity(s)
    out = []
    for account in s.scalars(select(PoolAccount).join(Pool, Pool.id == PoolAccount.pool_id)
                             .order_by(Pool.name, PoolAccount.name)):
        days = [(today - timedelta(days=n)).isoformat() for n in range(30)]
        expected = {d: reported[account.id, d]["expected"] for d in days
                    if reported.get((account.id, d), {}).get("expected") is not None}
        paid_expected_days = sum(paid.get((account.id, d), 0) for d in expected)
        fleet = s.get(Policy, account.fleet_policy_id) if account.fleet_policy_id else None
        balance = ledger.balances(s, fleet)[0].to_json() if fleet else None
        out.append({"id": account.id, "account": _label(s, account), "scheme": account.scheme,
                    "paid_today": paid.get((account.id, days[0]), 0), "expected_today": expected.get(days[0]),
                    "paid_30d": sum(paid.get((account.id, d), 0) for d in days),
                    "expected_30d": sum(expected.values()) if expected else None, "days_expected": len(expected),
                    "ratio_30d": (f"{paid_expected_days / sum(expected.values()):.4f}"
                                  if expected and sum(expected.values()) else None),
                    "open_findings": {sev: findings.get(account.id, {}).get(sev, 0) for sev in SEVERITIES},
                    "fleet_policy": fleet.name if fleet else None, "fleet_balance": balance})
    return out


def chart_data(s: Session, *, days: int = 30, today: date | None = None) -> list[dict]:
    """Per pool, per day of the window with any figure: what its accounts were paid and expected."""
    today = today or _today()
    window = [(today - timedelta(days=n)).isoformat() for n in range(days - 1, -1, -1)]
    paid, reported = _earnings(s, window[0]), _reported(s)
    out = []
    for pool in s.scalars(select(Pool).order_by(Pool.name)):
        ids = list(s.scalars(select(PoolAccount.id).where(PoolAccount.pool_id == pool.id)))
        points = []
        for day in window:
            got = [paid[i, day] for i in ids if (i, day) in paid]
            exp = [reported[i, day]["expected"] for i in ids if reported.get((i, day), {}).get("expected") is not None]
            if got or exp:
                points.append({"day": day, "paid": sum(got), "expected": sum(exp) if exp else None})
        out.append({"pool": pool.name, "points": points})
    return out


def metrics(s: Session) -> dict:
    """What /metrics exposes, from the database only: open findings by category and severity, each
    account's latest reconciled day (paid from its current lines, expected from the run), and what each
    fleet wallet holds unswept (every state: immature and reserved coins are not in custody yet)."""
    open_ = s.execute(select(Discrepancy.category, Discrepancy.severity, func.count())
                      .where(Discrepancy.resolved_at.is_(None)).group_by(Discrepancy.category, Discrepancy.severity)).all()
    latest: dict[int, dict] = {}
    for (account_id, day), row in _reported(s).items():
        if account_id not in latest or day > latest[account_id]["day"]:
            latest[account_id] = row
    days = []
    for account_id, row in sorted(latest.items()):
        account = s.get(PoolAccount, account_id)
        paid = s.scalar(select(func.coalesce(func.sum(StatementLine.amount), 0)).where(
            StatementLine.account_id == account_id, StatementLine.kind == "earning",
            StatementLine.superseded.is_(False), StatementLine.day == row["day"]))
        days.append({"account": _label(s, account), "day": row["day"], "paid": int(paid), "expected": row["expected"]})
    fleets = list(s.scalars(select(Policy).where(Policy.kind == "wpkh").order_by(Policy.name)))
    unswept = [{"policy": b.policy, "sats": b.total} for f in fleets for b in ledger.balances(s, f)]
    return {"open": [{"category": c, "severity": v, "count": n} for c, v, n in open_], "days": days,
            "unswept": unswept}


def parse_threshold(text: str) -> int:
    """A payout threshold as an operator writes it: an amount ("0.01", "50000sat"), or 0."""
    return 0 if text.strip().lower().removesuffix("sat").removesuffix("btc").strip() in ("0", "0.0") \
        else spends.parse_amount(text)
