"""Reconciling a mining fleet's pool accounts: what the fleet earned, what the pools say, what the chain
shows, and what was swept into custody.

Inputs, none of them trusted alone: the pools' statement lines (`statements`, append-only with revisions),
the fleet's own work (`telemetry`, difficulty-accepted counters), the expected value of that work from
this toolkit's node (`expected`), the fleet wallet's coins in the ledger, the node's view of every
payout transaction, and the account's contract (scheme, fees, threshold, whitelisted addresses).

Rules (the reference note's, with its default tolerances):
1. earnings against expectation, per account and day: pay ratio (paid / expected from the pool's reported
   hashrate, else from the fleet's work), capture ratio (pool-reported / fleet-measured); PPLNS, TIDES and
   solo over a rolling 30 days, luck reported apart from shortfall; the pool's fee ratio against the one
   computed from the node's blocks by the pool's method;
2. payouts against the chain: by txid to the exact satoshi and a whitelisted address; without a txid, by
   (address, exact amount, the day before or after), one to one;
3. the balance rolled forward: previous balance + earnings - payouts - fees = the pool's balance;
4. coinbase payouts immature until mature, orphaned when their block leaves the best chain;
5. every matured fleet coin swept into custody or deferred with a stated reason, and no fleet coin ever
   spent anywhere but custody.
Each finding is a `Discrepancy` (category and reference unique, so running again adds only what is new).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from custody.chain.node_client import btc_to_sats, NodeClient, RPCError
from custody.eventlog.log import record
from custody.ledger.coins import tip_height, utxo_state
from custody.ledger.models import Address, Block, Policy, Utxo
from custody.mining import expected, statements, sweeps, telemetry
from custody.mining.models import Discrepancy, MiningDevice, PoolAccount, StatementLine, TelemetrySample
from custody.spending.models import Spend

RPC_INVALID_ADDRESS_OR_KEY = -5     # Core's code for a transaction it does not have

SEVERITY = {
    "UNDERPAID_VS_EXPECTED": "alert", "FEE_RATE_MISMATCH": "warn", "STATEMENT_RESTATED": "warn",
    "LUCK_OUTLIER": "info", "HASHRATE_LEAK": "alert", "UNKNOWN_WORKER": "warn", "TELEMETRY_GAP": "warn",
    "MISSING_PAYOUT": "alert", "PAYOUT_NOT_ON_CHAIN": "alert", "AMOUNT_MISMATCH": "alert",
    "DUPLICATE_PAYOUT": "alert", "BALANCE_DRIFT": "alert", "NON_WHITELISTED_DESTINATION": "critical",
    "UNATTRIBUTED_RECEIPT": "warn", "COINBASE_IMMATURE": "info", "COINBASE_ORPHANED": "alert",
    "DUST_STRANDED": "info", "SWEEP_OVERDUE": "warn", "SWEEP_FEE_OVER_BUDGET": "warn",
    "SWEEP_DEST_NOT_CUSTODY": "critical",
}
ROLLING_SCHEMES = ("pplns", "tides", "solo")


@dataclass(frozen=True)
class Tolerances:
    pay_warn: Fraction = Fraction(1, 100)            # FPPS pay ratio off by 1 %: warn; 2.5 %: alert
    pay_alert: Fraction = Fraction(25, 1000)
    capture_warn: Fraction = Fraction(97, 100)
    capture_alert: Fraction = Fraction(95, 100)
    fee_ratio_points: Fraction = Fraction(1, 2)      # percentage points between the pool's and ours
    luck_band: Fraction = Fraction(20, 100)          # 30-day luck outside +-20 %
    sweep_overdue_blocks: int = 144                  # a matured coin unswept for a day
    sweep_fee_budget: Fraction = Fraction(2, 100)    # a sweep's fee over 2 % of what it moved
    receipt_window_days: int = 1
    telemetry_max_gap: timedelta = telemetry.DEFAULT_MAX_GAP


@dataclass
class Finding:
    category: str
    ref: str
    detail: str
    day: str | None = None
    amount: int | None = None
    severity: str = ""

    def __post_init__(self):
        self.severity = self.severity or SEVERITY[self.category]


@dataclass
class DayRow:
    """The report line for one account and day."""
    day: str
    paid: int
    expected_pool: int | None
    expected_fleet: int | None
    pay_ratio: Fraction | None
    capture_ratio: Fraction | None

    def to_json(self) -> dict:
        def ratio(r):
            return None if r is None else str(round(Decimal(r.numerator) / Decimal(r.denominator), 6))
        return {"day": self.day, "paid": self.paid, "expected_pool": self.expected_pool,
                "expected_fleet": self.expected_fleet, "pay_ratio": ratio(self.pay_ratio),
                "capture_ratio": ratio(self.capture_ratio)}


@dataclass
class Report:
    account: str
    days: list[DayRow] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    new: int = 0


# -- the run ----------------------------------------------------------------------------------------------------
def reconcile(session: Session, client: NodeClient, account: PoolAccount, first_day: str, last_day: str, *,
              tolerances: Tolerances = Tolerances(), sweep_fee_rate: float | None = None,
              actor: str = "reconciler") -> Report:
    """Run every rule for the account over [first_day, last_day]; store new findings; return the report.
    `sweep_fee_rate` (sat/vB) judges stranded coins; by default the node's estimate."""
    days = _days(first_day, last_day)
    report = Report(account.name)
    lines = statements.latest_lines(session, account)
    earnings = [ln for ln in lines if ln.kind == "earning"]
    payouts = [ln for ln in lines if ln.kind == "payout"]
    devices_ix = telemetry.fleet_index(session)
    networks: dict = {}
    for day in days:
        row, found = _earnings_day(session, client, account, day, [ln for ln in earnings if ln.day == day],
                                   tolerances, devices_ix, networks)
        report.days.append(row)
        report.findings += found
    report.findings += _luck(account, report.days, tolerances)
    report.findings += _restatements(session, account, days)
    report.findings += _payouts_on_chain(session, client, account, [p for p in payouts if p.day in days], tolerances)
    report.findings += _missing_payouts(account, earnings, payouts, days)
    report.findings += _balance_drift(account, lines, days)
    report.findings += _unattributed(session, client, account, payouts, days)
    if account.fleet_policy_id is not None:
        rate = sweeps.spends.estimate_fee_rate(client) if sweep_fee_rate is None else sweep_fee_rate
        report.findings += _sweep_findings(session, client, account, tolerances, rate)
    report.new = _store(session, account, report.findings)
    record(session, "mining.reconciled", actor, f"mining-account:{account.id}",
           {"first_day": first_day, "last_day": last_day, "findings": len(report.findings), "new": report.new})
    return report


