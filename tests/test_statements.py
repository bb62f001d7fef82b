"""Pool statements: each pool's published fields normalised into exact-satoshi lines, stored append-only
with revisions and the raw payload's hash (on SQLite and PostgreSQL), and bad statements refused whole."""
from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from custody.eventlog import log as eventlog
from custody.eventlog.models import EventLogEntry
from custody.mining import statements as st
from custody.mining.models import Pool, PoolAccount, StatementLine
from custody.store.db import open_database

FIXTURES = Path(__file__).parent / "fixtures" / "pools"


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def payload(name: str) -> dict:
    return json.loads(raw(name), parse_float=Decimal)


def by_key(lines) -> dict:
    return {(line.kind, line.key): line for line in lines}


# -- the adapters, on their fixtures ---------------------------------------------------------------
def test_braiins_rewards_and_payouts_of_every_status():
    lines = by_key(st.parse_braiins(payload("braiins.json")))
    day2 = lines["earning", "2025-03-02"]
    assert (day2.day, day2.amount, day2.fee) == ("2025-03-02", 124457, None)
    assert day2.details["referral_reward"] == 12345          # "0.00012345", exactly
    assert day2.details["mining_reward"] + day2.details["bos_plus_reward"] + 12345 == day2.amount
    paid = lines["payout", "2025-03-03T01:05:00Z"]
    assert (paid.amount, paid.fee, paid.txid, paid.details["status"]) == \
        (237222, 1240, "49cb6f3a5d3e94dcf8ffca8d866e74e338193ce5ef5f4b8fe4be20804729ddfe", "confirmed")
    assert paid.address == "bc1q56phn48n9zldkak5gvgjtl4chl67vlp6znyjyz"
    pending = lines["payout", "2025-03-04T01:05:00Z"]
    assert (pending.kind, pending.txid, pending.details["status"], pending.day) == ("payout", None, "pending", "2025-03-04")
    assert "resolved_at" not in pending.details
    assert st.parse_braiins(payload("braiins.json")["btc"]) == list(lines.values())   # wrapper optional


def test_foundry_amounts_are_exact_where_float_is_not():
    lines = st.parse_foundry(payload("foundry.json"))
    earnings = [line for line in lines if line.kind == "earning"]
    assert [(e.day, e.amount) for e in earnings] == [("2025-03-01", 568319), ("2025-03-02", 570034),
                                                      ("2025-03-03", 564260)]
    for e in earnings:       # the pool's own identity: totalAmount = ppsBase + txFeeReward - poolFee
        assert e.amount == e.details["pps_base"] + e.details["tx_fee_reward"] - e.details["pool_fee"]
    day3 = earnings[2]
    assert day3.details == {"end_time": "2025-03-04T00:00:00Z", "hashrate": "9977000000000000", "pps_base": 569061,
                            "tx_fee_reward": 6715, "fpps_rate_percent": "1.18", "pool_fee": 11516,
                            "fee_rate_percent": "2"}
    # the same sum through float loses a satoshi
    assert int((0.00569061 + 0.00006715 - 0.00011516) * 1e8) == 564259
    payout, balance = lines[3], lines[4]
    assert (payout.kind, payout.amount, payout.key, payout.day) == \
        ("payout", 1138353, "c3a802f532d89bbd680bbcaa2f4d8afb9fb6d49f0d5ecef1dc2db04d2dd14819", "2025-03-03")
    assert payout.amount == earnings[0].amount + earnings[1].amount
    assert (balance.kind, balance.key, balance.amount) == ("balance", "2025-03-04", 564260)
    assert balance.amount == balance.details["total_earned"] - balance.details["total_withdrawn"]


def test_f2pool_revenue_by_mining_day_and_payout_fee_from_the_balance_debit():
    lines = st.parse_f2pool(payload("f2pool.json"))
    assert [(x.kind, x.key, x.day, x.amount) for x in lines] == [
        ("earning", "70418801", "2025-03-01", 283641), ("earning", "70462259", "2025-03-02", 285212),
        ("earning", "70505713", "2025-03-03", 282918), ("payout", "70512004", "2025-03-04", 568853)]
    first = lines[0]
    assert first.details["pps"] + first.details["tx_fee"] == first.amount
    assert (first.details["pps_fee_rate"], first.details["hash_rate"]) == ("0.025", "5012345678901234")
    payout = lines[3]
    assert (payout.fee, payout.details["changed_balance"], payout.address) == \
        (0, -568853, "bc1qgxw0363dh3wvhumr9hjy2cgn9fr3cr94ak282c")


