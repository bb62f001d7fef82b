"""Pool statements: what each pool says it credited and paid, normalised into append-only statement lines.

Reconciliation compares these lines with the chain, the fleet and the contract, so they must say exactly
what the pool said, for ever: amounts are converted exactly (Decimal BTC -> integer satoshis, never
through float), every stored line carries the SHA-256 of the raw payload it came from, and a line the pool
later changes is kept next to its new revision instead of being overwritten.

One pure adapter per pool turns the pool's published fields into `Line`s; `import_statement` stores them.

Payloads. Each adapter takes the pool's JSON, parsed with ``json.loads(text, parse_float=Decimal)``; a
Python float anywhere an adapter reads a number is refused (floats are never money). A payload bundles the
pool's endpoints under their own names, and the wrapper the pool puts around them may be kept:

- braiins: ``{"btc": {"daily_rewards": [...], "onchain": [...]}}`` (or without the "btc" wrapper).
- foundry: ``{"earnings": [...], "transactions": [...], "balance": {...}, "fetched_at": time}``;
  fetched_at (when the balance was read) is needed only with a balance.
- f2pool:  ``{"transactions": [...]}`` (the answer of /v2/assets/transactions/list).
- luxor:   ``{"transactions": [...]}`` (the answer of /v2/pool/transactions/BTC). Luxor keeps about 45 days
  of history: import its statement daily.
- ocean:   ``{"result": {"earnings": [...], "payouts": [...]}}`` (the answer of /v1/earnpay; or unwrapped).

Line identity (`Line.key`): the pool's own identity for the line, so that the same line in a later
statement is recognised. Daily statements without ids are keyed by their day (Braiins daily_rewards,
Foundry earnings, Foundry balance); ledgers with ids by the id (F2Pool and Luxor transactions, Ocean blocks
by block hash, Ocean and Foundry payouts by txid). Braiins payouts have no id and no txid while pending:
they are keyed by their request time, so a pending payout that confirms becomes revision 2 of itself. A
(kind, key) twice in one payload is refused (which one would be the pool's word?). Several earning lines
may share a day (Ocean pays per block; a ledger may post an adjustment): reconciliation sums a day's lines.

Amounts. `amount` is never negative: for an earning it is what the pool credited, net of its pool fee
(the pool fee, when published, is in details as pool_fee); for a payout what was sent; for a balance the
balance. `fee` is what left the pool balance on top of `amount` (a payout's withdrawal or network fee), so
that previous balance + earnings - payouts - fees = balance; it is None when the pool does not say.
Amounts inside details are integer satoshis too; rates and hashrates are exact decimal text.

Time. A unix time (seconds) or an ISO 8601 time; a time without a zone is UTC (Ocean publishes them so).
The accounting day is the UTC day (YYYY-MM-DD) of: Braiins `date`; Foundry `startTime`; F2Pool
`mining_extra.mining_date` for revenue, `payout_extra.paid_time` (else `created_at`) for payouts; Luxor
`date_time` (the time Luxor posted the credit, which may be just after the mined day ends); Ocean `ts`.

Kinds per pool: Braiins daily_rewards -> earning, onchain -> payout (every status: a pending or failed
payout is kept with its status in details, and reconciliation decides what it means); Foundry earnings ->
earning, transactions of type payout or withdrawal -> payout, balance -> balance; F2Pool type revenue* or
mining -> earning, payout -> payout (fee = balance debited - value sent); Luxor transaction_type CREDIT ->
earning, DEBIT -> payout; Ocean earnings -> earning, payouts -> payout. An unknown type is refused rather
than guessed.

Generic CSV (`parse_csv`, for a pool without an adapter or an operator's own export): UTF-8 (a BOM is
ignored), comma-separated, RFC 4180 quoting, header row required (names case-insensitive), blank rows
ignored, one line per row:

    kind,day,key,amount_btc,fee_btc,txid,address[,any other column...]

- kind: earning | payout | balance (required)
- day: the UTC accounting day, YYYY-MM-DD (required)
- key: the pool's identity for the line, e.g. the day for a daily earning, the txid or the pool's payout
  id for a payout (required)
- amount_btc (at most 8 decimals) or amount_sats (whole satoshis): exactly one of the two columns
- fee_btc or fee_sats: optional column (at most one of the two); an empty cell means no fee reported
- txid (64 hex), address: optional columns, empty cells allowed
- any other column (hashrate, status, pps_base, ...) is kept as text in details; empty cells are left out.
`to_csv` writes lines in this format (with amount_sats and fee_sats).

Storing (`import_statement`): a (kind, key) new to the account is revision 1; a line identical to its
latest revision (day, amount, fee, txid, address, details) is skipped, so re-importing is harmless; a
different one is a new revision and the previous one is marked superseded (the only change ever made to a
stored line; nothing is deleted, and a line missing from a later statement is left as it was). Every
import is one event-log entry, written in the caller's transaction with the lines. The payload is parsed
and checked in full before anything is written: a bad line refuses the whole import.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from custody.chain.node_client import btc_to_sats, COIN
from custody.errors import CustodyError
from custody.eventlog.log import record
from custody.mining.models import Pool, PoolAccount, StatementLine

KINDS = ("earning", "payout", "balance")
SOURCES = ("braiins", "foundry", "f2pool", "luxor", "ocean", "csv")
EVENT_KIND = "mining.statement_imported"
MAX_SATS = 21_000_000 * COIN
_EARLIEST = datetime(2009, 1, 3, tzinfo=timezone.utc)      # the genesis block
_LATEST = datetime(2100, 1, 1, tzinfo=timezone.utc)
_HEX64 = re.compile(r"[0-9a-fA-F]{64}\Z")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_WHOLE = re.compile(r"-?\d+\Z")
_KEY_MAX, _ADDRESS_MAX = 200, 100        # the columns' sizes
_CSV_FIXED = ("kind", "day", "key", "amount_btc", "amount_sats", "fee_btc", "fee_sats", "txid", "address")


class StatementError(CustodyError, ValueError):
    """Refused: a statement that cannot be normalised exactly. The message names the pool, the line and
    the field."""


@dataclass(frozen=True)
class Line:
    """One normalised statement line (see the module docstring for what each field means per pool)."""
    kind: str                       # earning | payout | balance
    key: str                        # the pool's identity for the line
    day: str                        # UTC accounting day, YYYY-MM-DD
    amount: int                     # satoshis, never negative
    fee: int | None = None          # satoshis that left the balance on top of amount; None: not reported
    txid: str | None = None         # lowercase hex
    address: str | None = None
    details: dict = field(default_factory=dict)   # the pool's other fields: sats, text, bools


@dataclass(frozen=True)
class Restatement:
    """A line the pool changed: what reconciliation reports as STATEMENT_RESTATED."""
    kind: str
    key: str
    day: str
    old_amount: int
    new_amount: int
    revision: int                   # the new revision's number


@dataclass(frozen=True)
class ImportReport:
    source: str
    sha256: str                     # of the raw payload
    added: int                      # lines new to the account (revision 1)
    unchanged: int                  # lines identical to their latest revision (skipped)
    restated: int                   # lines that became a new revision
    restatements: list[Restatement]


# -- reading values exactly ------------------------------------------------------------------------
def _parse_time(value: Any) -> datetime:
    """Unix seconds or ISO 8601 -> an aware UTC datetime; a plausible Bitcoin-era time or ValueError."""
    if isinstance(value, bool):
        raise ValueError("is not a time")
    if isinstance(value, int) or (isinstance(value, str) and _WHOLE.match(value.strip())):
        seconds = int(value)
        if not _EARLIEST.timestamp() <= seconds < _LATEST.timestamp():
            raise ValueError(f"is not a plausible time: {value!r} (unix seconds, not milliseconds?)")
        moment = datetime.fromtimestamp(seconds, timezone.utc)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"is not an ISO 8601 time: {value!r}") from None
        moment = moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
    else:
        raise ValueError(f"is not a time: {value!r}")
    if not _EARLIEST <= moment < _LATEST:
        raise ValueError(f"is not a plausible time: {value!r} (unix seconds, not milliseconds?)")
    return moment


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _decimal_text(value: Decimal | int) -> str:
    """A rate or hashrate as exact, canonical text (2.50 and 2.5 compare equal)."""
    text = format(Decimal(value).normalize(), "f")
    return "0" if text in ("-0", "0") else text


class _Record:
    """One record of a payload. Every read names the pool, the line and the field when it refuses."""

    def __init__(self, pool: str, where: str, data: Any):
        if not isinstance(data, dict):
            raise StatementError(f"{pool}: {where} is not an object")
        self.pool, self.where, self.data = pool, where, data

    def error(self, name: str, problem: str) -> StatementError:
        return StatementError(f"{self.pool}: {self.where}: {name} {problem}")

    def raw(self, name: str, required: bool = True) -> Any:
        """The value, None if absent (refused if required); a float is refused wherever it is."""
        value = self.data.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                raise self.error(name, "is missing")
            return None
        if isinstance(value, float):
            raise self.error(name, f"is a float ({value!r}): floats are never money; "
                                   "parse the JSON with parse_float=Decimal")
        return value

    def _checked(self, name: str, sats: int, value: Any, signed: bool) -> int:
        if sats < 0 and not signed:
            raise self.error(name, f"is negative ({value})")
        if abs(sats) > MAX_SATS:
            raise self.error(name, f"is more than 21 million BTC ({value})")
        return sats

    def btc(self, name: str, required: bool = True, signed: bool = False) -> int | None:
        """A BTC amount (Decimal, int or string) as exact satoshis."""
        value = self.raw(name, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (Decimal, int, str)):
            raise self.error(name, f"is not an amount: {value!r}")
        try:
            sats = btc_to_sats(value)
        except (TypeError, ValueError) as e:
            raise self.error(name, f"is not an exact BTC amount: {e}") from None
        return self._checked(name, sats, value, signed)

    def sats(self, name: str, required: bool = True, signed: bool = False) -> int | None:
        """A satoshi amount: a whole number (int or digits)."""
        value = self.raw(name, required)
        if value is None:
            return None
        if isinstance(value, bool) or not (isinstance(value, int) or
                                           (isinstance(value, str) and _WHOLE.match(value.strip()))):
            raise self.error(name, f"is not a whole number of satoshis: {value!r}")
        return self._checked(name, int(value), value, signed)

    def moment(self, name: str, required: bool = True) -> datetime | None:
        value = self.raw(name, required)
        if value is None:
            return None
        try:
            return _parse_time(value)
        except ValueError as e:
            raise self.error(name, str(e)) from None

    def day(self, name: str) -> str:
        """The UTC accounting day of a time field."""
        return self.moment(name).date().isoformat()

    def calendar_day(self, name: str) -> str:
        """A field that must already be a day, YYYY-MM-DD (the generic CSV)."""
        value = self.raw(name)
        try:
            if not isinstance(value, str) or not _DAY.match(value.strip()):
                raise ValueError
            return date.fromisoformat(value.strip()).isoformat()
        except ValueError:
            raise self.error(name, f"is not a day (YYYY-MM-DD): {value!r}") from None

    def number(self, name: str, required: bool = False) -> str | None:
        """A rate, hashrate or share count as exact decimal text."""
        value = self.raw(name, required)
        if value is None:
            return None
        try:
            if isinstance(value, bool) or not isinstance(value, (Decimal, int, str)):
                raise ValueError
            number = Decimal(value.strip() if isinstance(value, str) else value)
            if not number.is_finite():
                raise ValueError
        except (ValueError, ArithmeticError):
            raise self.error(name, f"is not a number: {value!r}") from None
        return _decimal_text(number)

    def text(self, name: str, required: bool = False) -> str | None:
        value = self.raw(name, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.error(name, f"is not text: {value!r}")
        return str(value).strip()

    def hex64(self, name: str, required: bool = False) -> str | None:
        """A txid or block hash, lowercased."""
        value = self.text(name, required)
        if value is not None and not _HEX64.match(value):
            raise self.error(name, f"is not 64 hex digits: {value!r}")
        return None if value is None else value.lower()

    def flag(self, name: str, required: bool = False) -> bool | None:
        value = self.raw(name, required)
        if value is not None and not isinstance(value, bool):
            raise self.error(name, f"is not true or false: {value!r}")
        return value

    def sub(self, name: str, required: bool = True) -> "_Record | None":
        """A nested object (F2Pool's mining_extra, payout_extra)."""
        value = self.raw(name, required)
        return None if value is None else _Record(self.pool, f"{self.where}.{name}", value)


def _body(pool: str, payload: Any, sections: tuple[str, ...], wrapper: str | None = None) -> _Record:
    """The payload's object holding the sections, unwrapped; refused if it holds none of them (a
    statement given to the wrong adapter would otherwise import as empty)."""
    if not isinstance(payload, dict):
        raise StatementError(f"{pool}: the payload is not a JSON object")
    if wrapper and isinstance(payload.get(wrapper), dict):
        payload = payload[wrapper]
    if not any(name in payload for name in sections):
        raise StatementError(f"{pool}: the payload has none of {', '.join(sections)} (is it a {pool} statement?)")
    return _Record(pool, "payload", payload)


def _records(body: _Record, section: str) -> Iterator[_Record]:
    """The records of one section (a list), each named by its section and index."""
    items = body.raw(section, required=False) or []
    if not isinstance(items, list):
        raise body.error(section, "is not a list")
    for i, item in enumerate(items):
        yield _Record(body.pool, f"{section}[{i}]", item)


class _Lines:
    """The lines of one statement, in order; refuses a (kind, key) seen twice."""

    def __init__(self) -> None:
        self.lines: list[Line] = []
        self._seen: dict[tuple[str, str], str] = {}

    def add(self, rec: _Record, kind: str, key: str, day: str, amount: int, *, fee: int | None = None,
            txid: str | None = None, address: str | None = None, details: dict | None = None) -> None:
        if not key or len(key) > _KEY_MAX:
            raise rec.error("key", f"must be 1 to {_KEY_MAX} characters: {key!r}")
        if address is not None and len(address) > _ADDRESS_MAX:
            raise rec.error("address", f"is longer than {_ADDRESS_MAX} characters")
        if (kind, key) in self._seen:
            raise rec.error("key", f"{kind} {key!r} appears twice in the statement (also {self._seen[kind, key]})")
        self._seen[kind, key] = rec.where
        details = {k: v for k, v in (details or {}).items() if v is not None}
        self.lines.append(Line(kind, key, day, amount, fee, txid, address, details))


# -- the adapters ----------------------------------------------------------------------------------
def parse_braiins(payload: dict) -> list[Line]:
    """Braiins Pool: daily_rewards (BTC strings, `date` unix) and onchain payouts (satoshis)."""
    body, out = _body("braiins", payload, ("daily_rewards", "onchain"), wrapper="btc"), _Lines()
    for rec in _records(body, "daily_rewards"):
        day = rec.day("date")
        calculated = rec.moment("calculation_date", required=False)
        out.add(rec, "earning", day, day, rec.btc("total_reward"), details={
            "mining_reward": rec.btc("mining_reward", required=False),
            "bos_plus_reward": rec.btc("bos_plus_reward", required=False),
            "referral_bonus": rec.btc("referral_bonus", required=False),
            "referral_reward": rec.btc("referral_reward", required=False),
            "shares": rec.number("shares"),
            "calculation_date": calculated and _iso(calculated)})
    for rec in _records(body, "onchain"):
        requested, resolved = rec.moment("requested_at_ts"), rec.moment("resolved_at_ts", required=False)
        out.add(rec, "payout", _iso(requested), (resolved or requested).date().isoformat(), rec.sats("amount_sats"),
                fee=rec.sats("fee_sats", required=False), txid=rec.hex64("tx_id"), address=rec.text("destination"),
                details={"status": rec.text("status", required=True).lower(), "requested_at": _iso(requested),
                         "resolved_at": resolved and _iso(resolved)})
    return out.lines


def parse_foundry(payload: dict) -> list[Line]:
    """Foundry USA: FPPS earnings per UTC day, payout transactions and the balance (all BTC numbers)."""
    body, out = _body("foundry", payload, ("earnings", "transactions", "balance")), _Lines()
    for rec in _records(body, "earnings"):
        day = rec.day("startTime")
        out.add(rec, "earning", day, day, rec.btc("totalAmount"), details={
            "end_time": _iso(rec.moment("endTime")),
            "hashrate": rec.number("hashrate"),
            "pps_base": rec.btc("ppsBaseAmount", required=False),
            "tx_fee_reward": rec.btc("txFeeRewardAmount", required=False),
            "fpps_rate_percent": rec.number("fppsRatePercent"),
            "pool_fee": rec.btc("poolFeeAmount", required=False),
            "fee_rate_percent": rec.number("feeRatePercent")})
    for rec in _records(body, "transactions"):
        kind = rec.text("type", required=True).lower()
        if kind not in ("payout", "withdrawal"):
            raise rec.error("type", f"is {kind!r}, not a payout: unknown to this adapter")
        moment, txid = rec.moment("time"), rec.hex64("tx_id")
        out.add(rec, "payout", txid or _iso(moment), moment.date().isoformat(), rec.btc("amount"), txid=txid,
                address=rec.text("address"), details={"type": kind, "time": _iso(moment)})
    balance = body.sub("balance", required=False)
    if balance is not None:
        fetched = body.moment("fetched_at")
        day = fetched.date().isoformat()
        out.add(balance, "balance", day, day, balance.btc("balance"), details={
            "total_earned": balance.btc("total_earned", required=False),
            "total_withdrawn": balance.btc("total_withdrawn", required=False),
            "fetched_at": _iso(fetched)})
    return out.lines


def _f2pool_kind(rec: _Record) -> str:
    kind = rec.text("type", required=True).lower()
    if kind.startswith("revenue") or kind == "mining":
        return "earning"
    if kind == "payout":
        return "payout"
    raise rec.error("type", f"is {kind!r}: unknown to this adapter")


def _f2pool_revenue(out: _Lines, rec: _Record) -> None:
    """A revenue transaction: its day is the mining day, its details the FPPS split."""
    changed, extra, created = rec.btc("changed_balance"), rec.sub("mining_extra"), rec.moment("created_at")
    settled = extra.moment("settle_date", required=False)
    out.add(rec, "earning", rec.text("id", required=True), extra.day("mining_date"), changed, details={
        "type": rec.text("type"), "created_at": _iso(created), "settle_date": settled and _iso(settled),
        "pps": extra.btc("pps", required=False), "pps_fee_rate": extra.number("pps_fee_rate"),
        "tx_fee": extra.btc("tx_fee", required=False), "tx_fee_rate": extra.number("tx_fee_rate"),
        "hash_rate": extra.number("hash_rate")})


def _f2pool_payout(out: _Lines, rec: _Record) -> None:
    """A payout: the value sent; its fee is what the balance lost beyond it (changed_balance is a debit,
    of either sign in the payload)."""
    changed, extra, created = rec.btc("changed_balance", signed=True), rec.sub("payout_extra"), rec.moment("created_at")
    value, paid = extra.btc("value"), extra.moment("paid_time", required=False)
    if abs(changed) < value:
        raise rec.error("changed_balance", f"debits less than the payout's value ({value} sats)")
    out.add(rec, "payout", rec.text("id", required=True), (paid or created).date().isoformat(), value,
            fee=abs(changed) - value, txid=extra.hex64("tx_id"), address=extra.text("address"), details={
                "changed_balance": changed, "created_at": _iso(created), "paid_time": paid and _iso(paid),
                "tip": extra.btc("tip", required=False), "wallet_type": extra.text("wallet_type")})


def parse_f2pool(payload: dict) -> list[Line]:
    """F2Pool: one ledger of transactions (BTC numbers), keyed by F2Pool's transaction id; revenue carries
    mining_extra, payouts payout_extra."""
    body, out = _body("f2pool", payload, ("transactions",)), _Lines()
    for rec in _records(body, "transactions"):
        (_f2pool_revenue if _f2pool_kind(rec) == "earning" else _f2pool_payout)(out, rec)
    return out.lines


def parse_luxor(payload: dict) -> list[Line]:
    """Luxor: a ledger of transactions (BTC numbers) keyed by transaction_id; transaction_type gives the
    direction (CREDIT, DEBIT), transaction_category the reason. The amount is a magnitude: a negative one is
    refused. A DEBIT's transaction_id is its txid when it is 64 hex digits."""
    body, out = _body("luxor", payload, ("transactions",)), _Lines()
    for rec in _records(body, "transactions"):
        direction = rec.text("transaction_type", required=True).upper()
        if direction not in ("CREDIT", "DEBIT"):
            raise rec.error("transaction_type", f"is {direction!r}, neither CREDIT nor DEBIT")
        currency = rec.text("currency_type")
        if currency is not None and currency.upper() != "BTC":
            raise rec.error("currency_type", f"is {currency!r}, not BTC")
        key, moment = rec.text("transaction_id", required=True), rec.moment("date_time")
        payout = direction == "DEBIT"
        out.add(rec, "payout" if payout else "earning", key, moment.date().isoformat(), rec.btc("currency_amount"),
                txid=key.lower() if payout and _HEX64.match(key) else None, details={
                    "transaction_category": rec.text("transaction_category"), "date_time": _iso(moment),
                    "subaccount_name": rec.text("subaccount_name"), "address_name": rec.text("address_name"),
                    "usd_equivalent": rec.number("usd_equivalent")})
    return out.lines


def parse_ocean(payload: dict) -> list[Line]:
    """OCEAN (TIDES): earnings per found block and payouts, in satoshis; most payouts are outputs of a
    coinbase (is_generation_txn), which reconciliation must treat as immature until they mature."""
    body, out = _body("ocean", payload, ("earnings", "payouts"), wrapper="result"), _Lines()
    for rec in _records(body, "earnings"):
        block = rec.hex64("block_hash", required=True)
        out.add(rec, "earning", block, rec.day("ts"), rec.sats("satoshis_net_earned"), details={
            "ts": _iso(rec.moment("ts")), "block_hash": block,
            "pool_fee": rec.sats("fees_colected_satoshis", required=False),     # sic: Ocean's spelling
            "shares": rec.number("shares_in_window")})
    for rec in _records(body, "payouts"):
        txid = rec.hex64("on_chain_txid", required=True)
        out.add(rec, "payout", txid, rec.day("ts"), rec.sats("total_satoshis_net_paid"), txid=txid, details={
            "ts": _iso(rec.moment("ts")), "is_generation_txn": rec.flag("is_generation_txn")})
    return out.lines


def _csv_header(row: list[str]) -> list[str]:
    """The header's column names, checked: required columns present, one amount column, no duplicates."""
    names = [cell.strip().lower() for cell in row]
    problems = [f"column {i + 1} has no name" for i, name in enumerate(names) if not name]
    problems += [f"column {name!r} appears twice" for name in sorted({n for n in names if names.count(n) > 1})]
    problems += [f"column {name!r} is missing" for name in ("kind", "day", "key") if name not in names]
    if ("amount_btc" in names) == ("amount_sats" in names):
        problems.append("needs exactly one of the columns amount_btc and amount_sats")
    if "fee_btc" in names and "fee_sats" in names:
        problems.append("has both fee_btc and fee_sats")
    if problems:
        raise StatementError(f"csv: header (line 1): {'; '.join(problems)}")
    return names


def parse_csv(text: str) -> list[Line]:
    """The generic CSV described in the module docstring; a line is named by its line number."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    try:
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as e:
        raise StatementError(f"csv: line {reader.line_num}: {e}") from None
    rows = [(n, row) for n, row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise StatementError("csv: empty: a header row is required")
    names = _csv_header(rows[0][1])
    out = _Lines()
    for n, row in rows[1:]:
        if len(row) != len(names):
            raise StatementError(f"csv: line {n}: {len(row)} cells for {len(names)} columns")
        rec = _Record("csv", f"line {n}", dict(zip(names, row)))
        kind = rec.text("kind", required=True).lower()
        if kind not in KINDS:
            raise rec.error("kind", f"is {kind!r}, not one of {', '.join(KINDS)}")
        amount = rec.btc("amount_btc") if "amount_btc" in names else rec.sats("amount_sats")
        fee = rec.btc("fee_btc", required=False) if "fee_btc" in names else rec.sats("fee_sats", required=False)
        out.add(rec, kind, rec.text("key", required=True), rec.calendar_day("day"), amount, fee=fee,
                txid=rec.hex64("txid"), address=rec.text("address"),
                details={name: rec.text(name) for name in names if name not in _CSV_FIXED})
    return out.lines


def to_csv(lines: list[Line]) -> str:
    """Lines in the generic CSV (amounts in satoshis); details become columns and come back as text."""
    extra = sorted({name for line in lines for name in line.details})
    clash = [name for name in extra if name in _CSV_FIXED]
    if clash:
        raise StatementError(f"csv: details named {clash} would collide with the format's columns")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["kind", "day", "key", "amount_sats", "fee_sats", "txid", "address", *extra])

    def cell(value: Any) -> str:
        return "" if value is None else ("true" if value is True else "false" if value is False else str(value))
    for line in lines:
        writer.writerow([line.kind, line.day, line.key, line.amount, cell(line.fee), cell(line.txid),
                         cell(line.address), *(cell(line.details.get(name)) for name in extra)])
    return out.getvalue()


PARSERS = {"braiins": parse_braiins, "foundry": parse_foundry, "f2pool": parse_f2pool, "luxor": parse_luxor,
           "ocean": parse_ocean}


def _load_json(source: str, raw: bytes) -> Any:
    """Exact JSON: numbers with a fraction become Decimal; NaN, Infinity and duplicate keys are refused
    (two readers of a duplicated key could see two different amounts)."""
    def pairs(items: list) -> dict:
        obj: dict = {}
        for k, v in items:
            if k in obj:
                raise ValueError(f"duplicate key {k!r}")
            obj[k] = v
        return obj

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a number")
    try:
        return json.loads(raw.decode("utf-8-sig"), parse_float=Decimal, parse_constant=no_constant,
                          object_pairs_hook=pairs)
    except (UnicodeDecodeError, ValueError) as e:
        raise StatementError(f"{source}: the payload is not valid JSON: {e}") from None
    except RecursionError:
        raise StatementError(f"{source}: the payload nests arrays and objects too deeply to be a statement") from None


def parse_payload(source: str, raw: bytes) -> list[Line]:
    """The lines of a raw payload from `source` (braiins, foundry, f2pool, luxor, ocean, csv)."""
    if source == "csv":
        try:
            return parse_csv(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise StatementError(f"csv: not UTF-8 text: {e}") from None
    if source not in PARSERS:
        raise StatementError(f"unknown statement source {source!r}: one of {', '.join(SOURCES)}")
    return PARSERS[source](_load_json(source, raw))


# -- storing ---------------------------------------------------------------------------------------
def _check_source(session: Session, account: PoolAccount, source: str) -> None:
    """A pool's own format only into its own accounts (a Foundry file into a Braiins account is a
    mistake); the generic CSV into any account."""
    if source not in SOURCES:
        raise StatementError(f"unknown statement source {source!r}: one of {', '.join(SOURCES)}")
    pool = session.get(Pool, account.pool_id)
    if source != "csv" and pool.kind != source:
        raise StatementError(f"account {account.name!r} is at {pool.name} ({pool.kind}): "
                             f"a {source} statement does not belong to it")


def _latest(session: Session, account_id: int, lines: list[Line]) -> dict[tuple[str, str], StatementLine]:
    """The current (non-superseded) stored line for each (kind, key) of the statement."""
    found: dict[tuple[str, str], StatementLine] = {}
    keys = sorted({line.key for line in lines})
    for start in range(0, len(keys), 500):
        rows = session.scalars(select(StatementLine).where(
            StatementLine.account_id == account_id, StatementLine.superseded.is_(False),
            StatementLine.key.in_(keys[start:start + 500])))
        for row in rows:
            held = found.get((row.kind, row.key))
            if held is None or row.revision > held.revision:
                found[row.kind, row.key] = row
    return found


def _same(row: StatementLine, line: Line) -> bool:
    return (row.day, row.amount, row.fee, row.txid, row.address, json.loads(row.details)) == \
        (line.day, line.amount, line.fee, line.txid, line.address, line.details)


def _row(account_id: int, line: Line, revision: int, digest: str) -> StatementLine:
    return StatementLine(account_id=account_id, kind=line.kind, key=line.key, revision=revision, day=line.day,
                         amount=line.amount, fee=line.fee, txid=line.txid, address=line.address,
                         details=json.dumps(line.details, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
                         raw_sha256=digest, superseded=False)


def import_statement(session: Session, account: PoolAccount, source: str, payload: bytes | str, *,
                     actor: str) -> ImportReport:
    """Parse a pool's raw statement and append its lines to the account (see the module docstring), in the
    caller's transaction, with one `mining.statement_imported` event. Raises StatementError, having
    written nothing, if any line is bad."""
    raw = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    _check_source(session, account, source)
    lines = parse_payload(source, raw)
    digest = hashlib.sha256(raw).hexdigest()
    # Importers of the same account queue here on PostgreSQL (SQLite serialises writers itself); the
    # unique (account, kind, key, revision) is the last guard against two revisions with one number.
    session.execute(select(PoolAccount.id).where(PoolAccount.id == account.id).with_for_update())
    current = _latest(session, account.id, lines)
    added = unchanged = 0
    restatements: list[Restatement] = []
    for line in lines:
        held = current.get((line.kind, line.key))
        if held is None:
            session.add(_row(account.id, line, 1, digest))
            added += 1
        elif _same(held, line):
            unchanged += 1
        else:
            held.superseded = True
            session.add(_row(account.id, line, held.revision + 1, digest))
            restatements.append(Restatement(line.kind, line.key, line.day, held.amount, line.amount, held.revision + 1))
    session.flush()
    report = ImportReport(source, digest, added, unchanged, len(restatements), restatements)
    record(session, EVENT_KIND, actor, f"mining-account:{account.id}", {
        "source": source, "sha256": digest, "lines": len(lines), "added": added, "unchanged": unchanged,
        "restated": len(restatements),
        "restatements": [{"kind": r.kind, "key": r.key, "day": r.day, "old_amount": r.old_amount,
                          "new_amount": r.new_amount, "revision": r.revision} for r in restatements]})
    return report


def latest_lines(session: Session, account: PoolAccount, kind: str | None = None, day_from: str | None = None,
                 day_to: str | None = None) -> list[StatementLine]:
    """The account's current lines (latest revisions), by day, kind and key; days inclusive."""
    query = select(StatementLine).where(StatementLine.account_id == account.id, StatementLine.superseded.is_(False))
    if kind is not None:
        query = query.where(StatementLine.kind == kind)
    if day_from is not None:
        query = query.where(StatementLine.day >= day_from)
    if day_to is not None:
        query = query.where(StatementLine.day <= day_to)
    return list(session.scalars(query.order_by(StatementLine.day, StatementLine.kind, StatementLine.key)))


def revisions(session: Session, account: PoolAccount, kind: str, key: str) -> list[StatementLine]:
    """Every revision of one line, oldest first: what the pool said, and when it changed its mind."""
    return list(session.scalars(select(StatementLine).where(
        StatementLine.account_id == account.id, StatementLine.kind == kind, StatementLine.key == key)
        .order_by(StatementLine.revision)))