def _days(first: str, last: str) -> list[str]:
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    if end < start or (end - start).days > 366:
        raise ValueError("reconcile 1 to 367 days, first day first")
    return [(start + timedelta(days=n)).isoformat() for n in range((end - start).days + 1)]


def _store(session: Session, account: PoolAccount, findings: list[Finding]) -> int:
    known = {(c, r) for c, r in session.execute(select(Discrepancy.category, Discrepancy.ref))}
    new = 0
    for f in findings:
        if (f.category, f.ref) in known:
            continue
        known.add((f.category, f.ref))
        session.add(Discrepancy(category=f.category, severity=f.severity, account_id=account.id, day=f.day,
                                ref=f.ref, detail=f.detail, amount=f.amount))
        new += 1
    session.flush()
    return new


# -- rule 1: earnings ---------------------------------------------------------------------------------------------
def _number(details: dict, *names: str) -> Decimal | None:
    for name in names:
        value = details.get(name)
        if value not in (None, ""):
            try:
                return Decimal(str(value))
            except InvalidOperation:
                return None
    return None


def _day_network(client, day: str, cache: dict):
    """The day's blocks from the node, once per run (None when the node has none for that day)."""
    if day not in cache:
        try:
            net = expected.day_network(client, day)
            cache[day] = net if net.segments else None
        except ValueError:
            cache[day] = None
    return cache[day]