def test_luxor_credits_and_debits():
    lines = st.parse_luxor(payload("luxor.json"))
    assert [(x.kind, x.day, x.amount) for x in lines] == [
        ("earning", "2025-03-02", 142411), ("earning", "2025-03-03", 141877), ("earning", "2025-03-04", 143502),
        ("payout", "2025-03-04", 284288)]
    assert lines[0].key == "8d0c3f4e-5a61-4b1e-9a57-2f0c1e9b7a01" and lines[0].txid is None
    assert lines[3].txid == lines[3].key == "3c042c9059e203d6d25d939dec01afc80430352a4fd5c807b9fcd19482607a5e"
    assert lines[2].details["usd_equivalent"] == "124.9" and lines[3].details["transaction_category"] == "PAYOUT"


def test_ocean_blocks_and_coinbase_payouts():
    lines = st.parse_ocean(payload("ocean.json"))
    earnings = [x for x in lines if x.kind == "earning"]
    assert [(x.day, x.amount) for x in earnings] == [("2025-03-01", 409871), ("2025-03-01", 398512),
                                                     ("2025-03-02", 412233), ("2025-03-03", 401986)]
    assert earnings[0].key == "00000000000000000001b280d41aeb995be37ebe7594ca13036fefa9d29b1940"
    assert earnings[0].details["pool_fee"] == 4139
    (payout,) = [x for x in lines if x.kind == "payout"]
    assert payout.amount == sum(x.amount for x in earnings[:3]) == 1220616
    assert payout.details == {"ts": "2025-03-02T11:20:47Z", "is_generation_txn": True}


def test_generic_csv():
    lines = st.parse_csv(raw("generic.csv").decode())
    assert [(x.kind, x.key, x.amount, x.fee) for x in lines] == [
        ("earning", "2025-03-01", 231977, None), ("earning", "2025-03-02", 12345, None),
        ("earning", "2025-03-03", 229000, None), ("payout", "pay-20250303-1", 243322, 1000),
        ("balance", "2025-03-03", 229000, None)]
    assert lines[1].details == {"hashrate_ths": "212.0", "note": "partial day, curtailed"}
    assert lines[3].txid == "cb8ab4f6c53bea043baf0e36029e98e64221072166d6c82fa4034f0189747503"
    assert lines[4].details == {}
    # the balance rolls forward: earnings - payouts - fees
    assert sum(x.amount for x in lines[:3]) - lines[3].amount - lines[3].fee == lines[4].amount
    sats = st.parse_csv("\ufeffKind,Day,Key,Amount_Sats,Fee_Sats\nearning,2025-03-01,2025-03-01,12345,\n\n")
    assert sats == [st.Line("earning", "2025-03-01", "2025-03-01", 12345)]


def test_the_csv_format_round_trips():
    lines = st.parse_csv(raw("generic.csv").decode())
    assert st.parse_csv(st.to_csv(lines)) == lines
    pool_lines = st.parse_foundry(payload("foundry.json")) + st.parse_ocean(payload("ocean.json"))
    again = st.parse_csv(st.to_csv(pool_lines))
    assert [(x.kind, x.key, x.day, x.amount, x.fee, x.txid, x.address) for x in again] == \
        [(x.kind, x.key, x.day, x.amount, x.fee, x.txid, x.address) for x in pool_lines]
    assert again[0].details["pps_base"] == "571234"              # details come back as text
    assert again[-1].details["is_generation_txn"] == "true"


@pytest.mark.parametrize("text, problem", [
    ("kind,day,amount_btc\n", r"column 'key' is missing"),
    ("kind,day,key,amount_btc,amount_sats\n", r"exactly one of the columns amount_btc and amount_sats"),
    ("kind,day,key,key,amount_btc\n", r"column 'key' appears twice"),
    ("kind,day,key,amount_btc\nearning,2025-03-01,d1,0.1\nearning,01/03/2025,d2,0.1\n", r"line 3: day is not a day"),
    ("kind,day,key,amount_btc\nearning,2025-03-01,d1,0.000000001\n", r"line 2: amount_btc .*more than 8 decimals"),
    ("kind,day,key,amount_sats\nearning,2025-03-01,d1,12.5\n", r"line 2: amount_sats is not a whole number"),
    ("kind,day,key,amount_btc\nfee,2025-03-01,d1,0.1\n", r"line 2: kind is 'fee'"),
    ("kind,day,key,amount_btc\nearning,2025-03-01,d1\n", r"line 2: 3 cells for 4 columns"),
    ("kind,day,key,amount_btc\nearning,2025-03-01,d1,0.1\nearning,2025-03-02,d1,0.2\n", r"line 3: key .*appears twice"),
    ("", r"a header row is required"),
])
def test_bad_csv_is_refused_naming_the_line(text, problem):
    with pytest.raises(st.StatementError, match=problem):
        st.parse_csv(text)


def test_floats_are_never_money():
    parsed_badly = json.loads(raw("foundry.json"))            # without parse_float=Decimal
    with pytest.raises(st.StatementError, match=r"foundry: earnings\[0\]: totalAmount is a float .*parse_float=Decimal"):
        st.parse_foundry(parsed_badly)


@pytest.mark.parametrize("pool, edit, problem", [
    ("foundry", lambda p: p["earnings"][1].update(totalAmount=Decimal("0.000000001")),
     r"foundry: earnings\[1\]: totalAmount .*more than 8 decimals"),
    ("foundry", lambda p: p["transactions"][0].update(amount=Decimal("-0.01138353")),
     r"foundry: transactions\[0\]: amount is negative"),
    ("foundry", lambda p: p["earnings"][2].pop("startTime"), r"foundry: earnings\[2\]: startTime is missing"),
    ("foundry", lambda p: p["transactions"][0].update(type="rebate"), r"type is 'rebate'"),
    ("foundry", lambda p: p.pop("fetched_at"), r"foundry: payload: fetched_at is missing"),
    ("braiins", lambda p: p["btc"]["onchain"][0].update(amount_sats=-237222), r"onchain\[0\]: amount_sats is negative"),
    ("braiins", lambda p: p["btc"]["daily_rewards"][0].update(date=1740787200000),
     r"daily_rewards\[0\]: date is not a plausible time.*milliseconds"),
    ("braiins", lambda p: p["btc"]["onchain"][0].update(tx_id="not-a-txid"), r"tx_id is not 64 hex digits"),
    ("f2pool", lambda p: p["transactions"][3]["payout_extra"].update(value=Decimal("0.01")),
     r"transactions\[3\]: changed_balance debits less than the payout's value"),
    ("luxor", lambda p: p["transactions"][1].update(transaction_type="REFUND"), r"neither CREDIT nor DEBIT"),
    ("ocean", lambda p: p["result"]["earnings"][1].update(block_hash=p["result"]["earnings"][0]["block_hash"]),
     r"earnings\[1\]: key .*appears twice .*also earnings\[0\]"),
    ("ocean", lambda p: p["result"]["payouts"][0].update(ts="yesterday"), r"payouts\[0\]: ts is not an ISO 8601 time"),
    ("ocean", lambda p: p.update(result={"blocks": []}), r"ocean: the payload has none of earnings, payouts"),
])
def test_bad_pool_payloads_are_refused_naming_pool_line_and_field(pool, edit, problem):
    data = payload(f"{pool}.json")
    edit(data)
    with pytest.raises(st.StatementError, match=problem):
        st.PARSERS[pool](data)


# -- storing ---------------------------------------------------------------------------------------
def make_account(session, kind: str) -> PoolAccount:
    pool = Pool(name=f"{kind} pool", kind=kind)
    session.add(pool)
    session.flush()
    account = PoolAccount(pool_id=pool.id, name="fleet-a", scheme="TIDES" if kind == "ocean" else "FPPS",
                          pool_fee_bps=200, fee_method="pool-default", payout_threshold=100_000, schedule="daily",
                          payout_addresses=json.dumps([]))
    session.add(account)
    session.flush()
    return account


def count(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model))


@pytest.fixture
def sessions(db_url):
    return open_database(db_url)