def _earnings_day(session, client, account: PoolAccount, day: str, lines: list[StatementLine],
                  tol: Tolerances, devices_ix: tuple, networks: dict) -> tuple[DayRow, list[Finding]]:
    ref = f"{account.id}:{day}"
    found: list[Finding] = []
    paid = sum(ln.amount for ln in lines)
    details = [json.loads(ln.details) for ln in lines]
    start = datetime.combine(date.fromisoformat(day), time(), tzinfo=timezone.utc)
    work = telemetry.accepted_work(session, account, start, start + timedelta(days=1), max_gap=tol.telemetry_max_gap,
                                   fleet=devices_ix)
    started = session.scalar(select(func.min(TelemetrySample.time)).join(
        MiningDevice, MiningDevice.id == TelemetrySample.device_id).where(MiningDevice.account_id == account.id))
    if started is None or _utc(started) >= start + timedelta(days=1):
        work.gaps = []                      # the fleet's telemetry had not started yet: no gap to report
    for gap in work.gaps:
        found.append(Finding("TELEMETRY_GAP", f"{ref}:{gap.who}:{gap.start.isoformat()}",
                             f"no reading from {gap.who} between {gap.start:%H:%M} and {gap.end:%H:%M} UTC", day))
    for worker, difficulty in work.unknown.items():
        found.append(Finding("UNKNOWN_WORKER", f"{ref}:{worker}",
                             f"worker {worker!r} mined for the account but maps to no fleet device "
                             f"({difficulty} difficulty accepted)", day))
    terms = dict(scheme=account.scheme.lower(), pool_fee_bps=account.pool_fee_bps,
                 fee_method="none" if account.scheme.lower() == "pps" else account.fee_method)
    fleet = pool = None
    net = _day_network(client, day, networks)
    if net is not None:                     # no block of that day on our node yet: nothing to expect
        if work.samples and work.difficulty > 0:
            fleet = expected.expected_for_day(client, day, work=work.difficulty, net=net, **terms)
        hashrate = next((h for d in details if (h := _number(d, "hashrate", "hash_rate")) is not None), None)
        if hashrate:
            pool = expected.expected_for_day(client, day, hashrate=hashrate, net=net, **terms)
    base = pool or fleet
    pay = Fraction(paid, base.expected) if base and base.expected else None
    capture = Fraction(pool.expected, fleet.expected) if pool and fleet and fleet.expected else None
    row = DayRow(day, paid, pool and pool.expected, fleet and fleet.expected, pay, capture)
    if lines and pay is not None and account.scheme.lower() not in ROLLING_SCHEMES and pay < 1 - tol.pay_warn:
        severity = "alert" if pay < 1 - tol.pay_alert else "warn"
        found.append(Finding("UNDERPAID_VS_EXPECTED", ref, f"paid {paid} sat, expected {base.expected} sat "
                             f"({float(pay):.2%})", day, base.expected - paid, severity))
    if capture is not None and capture < tol.capture_warn:
        severity = "alert" if capture < tol.capture_alert else "warn"
        found.append(Finding("HASHRATE_LEAK", ref, f"the pool credited {float(capture):.2%} of the work the fleet "
                             f"measured (expected {pool.expected} vs {fleet.expected} sat)", day,
                             fleet.expected - pool.expected, severity))
    # Foundry's fppsRatePercent is the fee component it paid (its feeRatePercent is the pool fee)
    reported = next((r for d in details if (r := _number(d, "fpps_rate_percent")) is not None), None)
    if reported is not None and base is not None:
        ours = base.fee_ratio * 100
        if abs(Fraction(reported) - ours) > tol.fee_ratio_points:
            found.append(Finding("FEE_RATE_MISMATCH", ref, f"the pool applied a fee rate of {reported} %; the "
                                 f"node's blocks give {float(ours):.3f} % by the {account.fee_method} method", day))
    return row, found


def _luck(account: PoolAccount, rows: list[DayRow], tol: Tolerances) -> list[Finding]:
    """PPLNS, TIDES and solo: paid against expected over the last 30 days of the run, as luck."""
    if account.scheme.lower() not in ROLLING_SCHEMES:
        return []
    window = [r for r in rows[-30:] if r.expected_pool or r.expected_fleet]
    expected_total = sum(r.expected_pool or r.expected_fleet for r in window)
    if not expected_total:
        return []
    luck = Fraction(sum(r.paid for r in window), expected_total)
    if abs(luck - 1) <= tol.luck_band:
        return []
    return [Finding("LUCK_OUTLIER", f"{account.id}:{window[0].day}..{window[-1].day}",
                    f"{account.scheme} paid {float(luck):.1%} of expectation over {len(window)} days "
                    "(luck, not counted as shortfall)", window[-1].day)]