def test_every_pool_imports_and_reimporting_changes_nothing(sessions):
    fixtures = {"braiins": "braiins.json", "foundry": "foundry.json", "f2pool": "f2pool.json",
                "luxor": "luxor.json", "ocean": "ocean.json"}
    with sessions.begin() as s:
        for source, name in fixtures.items():
            account = make_account(s, source)
            report = st.import_statement(s, account, source, raw(name), actor="alice")
            expected = st.parse_payload(source, raw(name))
            assert (report.added, report.unchanged, report.restated) == (len(expected), 0, 0)
            assert report.sha256 == hashlib.sha256(raw(name)).hexdigest()
            stored = st.latest_lines(s, account)
            assert sorted((x.kind, x.key, x.amount, x.fee, x.txid) for x in stored) == \
                sorted((x.kind, x.key, x.amount, x.fee, x.txid) for x in expected)
            assert {(x.revision, x.superseded, x.raw_sha256) for x in stored} == {(1, False, report.sha256)}
    lines_before = None
    with sessions.begin() as s:
        lines_before = count(s, StatementLine)
        for source, name in fixtures.items():
            account = s.scalars(select(PoolAccount).join(Pool).where(Pool.kind == source)).one()
            again = st.import_statement(s, account, source, raw(name).decode(), actor="alice")   # str as well
            assert (again.added, again.unchanged, again.restated, again.restatements) == \
                (0, len(st.parse_payload(source, raw(name))), 0, [])
    with sessions.begin() as s:
        assert count(s, StatementLine) == lines_before
        assert count(s, EventLogEntry) == 2 * len(fixtures)     # every import is an event, even a no-op


def test_a_restated_day_is_a_new_revision_and_the_old_one_is_kept(sessions):
    with sessions.begin() as s:
        account = make_account(s, "foundry")
        st.import_statement(s, account, "foundry", raw("foundry.json"), actor="alice")
    with sessions.begin() as s:
        account = s.get(PoolAccount, account.id)
        report = st.import_statement(s, account, "foundry", raw("foundry_restated.json"), actor="alice")
        assert (report.added, report.unchanged, report.restated) == (0, 3, 2)
        assert report.restatements == [
            st.Restatement("earning", "2025-03-02", "2025-03-02", 570034, 570038, 2),
            st.Restatement("balance", "2025-03-04", "2025-03-04", 564260, 564264, 2)]
    with sessions.begin() as s:
        first, second = st.revisions(s, account, "earning", "2025-03-02")
        assert (first.revision, first.amount, first.superseded) == (1, 570034, True)
        assert (second.revision, second.amount, second.superseded) == (2, 570038, False)
        assert first.raw_sha256 == hashlib.sha256(raw("foundry.json")).hexdigest()
        assert second.raw_sha256 == hashlib.sha256(raw("foundry_restated.json")).hexdigest()
        assert json.loads(first.details)["tx_fee_reward"] == 11796 and json.loads(second.details)["tx_fee_reward"] == 11800
        assert [x.revision for x in st.revisions(s, account, "earning", "2025-03-01")] == [1]
        earnings = st.latest_lines(s, account, kind="earning", day_from="2025-03-02", day_to="2025-03-03")
        assert [(x.day, x.amount, x.revision) for x in earnings] == [("2025-03-02", 570038, 2), ("2025-03-03", 564260, 1)]
        assert count(s, StatementLine) == 7                     # 5 lines, 2 of them with a second revision
        # importing the first statement again restates back: the pool's word is kept in order, never rewritten
        back = st.import_statement(s, account, "foundry", raw("foundry.json"), actor="alice")
        assert back.restated == 2
        assert [(x.revision, x.amount, x.superseded) for x in st.revisions(s, account, "earning", "2025-03-02")] == \
            [(1, 570034, True), (2, 570038, True), (3, 570034, False)]


def test_a_pending_braiins_payout_that_confirms_is_a_revision_of_itself(sessions):
    with sessions.begin() as s:
        account = make_account(s, "braiins")
        st.import_statement(s, account, "braiins", raw("braiins.json"), actor="alice")
        report = st.import_statement(s, account, "braiins", raw("braiins_restated.json"), actor="alice")
        assert {(r.kind, r.key, r.old_amount, r.new_amount) for r in report.restatements} == {
            ("earning", "2025-03-02", 124457, 124465), ("payout", "2025-03-04T01:05:00Z", 113897, 113897)}
        pending, confirmed = st.revisions(s, account, "payout", "2025-03-04T01:05:00Z")
        assert (json.loads(pending.details)["status"], pending.txid, pending.superseded) == ("pending", None, True)
        assert (json.loads(confirmed.details)["status"], confirmed.txid) == \
            ("confirmed", "5869e2f59d862a34eec416b7f4878f185c27457e2b69005fa86b300ae5c8a46d")


def test_each_import_is_one_signed_event(sessions):
    with sessions.begin() as s:
        account = make_account(s, "foundry")
        st.import_statement(s, account, "foundry", raw("foundry.json"), actor="alice")
        st.import_statement(s, account, "foundry", raw("foundry_restated.json"), actor="bob")
    with sessions.begin() as s:
        entries = s.scalars(select(EventLogEntry).order_by(EventLogEntry.seq)).all()
        assert [(e.kind, e.actor, e.subject) for e in entries] == [
            ("mining.statement_imported", "alice", f"mining-account:{account.id}"),
            ("mining.statement_imported", "bob", f"mining-account:{account.id}")]
        first, second = (json.loads(e.data) for e in entries)
        assert first == {"source": "foundry", "sha256": hashlib.sha256(raw("foundry.json")).hexdigest(), "lines": 5,
                         "added": 5, "unchanged": 0, "restated": 0, "restatements": []}
        assert second["restatements"][0] == {"kind": "earning", "key": "2025-03-02", "day": "2025-03-02",
                                             "old_amount": 570034, "new_amount": 570038, "revision": 2}
        assert eventlog.verify(s, {eventlog.coordinator_key().public_hex}).ok


def test_a_bad_statement_is_refused_whole_and_writes_nothing(sessions):
    good = payload("foundry.json")

    def edited(change) -> bytes:
        data = json.loads(json.dumps(good, default=str))       # a deep copy, amounts as strings
        change(data)
        return json.dumps(data).encode()
    cases = [
        ("foundry", edited(lambda p: p["earnings"][2].update(totalAmount="0.005642601")), r"more than 8 decimals"),
        ("foundry", edited(lambda p: p["transactions"][0].update(amount="-0.01138353")), r"amount is negative"),
        ("foundry", edited(lambda p: p["earnings"][1].pop("totalAmount")), r"earnings\[1\]: totalAmount is missing"),
        ("foundry", edited(lambda p: p["earnings"][0].update(startTime="2025-02-30T00:00:00Z")), r"startTime is not"),
        ("foundry", b'{"earnings": [], "earnings": []}', r"not valid JSON: duplicate key 'earnings'"),
        ("foundry", b'{"balance": {"balance": NaN}}', r"not valid JSON"),
        ("foundry", b"\xff\xfe", r"not valid JSON"),
        ("antpool", raw("foundry.json"), r"unknown statement source 'antpool'"),
        ("braiins", raw("braiins.json"), r"at foundry pool \(foundry\): a braiins statement does not belong"),
    ]
    with sessions.begin() as s:
        account = make_account(s, "foundry")
        st.import_statement(s, account, "foundry", raw("foundry.json"), actor="alice")
    with sessions.begin() as s:
        account = s.get(PoolAccount, account.id)
        lines, events = count(s, StatementLine), count(s, EventLogEntry)
        for source, body, problem in cases:
            with pytest.raises(st.StatementError, match=problem):
                st.import_statement(s, account, source, body, actor="mallory")
            assert not s.new and not s.dirty                   # refused before anything was written
        # the same transaction goes on and commits: nothing of the refused imports is in it
    with sessions.begin() as s:
        assert (count(s, StatementLine), count(s, EventLogEntry)) == (lines, events)
        assert all(x.revision == 1 and not x.superseded for x in st.latest_lines(s, account))


def test_the_generic_csv_imports_into_any_pools_account(sessions):
    with sessions.begin() as s:
        account = make_account(s, "generic")
        report = st.import_statement(s, account, "csv", raw("generic.csv"), actor="alice")
        assert (report.added, report.restated) == (5, 0)
        payout = st.latest_lines(s, account, kind="payout")[0]
        assert (payout.amount, payout.fee, payout.address) == (243322, 1000, "bc1q9f2uycwyt3rkgsrnm75ndlca429k66pkzzwmrr")
        with pytest.raises(st.StatementError, match=r"at generic pool \(generic\): a foundry statement"):
            st.import_statement(s, account, "foundry", raw("foundry.json"), actor="alice")
        restated = raw("generic.csv").decode().replace("0.00012345", "0.00012346")
        again = st.import_statement(s, account, "csv", restated, actor="alice")
        assert (again.unchanged, again.restatements) == (4, [st.Restatement("earning", "2025-03-02", "2025-03-02",
                                                                            12345, 12346, 2)])