def _restatements(session: Session, account: PoolAccount, days: list[str]) -> list[Finding]:
    out = []
    for line in session.scalars(select(StatementLine).where(StatementLine.account_id == account.id,
                                                             StatementLine.revision > 1)):
        if line.day not in days:
            continue
        previous = session.scalar(select(StatementLine).where(
            StatementLine.account_id == account.id, StatementLine.kind == line.kind, StatementLine.key == line.key,
            StatementLine.revision == line.revision - 1))
        out.append(Finding("STATEMENT_RESTATED", f"{account.id}:{line.kind}:{line.key}:r{line.revision}",
                           f"the pool restated {line.kind} {line.key}: {previous.amount} -> {line.amount} sat",
                           line.day, line.amount - previous.amount))
    return out


# -- rules 2 and 4: payouts against the chain ------------------------------------------------------------------------
def _whitelist(account: PoolAccount) -> set[str]:
    return set(json.loads(account.payout_addresses or "[]"))


def _payouts_on_chain(session, client, account: PoolAccount, payouts: list[StatementLine],
                      tol: Tolerances) -> list[Finding]:
    out, whitelist, seen = [], _whitelist(account), {}
    receipts = _receipts(session, client, account)
    used: set[tuple[str, int]] = set()
    for line in payouts:
        ref = f"{account.id}:payout:{line.key}"
        details = json.loads(line.details)
        if details.get("status") not in (None, "", "confirmed", "paid", "success", "completed", "resolved"):
            continue                                          # a pending or failed payout moved nothing yet
        if line.address is not None and line.address not in whitelist:
            out.append(Finding("NON_WHITELISTED_DESTINATION", ref, f"the pool paid {line.amount} sat to "
                               f"{line.address}, which is not a whitelisted payout address", line.day, line.amount))
            continue
        if line.txid:
            key = (line.txid, line.address)
            if key in seen:
                out.append(Finding("DUPLICATE_PAYOUT", ref, f"payout {line.key} repeats {seen[key]} "
                                   f"(transaction {line.txid})", line.day, line.amount))
                continue
            seen[key] = line.key
            out += _check_tx(client, account, line, ref, whitelist, details, used)
            continue
        match = next((r for r in receipts if (r.txid, r.vout) not in used and r.value == line.amount
                      and (line.address is None or r.address == line.address)
                      and abs((date.fromisoformat(r.day) - date.fromisoformat(line.day)).days)
                      <= tol.receipt_window_days), None)
        if match is None:
            out.append(Finding("PAYOUT_NOT_ON_CHAIN", ref, f"no receipt of exactly {line.amount} sat on a fleet "
                               f"address within a day of {line.day}", line.day, line.amount))
        else:
            used.add((match.txid, match.vout))
    return out


def _check_tx(client, account, line, ref, whitelist, details, used) -> list[Finding]:
    try:
        tx = client.getrawtransaction(line.txid, True)
    except RPCError as e:
        if e.code != RPC_INVALID_ADDRESS_OR_KEY:      # only "no such transaction" means not on chain
            raise
        tx = None
    generation = bool(details.get("is_generation_txn") or details.get("coinbase"))
    if tx is None or tx.get("confirmations", 0) < 1 or tx.get("in_active_chain") is False:
        category = "COINBASE_ORPHANED" if generation else "PAYOUT_NOT_ON_CHAIN"
        why = ("its block left the best chain" if generation else "it is not in a block of the best chain")
        return [Finding(category, ref, f"payout transaction {line.txid} of {line.amount} sat: {why}", line.day,
                        line.amount)]
    targets = {line.address} if line.address else whitelist
    outputs = [(n, out) for n, out in enumerate(tx["vout"]) if out["scriptPubKey"].get("address") in targets]
    if not outputs:
        return [Finding("PAYOUT_NOT_ON_CHAIN", ref, f"transaction {line.txid} pays no whitelisted address",
                        line.day, line.amount)]
    n, out = next(((n, o) for n, o in outputs if btc_to_sats(o["value"]) == line.amount), outputs[0])
    used.add((line.txid, n))
    found = []
    got = btc_to_sats(out["value"])
    if got != line.amount:
        found.append(Finding("AMOUNT_MISMATCH", ref, f"the pool says {line.amount} sat; transaction {line.txid} "
                             f"paid {got} sat", line.day, line.amount - got))
    if "coinbase" in tx["vin"][0] and tx["confirmations"] < 100:
        found.append(Finding("COINBASE_IMMATURE", f"{ref}:{tx['confirmations']}",
                             f"coinbase payout {line.txid}: {tx['confirmations']} confirmations of 100", line.day))
    return found


@dataclass(frozen=True)
class _Receipt:
    txid: str
    vout: int
    value: int
    address: str
    day: str


def _receipts(session: Session, client: NodeClient, account: PoolAccount) -> list[_Receipt]:
    """What the fleet wallet received on the account's whitelisted addresses (confirmed), with the UTC day
    of the block that confirmed it (from the ledger's blocks, else the node's header)."""
    if account.fleet_policy_id is None:
        return []
    whitelist = _whitelist(account)
    rows = [(u, a) for u, a in session.execute(
        select(Utxo, Address.address).join(Address, Address.id == Utxo.address_id)
        .where(Utxo.policy_id == account.fleet_policy_id, Utxo.height.is_not(None))).all() if a in whitelist]
    heights = sorted({u.height for u, _ in rows})
    times = {b.height: b.time for b in session.scalars(select(Block).where(Block.height.in_(heights)))}
    missing = [h for h in heights if h not in times]
    if missing:
        hashes = client.batch([("getblockhash", [h]) for h in missing])
        headers = client.batch([("getblockheader", [h]) for h in hashes])
        times.update({h: header["time"] for h, header in zip(missing, headers)})
    return [_Receipt(u.txid, u.vout, u.value, a, datetime.fromtimestamp(times[u.height], timezone.utc).date().isoformat())
            for u, a in rows]


def _unattributed(session: Session, client: NodeClient, account: PoolAccount, payouts: list[StatementLine],
                  days: list[str]) -> list[Finding]:
    """Coins that arrived on the account's addresses but that no statement line accounts for."""
    by_txid = {(p.txid, p.address) for p in payouts if p.txid}
    amounts = sorted((p.amount, p.day) for p in payouts if not p.txid)
    out = []
    for r in _receipts(session, client, account):
        if r.day not in days or (r.txid, r.address) in by_txid or (r.txid, None) in by_txid:
            continue
        near = next((a for a in amounts if a[0] == r.value and abs((date.fromisoformat(a[1])
                                                                   - date.fromisoformat(r.day)).days) <= 1), None)
        if near is not None:
            amounts.remove(near)
            continue
        out.append(Finding("UNATTRIBUTED_RECEIPT", f"{account.id}:{r.txid}:{r.vout}",
                           f"{r.value} sat arrived on {r.address} ({r.txid}:{r.vout}) and no pool statement "
                           "line accounts for it", r.day, r.value))
    return out


def _missing_payouts(account: PoolAccount, earnings, payouts, days: list[str]) -> list[Finding]:
    """Daily schedules: once the unpaid balance reaches the threshold, the next day must carry a payout."""
    if account.schedule != "daily":
        return []
    out, unpaid = [], 0
    paid_days = {p.day for p in payouts}
    history = sorted({ln.day for ln in earnings + payouts})
    for day in history:
        unpaid += sum(e.amount for e in earnings if e.day == day)
        unpaid -= sum(p.amount + (p.fee or 0) for p in payouts if p.day == day)
        following = (date.fromisoformat(day) + timedelta(days=1)).isoformat()
        if unpaid >= account.payout_threshold and following in days and following != days[-1] \
                and following not in paid_days:
            out.append(Finding("MISSING_PAYOUT", f"{account.id}:{following}",
                               f"{unpaid} sat unpaid after {day} (threshold {account.payout_threshold} sat) and no "
                               f"payout on {following}", following, unpaid))
    return out


def _balance_drift(account: PoolAccount, lines, days: list[str]) -> list[Finding]:
    """previous balance + earnings - payouts - fees = the pool's balance, day by day."""
    balances = sorted((ln for ln in lines if ln.kind == "balance"), key=lambda ln: ln.day)
    out = []
    for before, after in zip(balances, balances[1:]):
        if after.day not in days:
            continue
        between = [ln for ln in lines if before.day < ln.day <= after.day]
        rolled = before.amount + sum(ln.amount for ln in between if ln.kind == "earning") \
            - sum(ln.amount + (ln.fee or 0) for ln in between if ln.kind == "payout")
        if rolled != after.amount:
            out.append(Finding("BALANCE_DRIFT", f"{account.id}:balance:{after.day}",
                               f"balance {before.amount} on {before.day}, plus earnings less payouts and fees, is "
                               f"{rolled} sat; the pool reports {after.amount} sat on {after.day}", after.day,
                               after.amount - rolled))
    return out


# -- rule 5: sweeps ----------------------------------------------------------------------------------------------
def _sweep_findings(session: Session, client: NodeClient, account: PoolAccount, tol: Tolerances,
                    fee_rate: float) -> list[Finding]:
    fleet = session.get(Policy, account.fleet_policy_id)
    out = []
    plan = sweeps.plan(session, fleet, fee_rate=fee_rate)
    for outpoint, why in plan.deferred.items():
        if why.startswith("stranded"):
            out.append(Finding("DUST_STRANDED", f"{fleet.name}:{outpoint}", f"{outpoint}: {why}"))
    tip = tip_height(session)
    for utxo in session.scalars(select(Utxo).where(Utxo.policy_id == fleet.id, Utxo.spent_txid.is_(None))):
        outpoint = f"{utxo.txid}:{utxo.vout}"
        if utxo_state(utxo, tip) != "confirmed" or plan.deferred.get(outpoint, "").startswith("stranded"):
            continue
        ready_at = utxo.height + (sweeps.COINBASE_MATURITY - 1 if utxo.coinbase else 0)
        if tip - ready_at >= tol.sweep_overdue_blocks:
            why = plan.deferred.get(outpoint, "no sweep was made")
            category = "SWEEP_FEE_OVER_BUDGET" if why.startswith("waiting for a fee window") else "SWEEP_OVERDUE"
            out.append(Finding(category, f"{fleet.name}:{outpoint}", f"{outpoint} ({utxo.value} sat) has waited "
                               f"{tip - ready_at} blocks to be swept: {why}", amount=utxo.value))
    for spend in session.scalars(select(Spend).where(Spend.policy_id == fleet.id, Spend.fee.is_not(None))):
        if spend.sweep and spend.amount and Fraction(spend.fee, spend.amount) > tol.sweep_fee_budget:
            out.append(Finding("SWEEP_FEE_OVER_BUDGET", f"spend:{spend.id}", f"sweep #{spend.id} paid {spend.fee} sat "
                               f"in fees to move {spend.amount} sat", amount=spend.fee))
    out += _spent_outside_custody(session, client, fleet)
    return out


def _spent_outside_custody(session: Session, client: NodeClient, fleet: Policy) -> list[Finding]:
    """Every transaction that spent a fleet coin must pay custody (or the fleet itself) only."""
    out = []
    spent = {u.spent_txid for u in session.scalars(select(Utxo).where(Utxo.policy_id == fleet.id,
                                                                      Utxo.spent_txid.is_not(None)))}
    for txid in sorted(spent):
        try:
            tx = client.getrawtransaction(txid, True)
        except RPCError as e:
            if e.code != RPC_INVALID_ADDRESS_OR_KEY:
                raise
            continue
        for n, vout in enumerate(tx["vout"]):
            address = vout["scriptPubKey"].get("address")
            row = session.scalar(select(Address).where(Address.address == address)) if address else None
            owner = session.get(Policy, row.policy_id) if row else None
            if owner is None or (owner.id != fleet.id and owner.kind not in sweeps.CUSTODY_KINDS):
                out.append(Finding("SWEEP_DEST_NOT_CUSTODY", f"{txid}:{n}",
                                   f"fleet coins were spent by {txid} to {address or vout['scriptPubKey']['hex']} "
                                   f"({btc_to_sats(vout['value'])} sat), which is not a custody address",
                                   amount=btc_to_sats(vout["value"])))
    return out


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)     # SQLite drops the zone


def open_findings(session: Session, account: PoolAccount | None = None) -> list[Discrepancy]:
    query = select(Discrepancy).where(Discrepancy.resolved_at.is_(None)).order_by(Discrepancy.id)
    if account is not None:
        query = query.where(Discrepancy.account_id == account.id)
    return list(session.scalars(query))
